"""A Gaussian mixture over latent codes: fit, sample, score, save without pickle.

:class:`GMMSampler` turns a deterministic autoencoder into a generator
(the "ex-post density estimation" of Ghosh et al. 2020, and pythae's
``GaussianMixtureSampler``): scikit-learn's ``GaussianMixture`` is fitted to
the codes of the training data, and new codes are drawn from the mixture.

After fitting, the mixture is nothing but three arrays, whatever the
covariance type it was fitted with:

* ``weights``  ``[K]``       mixing proportions (sum to 1);
* ``means``    ``[K, d]``    component means;
* ``cholesky`` ``[K, d, d]`` lower-triangular ``L_k`` with ``Sigma_k = L_k L_k^T``.

Sampling, scoring and export use only those arrays, so results do not depend
on scikit-learn's internals or version, and the arrays round-trip through
``gmm.npz`` (loaded with ``allow_pickle=False``) plus ``gmm.json`` metadata.
"""

from __future__ import annotations

import math
import warnings
import zipfile
from pathlib import Path

import numpy as np

from tfvae.errors import ConfigError, RunDirError, TfvaeError
from tfvae.files import atomic_path, atomic_write_json, read_json
from tfvae.sampler_noise import positive_count

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
NPZ_NAME = "gmm.npz"
JSON_NAME = "gmm.json"
FORMAT = "tfvae.gmm"
VERSION = 1
# "auto" tries 1..MAX_AUTO_COMPONENTS components and keeps the lowest BIC.
MAX_AUTO_COMPONENTS = 20
# Larger reg_covar values tried, in turn, when scikit-learn reports an
# ill-defined covariance (e.g. a component that collapses onto one code).
_REG_COVAR_RETRIES = (1e-4, 1e-2)


def _check_components(value):
    if value == "auto":
        return "auto"
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ConfigError(
            f"n_components must be a positive integer or 'auto', got {value!r}"
        )
    return int(value)


def _cholesky_from_sklearn(gm, covariance_type: str, dim: int) -> np.ndarray:
    """Full covariance factors ``[K, d, d]`` from any fitted covariance type."""
    k = gm.n_components
    cov = np.asarray(gm.covariances_, dtype=np.float64)
    if covariance_type == "full":
        full = cov
    elif covariance_type == "tied":
        full = np.broadcast_to(cov, (k, dim, dim))
    elif covariance_type == "diag":
        full = np.einsum("kd,de->kde", cov, np.eye(dim))
    else:  # spherical
        full = cov[:, None, None] * np.eye(dim)[None]
    return np.linalg.cholesky(full)


class GMMSampler:
    """Gaussian mixture over latent codes, fitted with scikit-learn.

    Args:
      n_components: number of components K, or ``"auto"`` to pick K by the
        Bayesian information criterion over ``1..min(max_components, distinct
        codes)``.
      covariance_type: ``"full"``, ``"tied"``, ``"diag"`` or ``"spherical"``
        (scikit-learn's). Whatever the type, the fitted mixture is stored as
        full covariance Cholesky factors.
      seed: seed of scikit-learn's k-means initialisation.
      max_components: upper end of the ``"auto"`` search.
      reg_covar: added to covariance diagonals (scikit-learn's absolute
        regulariser); keeps a collapsed latent dimension positive definite.
      max_iter: EM iterations per fit.

    Attributes (after :meth:`fit` or :meth:`load`):
      weights: ``[K]`` float64 mixing proportions.
      means: ``[K, d]`` float64 component means.
      cholesky: ``[K, d, d]`` float64 lower-triangular covariance factors.
      bic: ``{K: BIC}`` of the ``"auto"`` search, or None.

    Example:
      >>> sampler = GMMSampler(n_components=10, seed=0).fit(codes)  # codes: [n, d]
      >>> z = sampler.sample(64, seed=1)                          # [64, d] float32
      >>> sampler.save(run_dir); same = GMMSampler.load(run_dir)
      >>> np.array_equal(same.sample(64, seed=1), z)
      True
    """

    def __init__(
        self,
        n_components=10,
        covariance_type: str = "full",
        seed: int = 0,
        max_components: int = MAX_AUTO_COMPONENTS,
        reg_covar: float = 1e-6,
        max_iter: int = 200,
    ):
        self.n_components = _check_components(n_components)
        if covariance_type not in COVARIANCE_TYPES:
            raise ConfigError(
                f"unknown covariance_type {covariance_type!r}; "
                f"choose one of: {', '.join(COVARIANCE_TYPES)}"
            )
        self.covariance_type = covariance_type
        self.seed = int(seed)
        self.max_components = int(max_components)
        if self.max_components <= 0:
            raise ConfigError(f"max_components must be positive, got {max_components!r}")
        if not (math.isfinite(reg_covar) and reg_covar > 0):
            raise ConfigError(f"reg_covar must be a positive number, got {reg_covar!r}")
        self.reg_covar = float(reg_covar)
        self.max_iter = int(max_iter)
        self.weights: np.ndarray | None = None
        self.means: np.ndarray | None = None
        self.cholesky: np.ndarray | None = None
        self.bic: dict[int, float] | None = None

    # ---------------------------------------------------------------- state
    @property
    def fitted(self) -> bool:
        """Whether the mixture has parameters (from :meth:`fit` or :meth:`load`)."""
        return self.weights is not None

    def _require_fitted(self):
        if not self.fitted:
            raise TfvaeError("the Gaussian mixture is not fitted: call fit(codes) first")

    @property
    def num_components(self) -> int:
        """K of the fitted mixture (after capping or the BIC search)."""
        self._require_fitted()
        return int(len(self.weights))

    @property
    def latent_dim(self) -> int:
        self._require_fitted()
        return int(self.means.shape[1])

    @property
    def covariances(self) -> np.ndarray:
        """``[K, d, d]`` full covariances ``L L^T``."""
        self._require_fitted()
        return np.einsum("kij,klj->kil", self.cholesky, self.cholesky)

    # ------------------------------------------------------------------ fit
    def fit(self, codes) -> GMMSampler:
        """Fits the mixture to codes ``[n, d]`` and returns ``self``.

        Fallbacks, each with a ``warnings.warn``: more components than distinct
        codes are capped at the number of distinct codes; latent dimensions
        with zero variance are kept positive definite by ``reg_covar``; an
        ill-defined covariance in EM is retried with a larger ``reg_covar``.

        Raises:
          TfvaeError: codes that are not a non-empty 2-D array of finite values.
        """
        z = np.asarray(codes, dtype=np.float64)
        if z.ndim != 2 or z.shape[0] == 0 or z.shape[1] == 0:
            raise TfvaeError(f"codes must be a non-empty [n, d] array, got shape {z.shape}")
        bad = ~np.isfinite(z).all(axis=1)
        if bad.any():
            raise TfvaeError(
                f"{int(bad.sum())} of {len(z)} latent codes are not finite (NaN or inf): "
                "the encoder diverged; retrain with a lower learning rate"
            )
        distinct = len(np.unique(z, axis=0))
        constant = np.flatnonzero(z.var(axis=0) == 0.0)
        if len(constant):
            warnings.warn(
                f"latent dimensions {constant.tolist()} have zero variance over the codes "
                f"(collapsed); their mixture variance is reg_covar={self.reg_covar:g}",
                stacklevel=2,
            )
        if self.n_components == "auto":
            top = min(self.max_components, distinct)
            candidates = {k: self._fit_one(z, k) for k in range(1, top + 1)}
            self.bic = {k: float(gm.bic(z)) for k, gm in candidates.items()}
            best = min(self.bic, key=self.bic.get)
            gm = candidates[best]
        else:
            k = self.n_components
            if k > distinct:
                warnings.warn(
                    f"{k} mixture components requested but the codes hold only {distinct} "
                    f"distinct points; fitting {distinct} components",
                    stacklevel=2,
                )
                k = distinct
            gm = self._fit_one(z, k)
            self.bic = None
        weights = np.asarray(gm.weights_, dtype=np.float64)
        self.weights = weights / weights.sum()
        self.means = np.asarray(gm.means_, dtype=np.float64)
        self.cholesky = _cholesky_from_sklearn(gm, self.covariance_type, z.shape[1])
        return self

    def _fit_one(self, z: np.ndarray, k: int):
        from sklearn.mixture import GaussianMixture  # lazy: sklearn is slow to import
        from threadpoolctl import threadpool_limits

        for reg in (self.reg_covar,) + tuple(r for r in _REG_COVAR_RETRIES if r > self.reg_covar):
            gm = GaussianMixture(
                n_components=k,
                covariance_type=self.covariance_type,
                reg_covar=reg,
                max_iter=self.max_iter,
                random_state=self.seed,
            )
            try:
                # EM on codes is many small BLAS calls, which threads only slow down.
                with threadpool_limits(limits=1, user_api="blas"):
                    gm.fit(z)
            except ValueError as exc:  # "ill-defined empirical covariance"
                last = exc
                warnings.warn(
                    f"Gaussian mixture with {k} components failed with reg_covar={reg:g} "
                    f"({exc}); retrying with a larger reg_covar",
                    stacklevel=3,
                )
                continue
            return gm
        raise TfvaeError(
            f"could not fit a {k}-component Gaussian mixture to the codes ({last}); "
            "use fewer components or covariance_type='diag'"
        )

    # ------------------------------------------------------------- sampling
    def sample(self, n: int, seed: int | None = None) -> np.ndarray:
        """Draws ``n`` codes ``[n, d]`` (float32); the same seed gives the same codes.

        The noise is that of the exported sampler (:mod:`tfvae.sampler_noise`): from
        ``numpy.random.default_rng(seed)``, uniforms ``u [n]`` pick each code's
        component by inverse CDF over the weights, then normals ``eps [n, d]``
        give ``z = mu_k + L_k eps``.
        """
        self._require_fitted()
        n = positive_count(n)
        rng = np.random.default_rng(seed)
        u = rng.random(n).astype(np.float32)  # [n]
        eps = rng.standard_normal((n, self.latent_dim)).astype(np.float32)  # [n, d]
        components = np.searchsorted(np.cumsum(self.weights)[:-1], u, side="right")  # [n]
        z = self.means[components] + np.einsum("nij,nj->ni", self.cholesky[components], eps)
        return z.astype(np.float32)

    def sampler_arrays(self) -> dict[str, np.ndarray]:
        """The arrays an exported sampler holds (see ``Autoencoder.codes_from_noise``).

        ``cum_keys``: the first K-1 cumulative weights as the int32 bit patterns
        of their float32 values; ``means`` ``[K, d]`` and ``cholesky``
        ``[K, d, d]`` as float32.
        """
        self._require_fitted()
        cum = np.cumsum(self.weights / self.weights.sum())
        return {
            "cum_keys": cum[:-1].astype(np.float32).view(np.int32),
            "means": self.means.astype(np.float32),
            "cholesky": self.cholesky.astype(np.float32),
        }

    def sample_component(self, k: int, n: int, seed: int | None = None) -> np.ndarray:
        """Draws ``n`` codes ``[n, d]`` from component ``k`` alone."""
        self._require_fitted()
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not (
            0 <= k < len(self.weights)
        ):
            raise ConfigError(
                f"component must be an integer in [0, {len(self.weights)}), got {k!r}"
            )
        n = positive_count(n)
        eps = np.random.default_rng(seed).standard_normal((n, self.latent_dim))
        return (self.means[k] + eps @ self.cholesky[k].T).astype(np.float32)

    # -------------------------------------------------------------- scoring
    def component_log_prob(self, codes) -> np.ndarray:
        """``log w_k + log N(z; mu_k, Sigma_k)``, shape ``[n, K]`` (numpy, float64)."""
        from scipy.linalg import solve_triangular

        self._require_fitted()
        z = np.asarray(codes, dtype=np.float64).reshape(-1, self.latent_dim)
        d = self.latent_dim
        out = np.empty((len(z), len(self.weights)))
        for k, (mu, chol) in enumerate(zip(self.means, self.cholesky, strict=True)):
            white = solve_triangular(chol, (z - mu).T, lower=True)  # [d, n]
            log_det = 2.0 * np.log(np.diag(chol)).sum()
            out[:, k] = -0.5 * ((white**2).sum(axis=0) + log_det + d * math.log(2 * math.pi))
        return out + np.log(self.weights)[None, :]

    def log_prob(self, codes) -> np.ndarray:
        """``log p(z)`` under the mixture, shape ``[n]`` (numpy, float64)."""
        from scipy.special import logsumexp

        return logsumexp(self.component_log_prob(codes), axis=1)

    def predict(self, codes) -> np.ndarray:
        """Most probable component of each code, ``[n]`` ints."""
        return np.argmax(self.component_log_prob(codes), axis=1)

    def distribution(self, dtype="float32"):
        """The mixture as a TFP distribution, for ``log p(z)`` inside TensorFlow.

        Returns:
          ``tfd.MixtureSameFamily(Categorical, MultivariateNormalTriL)`` with
          event shape ``[d]`` built from ``weights``, ``means``, ``cholesky``.
        """
        from tfvae._keras import tfd

        self._require_fitted()
        return tfd.MixtureSameFamily(
            mixture_distribution=tfd.Categorical(logits=np.log(self.weights).astype(dtype)),
            components_distribution=tfd.MultivariateNormalTriL(
                loc=self.means.astype(dtype), scale_tril=self.cholesky.astype(dtype)
            ),
        )

    def moments(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean ``[d]`` and covariance ``[d, d]`` of the whole mixture."""
        self._require_fitted()
        mean = self.weights @ self.means
        centred = self.means - mean
        cov = np.einsum("k,kij->ij", self.weights, self.covariances) + np.einsum(
            "k,ki,kj->ij", self.weights, centred, centred
        )
        return mean, cov

    # ---------------------------------------------------------- persistence
    def metadata(self) -> dict:
        """What ``gmm.json`` holds."""
        self._require_fitted()
        return {
            "format": FORMAT,
            "version": VERSION,
            "n_components": self.num_components,
            "requested_components": self.n_components,
            "covariance_type": self.covariance_type,
            "latent_dim": self.latent_dim,
            "seed": self.seed,
            "max_components": self.max_components,
            "reg_covar": self.reg_covar,
            "bic": None if self.bic is None else {str(k): v for k, v in self.bic.items()},
        }

    def save(self, directory) -> tuple[Path, Path]:
        """Writes ``gmm.npz`` (arrays) and ``gmm.json`` (metadata) into ``directory``.

        Returns:
          The two paths. Both files are written through a temporary file and
          a rename, so a crash never leaves a half-written file.
        """
        self._require_fitted()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        npz = directory / NPZ_NAME
        with atomic_path(npz) as tmp, open(tmp, "wb") as f:
            np.savez(f, weights=self.weights, means=self.means, cholesky=self.cholesky)
        meta = directory / JSON_NAME
        atomic_write_json(meta, self.metadata())
        return npz, meta

    @classmethod
    def load(cls, directory) -> GMMSampler:
        """Loads what :meth:`save` wrote; arrays are read with ``allow_pickle=False``.

        Raises:
          RunDirError: ``gmm.npz`` or ``gmm.json`` is missing, corrupt or
            inconsistent; the message names the file.
        """
        directory = Path(directory)
        meta_path, npz_path = directory / JSON_NAME, directory / NPZ_NAME
        meta = read_json(meta_path, "Gaussian mixture metadata")
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise RunDirError(f"{meta_path} is not a tfvae Gaussian mixture file")
        if meta.get("version") != VERSION:
            raise RunDirError(
                f"{meta_path} has format version {meta.get('version')!r}; "
                f"this tfvae reads version {VERSION}"
            )
        if not npz_path.is_file():
            raise RunDirError(f"{npz_path} is missing: the Gaussian mixture cannot be read")
        return cls._from_parts(meta, _read_npz(npz_path), meta_path, npz_path)

    def to_config(self) -> dict:
        """The fitted mixture as plain JSON values: :meth:`metadata` and the three arrays.

        Lists of Python floats (float64, written exactly by ``json``), so a
        model's ``get_config`` can hold the mixture and a ``.keras`` file is
        self-contained; :meth:`from_config` reads it back, no pickle involved.
        """
        return {**self.metadata(), "weights": self.weights.tolist(),
                "means": self.means.tolist(), "cholesky": self.cholesky.tolist()}

    @classmethod
    def from_config(cls, config: dict) -> GMMSampler:
        """The mixture :meth:`to_config` gave, checked as :meth:`load` checks its files.

        Raises:
          RunDirError: the values are not a consistent tfvae mixture.
        """
        where = "the mixture in the model's configuration"
        if not isinstance(config, dict) or config.get("format") != FORMAT \
                or config.get("version") != VERSION:
            raise RunDirError(f"{where} is not a tfvae Gaussian mixture of version {VERSION}")
        try:
            arrays = {name: np.asarray(config[name], np.float64)
                      for name in ("weights", "means", "cholesky")}
        except (KeyError, TypeError, ValueError) as exc:
            raise RunDirError(f"{where} is corrupt ({type(exc).__name__}: {exc})") from None
        return cls._from_parts(config, arrays, where, where)

    @classmethod
    def _from_parts(cls, meta: dict, arrays: dict, meta_path, npz_path) -> GMMSampler:
        """A sampler from its metadata and arrays, checked (the names go in messages)."""
        try:
            sampler = cls(
                n_components=meta["requested_components"],
                covariance_type=meta["covariance_type"],
                seed=meta["seed"],
                max_components=meta["max_components"],
                reg_covar=meta["reg_covar"],
            )
            bic = meta["bic"]
            sampler.bic = None if bic is None else {int(k): float(v) for k, v in bic.items()}
            k, d = int(meta["n_components"]), int(meta["latent_dim"])
        except (KeyError, TypeError, ValueError) as exc:
            raise RunDirError(f"{meta_path} is corrupt ({type(exc).__name__}: {exc})") from None
        weights, means, chol = arrays["weights"], arrays["means"], arrays["cholesky"]
        if weights.shape != (k,) or means.shape != (k, d) or chol.shape != (k, d, d):
            raise RunDirError(
                f"{npz_path} holds arrays of shapes {weights.shape}, {means.shape}, "
                f"{chol.shape}; {meta_path} says {k} components in {d} dimensions"
            )
        if not all(np.isfinite(a).all() for a in (weights, means, chol)):
            raise RunDirError(f"{npz_path} is corrupt: it holds non-finite parameters")
        diag = np.diagonal(chol, axis1=1, axis2=2)
        if (weights < 0).any() or not np.isclose(weights.sum(), 1.0, atol=1e-6) or (
            diag <= 0
        ).any() or not np.array_equal(chol, np.tril(chol)):
            raise RunDirError(
                f"{npz_path} is corrupt: weights must sum to 1 and cholesky factors be "
                "lower triangular with a positive diagonal"
            )
        sampler.weights, sampler.means, sampler.cholesky = weights, means, chol
        return sampler


def _read_npz(path: Path) -> dict:
    """The arrays of ``gmm.npz`` as float64, never unpickling anything."""
    try:
        # allow_pickle=False: numpy refuses pickled data (a planted pickle, an
        # object array) with a ValueError instead of executing it.
        data = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise RunDirError(
            f"{path} is corrupt or not a tfvae mixture file ({type(exc).__name__}: {exc})"
        ) from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise RunDirError(f"{path} is corrupt: it is a single array, not an .npz archive")
    try:
        missing = {"weights", "means", "cholesky"} - set(data.files)
        if missing:
            raise ValueError(f"missing arrays {sorted(missing)}")
        out = {}
        for name in ("weights", "means", "cholesky"):
            array = data[name]
            if array.dtype.kind not in "fiu":
                raise ValueError(f"array {name!r} has dtype {array.dtype}, not numeric")
            out[name] = array.astype(np.float64)
        return out
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise RunDirError(
            f"{path} is corrupt or not a tfvae mixture file ({type(exc).__name__}: {exc})"
        ) from None
    finally:
        data.close()
