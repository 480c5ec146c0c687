"""Deterministic autoencoder with a Gaussian mixture over its codes (``ae-gmm``).

Training is a plain autoencoder: ``z = enc(x)`` and the loss is the
observation model's negative log-likelihood ``-log p(x | dec(z))`` (Bernoulli
logits for binary data, the heads of :mod:`tfvae.heads` for real-valued
data). There is no KL term and no ELBO in training: training and validation
report ``loss`` and ``reconstruction`` only.

After ``fit``, :meth:`Autoencoder.post_fit` turns it into a generator
("ex-post density estimation", Ghosh et al. 2020): a
:class:`tfvae.gmm.GMMSampler` is fitted to the training codes and serves as
the prior ``p(z)``; samples are mixture codes passed through the decoder.

To compare with the VAEs on the same footing, ``log p(x)`` of the generator
``p(z) p(x|z)`` is estimated by importance sampling (Burda et al. 2016) with a
proposal around the code, ``q(z|x) = N(enc(x), diag(s^2))``. Any proposal
gives a stochastic lower bound that is exact as ``k -> inf``; ``s`` only
tightens it. It is fitted on training data: ``s = c * sd``, where ``sd`` is
the per-dimension standard deviation of the mixture's marginal (about the
codes' spread) and the global multiplier ``c`` is the value on a log grid
(``1e-3 .. 1``) that maximises the mean ``k``-sample bound on a training
subset (see :meth:`Autoencoder.fit_proposal`).
"""

from __future__ import annotations

import json
import math

import numpy as np

from tfvae import objectives
from tfvae._keras import keras, tf, tfd
from tfvae.errors import ConfigError, TfvaeError
from tfvae.gmm import GMMSampler
from tfvae.models.base import LatentVariableModel, order_key
from tfvae.models.steps import plain_trace
from tfvae.runtime import stateless_seed
from tfvae.sampler_noise import Noise

# Global multipliers of the mixture's per-dimension std tried for the proposal.
PROPOSAL_MULTIPLIERS = tuple(float(c) for c in np.geomspace(1e-3, 1.0, 13))


class MixtureNotFittedError(TfvaeError):
    """The autoencoder's latent mixture (or proposal) is not fitted yet."""

    # AutoGraph re-raises errors from traced code (evaluate's tf.functions) as
    # the original type only when its __init__ is Exception's; otherwise the
    # user would get a StagingError instead of a TfvaeError.
    __init__ = Exception.__init__


_NOT_FITTED = (
    "the autoencoder has no latent mixture yet: call model.post_fit(x_train) "
    "(tfvae.train does this after fit) or load a run directory that has gmm.npz"
)


@keras.saving.register_keras_serializable(package="tfvae")
class Autoencoder(LatentVariableModel):
    """Deterministic autoencoder plus a Gaussian mixture prior fitted after training.

    The encoder maps ``x`` to a code ``z = enc(x)`` (no distribution layer);
    the decoder is the VAEs' decoder. Training minimises the mean of
    ``-log p(x|enc(x))``. :meth:`post_fit` fits the mixture ``p(z)`` and the
    importance proposal used by :func:`tfvae.evaluate` (see the module
    docstring); until then the generation and evaluation hooks raise
    :class:`tfvae.errors.TfvaeError`.

    With a Gaussian likelihood the per-pixel scale is learned with the floor
    ``min_scale``. Without a KL term nothing stops the codes from spreading out
    so that training images are memorised, and the learned scale then shrinks
    towards the floor; keep ``min_scale`` well above 0 (e.g. 0.01 to 0.05 for
    pixel data in [0, 1]) for honest test likelihoods.

    Args:
      components: mixture components K, or ``"auto"`` (BIC over 1..20).
      covariance: mixture covariance type: ``full``, ``tied``, ``diag``,
        ``spherical``.
      **kwargs: see :class:`tfvae.models.base.LatentVariableModel`.

    Example:
      >>> model = tfvae.Autoencoder(input_dim=784, latent_dim=2, components=10)
      >>> model.compile(optimizer=tfvae.keras.optimizers.Adam(1e-3))
      >>> model.fit(x_train, epochs=5, batch_size=128)  # x_train: [N, 784] in {0, 1}
      >>> model.post_fit(x_train, seed=0)               # mixture + proposal
      >>> images = model.sample(16, seed=0)             # [16, 784] probabilities
      >>> model.save("ae.keras")  # with the mixture and proposal: loads back ready to sample
      >>> tfvae.evaluate(model, x_test, k=1000)["log_likelihood"]
    """

    model_type = "ae-gmm"
    metric_names = ("loss", "reconstruction")

    def __init__(self, *args, components=10, covariance: str = "full", **kwargs):
        super().__init__(*args, **kwargs)
        # Validates components and covariance at the boundary.
        GMMSampler(n_components=components, covariance_type=covariance)
        self.components = components if components == "auto" else int(components)
        self.covariance = covariance
        self.encoder = self._build_encoder((self.latent_dim, None))  # a deterministic code
        self.decoder = self._build_decoder()
        self._mixture: GMMSampler | None = None
        self.proposal_scale: np.ndarray | None = None  # [latent] float32
        # JSON text: a dict attribute would be wrapped by Keras' attribute tracking.
        self._proposal_json: str | None = None
        self._finish_build()

    # ------------------------------------------------------------------ parts
    def code(self, x, training=None):
        """The deterministic code ``enc(x)``, shape ``[batch, latent]``, float32.

        Float32 under a mixed-precision policy too: the mixture and the
        importance proposal over codes are float32 distributions.
        """
        return tf.cast(self.encoder(x, training=training), tf.float32)

    @property
    def mixture(self) -> GMMSampler | None:
        """The fitted :class:`GMMSampler` over codes, or None before :meth:`post_fit`."""
        return self._mixture

    @mixture.setter
    def mixture(self, sampler: GMMSampler | None):
        if sampler is not None:
            if not sampler.fitted:
                raise TfvaeError("the mixture is not fitted: call sampler.fit(codes) first")
            if sampler.latent_dim != self.latent_dim:
                raise TfvaeError(
                    f"the mixture is over {sampler.latent_dim}-D codes but the model's "
                    f"latent_dim is {self.latent_dim}"
                )
        self._mixture = sampler

    @property
    def proposal_info(self) -> dict | None:
        """How the proposal scale was chosen (multiplier, k, examples, scores), or None."""
        return None if self._proposal_json is None else json.loads(self._proposal_json)

    @property
    def fitted(self) -> bool:
        """Whether the mixture and the proposal are fitted (generation and evaluation work)."""
        return self._mixture is not None and self.proposal_scale is not None

    def _require_mixture(self) -> GMMSampler:
        if self._mixture is None:
            raise MixtureNotFittedError(_NOT_FITTED)
        return self._mixture

    def _require_fitted(self):
        if not self.fitted:
            raise MixtureNotFittedError(_NOT_FITTED)

    def check_ready(self) -> None:
        self._require_fitted()

    def traced_state(self) -> tuple:
        # The mixture's arrays and the proposal scale enter traces as constants.
        mixture = self._mixture
        arrays = None if mixture is None else tuple(
            a.tobytes() for a in (mixture.weights, mixture.means, mixture.cholesky))
        scale = None if self.proposal_scale is None else self.proposal_scale.tobytes()
        return arrays, scale

    def prior(self):
        """The fitted mixture ``p(z)`` as ``tfd.MixtureSameFamily`` (event ``[latent]``)."""
        return self._require_mixture().distribution()

    def _proposal(self, code, scale):
        return tfd.Independent(tfd.Normal(loc=code, scale=scale), reinterpreted_batch_ndims=1)

    def encode(self, x, training=None):
        """The importance proposal ``q(z|x) = N(enc(x), diag(s^2))`` (after :meth:`post_fit`).

        Use :meth:`code` for the deterministic code itself.
        """
        self._require_fitted()
        return self._proposal(self.code(x, training=training), self.proposal_scale)

    # ------------------------------------------------------- evaluation hooks
    def elbo_terms(self, x, seed=None, training=None):
        """Single-sample terms at ``z ~ q(z|x)``: ``reconstruction`` = -log p(x|z), ``kl``.

        KL to a mixture has no closed form, so ``kl`` is the one-sample Monte
        Carlo estimate ``log q(z|x) - log p(z)`` at the same ``z``; their sum
        is still an unbiased estimate of the negative ELBO.
        """
        q = self.encode(x, training=training)
        z = q.sample(seed=seed)  # [batch, latent]
        reconstruction = objectives.distortion(self.decode(z, training=training), x)
        kl = q.log_prob(z) - self.prior().log_prob(z)
        return {"reconstruction": reconstruction, "kl": kl, "z": z, "q": q}

    def log_weights(self, x, k, seed=None):
        """``log p(x|z_i) + log p_gmm(z_i) - log q(z_i|x)``, shape ``[k, batch]``."""
        self._require_fitted()
        return self._log_weights(x, k, self.proposal_scale, seed)

    def _log_weights(self, x, k, scale, seed):
        q = self._proposal(self.code(x), scale)
        z = q.sample(k, seed=seed)  # [k, batch, latent]
        return self.log_likelihood(z, x) + self.prior().log_prob(z) - q.log_prob(z)

    def posterior_mean(self, x):
        """The code ``enc(x)`` (the proposal's mean), ``[batch, latent]``."""
        return self.code(x)

    def kl_per_dim(self, x):
        """Per-dimension ``KL(N(enc(x)_u, s_u^2) || N(m_u, v_u))``, ``[batch, latent]``.

        ``m`` and ``v`` are the mean and variance of the mixture's marginal in
        dimension ``u`` (moment matching: the KL to a mixture marginal has no
        closed form). They show how much each dimension carries; they do not
        sum to ``kl``.
        """
        self._require_fitted()
        mean, cov = self._mixture.moments()
        marginal = tfd.Normal(
            loc=mean.astype(np.float32), scale=np.sqrt(np.diag(cov)).astype(np.float32)
        )
        return tfd.kl_divergence(tfd.Normal(self.code(x), self.proposal_scale), marginal)

    # -------------------------------------------------------------- training
    def objective(self, x, training=True, seed=None):
        """Mean ``-log p(x|enc(x))`` (no latent prior in training, so no KL)."""
        reconstruction = objectives.distortion(
            self.decode(self.code(x, training=training), training=training), x
        )
        return tf.reduce_mean(reconstruction), {"reconstruction": reconstruction}

    @plain_trace
    def test_step(self, data):
        # The same quantity as in training (the base test_step needs the mixture).
        loss, values = self.objective(self._unpack(data), training=False)
        return self._record(loss, values)

    def _finish_build(self):
        # ``call`` (the base class's: decoder means at the code) skips the
        # decoder's head, whose weights (a free scale) this creates.
        x = tf.zeros([1, self.input_dim])
        self.decode(self.code(x))
        self.built = True
        self(x)  # records the input spec SavedModel saving traces ``call`` with

    # ------------------------------------------------------------ post-fit
    def encode_numpy(self, x, batch_size: int = 1000) -> np.ndarray:
        """Codes of a float array ``[n, D]`` as numpy ``[n, latent]``, in batches."""
        x = np.asarray(x, dtype=np.float32).reshape(-1, self.input_dim)
        if len(x) == 0:
            raise TfvaeError("no examples to encode")
        return np.concatenate(
            [self.code(x[i:i + batch_size], training=False).numpy()
             for i in range(0, len(x), batch_size)]
        )

    def fit_mixture(self, x, seed: int = 0, components=None, covariance=None) -> GMMSampler:
        """Fits the mixture to the codes of ``x`` (``[n, D]`` floats) and sets ``mixture``.

        Args:
          x: training examples, processed as the model sees them.
          seed: seed of the mixture's initialisation.
          components: overrides the model's ``components`` (int or ``"auto"``).
          covariance: overrides the model's ``covariance``.

        Raises:
          TfvaeError: non-finite codes (a diverged encoder).
        """
        sampler = GMMSampler(
            n_components=self.components if components is None else components,
            covariance_type=self.covariance if covariance is None else covariance,
            seed=seed,
        )
        self.mixture = sampler.fit(self.encode_numpy(x))
        return sampler

    def fit_proposal(
        self, x, seed: int = 0, k: int = 16, examples: int = 256, multipliers=None
    ) -> np.ndarray:
        """Fits the importance proposal's scale ``s = c * sd`` on training data.

        ``sd`` is the per-dimension std of the mixture's marginal; ``c`` is the
        multiplier that maximises the mean ``k``-sample bound on ``examples``
        random rows of ``x`` (any ``s`` is valid; a good one is tight sooner).

        Args:
          x: training examples ``[n, D]`` (floats, as the model sees them).
          seed: seed of the subset and the proposal draws.
          k: importance samples per example while fitting.
          examples: rows of ``x`` used.
          multipliers: candidate values of ``c`` (default
            :data:`PROPOSAL_MULTIPLIERS`, a log grid from 1e-3 to 1).

        Returns:
          ``s``, ``[latent]`` float32 (also stored in ``proposal_scale``).
        """
        mixture = self._require_mixture()
        x = np.asarray(x, dtype=np.float32).reshape(-1, self.input_dim)
        rows = np.random.default_rng(seed).permutation(len(x))[:examples]
        subset = x[np.sort(rows)]
        _, cov = mixture.moments()
        spread = np.sqrt(np.diag(cov)).astype(np.float32)  # [latent], > 0 thanks to reg_covar
        multipliers = PROPOSAL_MULTIPLIERS if multipliers is None else tuple(multipliers)

        @tf.function(
            input_signature=[
                tf.TensorSpec([None, self.input_dim], tf.float32),
                tf.TensorSpec([self.latent_dim], tf.float32),
                tf.TensorSpec([2], tf.int32),
            ],
            reduce_retracing=True,
        )
        def bound(xb, scale, s):
            return objectives.iwae_bound(self._log_weights(xb, k, scale, s))

        scores = {}
        for c in multipliers:
            # The same seed for every candidate: common random numbers make the
            # comparison less noisy.
            value = bound(subset, float(c) * spread, stateless_seed(seed, 7)).numpy()
            scores[float(c)] = float(value.mean()) if np.isfinite(value).all() else -math.inf
        best = max(scores, key=scores.get)
        if not math.isfinite(scores[best]):
            raise TfvaeError(
                "the importance-sampling bound is not finite for any proposal scale: "
                "the decoder or the mixture gives non-finite densities"
            )
        self.proposal_scale = (best * spread).astype(np.float32)
        self._proposal_json = json.dumps({
            "multiplier": best,
            "k": int(k),
            "examples": int(len(subset)),
            # -inf (a scale that gives non-finite weights) is written as null.
            "scores": {repr(c): (v if math.isfinite(v) else None) for c, v in scores.items()},
        })
        return self.proposal_scale

    def post_fit(self, x_train, seed: int = 0) -> None:
        """Fits the latent mixture and the importance proposal on training data."""
        self.fit_mixture(x_train, seed=seed)
        self.fit_proposal(x_train, seed=seed)

    def set_proposal(self, scale, info: dict | None = None) -> None:
        """Sets the importance proposal's scale ``[latent]`` (and how it was chosen).

        Raises:
          ConfigError: ``scale`` is not ``latent_dim`` positive finite numbers.
        """
        scale = np.asarray(scale, dtype=np.float32)
        if scale.shape != (self.latent_dim,) or not (np.isfinite(scale) & (scale > 0)).all():
            raise ConfigError(
                f"the proposal scale must be {self.latent_dim} positive finite numbers, got "
                f"shape {scale.shape}"
            )
        self.proposal_scale = scale
        self._proposal_json = json.dumps(info or {})

    # ------------------------------------------------------------ generation
    def noise_inputs(self):
        return (Noise("u", (), "uniform"), Noise("eps", (self.latent_dim,), "normal"))

    def sampler_params(self):
        mixture = self._require_mixture()
        return mixture.sampler_arrays()

    @staticmethod
    def codes_from_noise(params, inputs, nets=()):
        # Inverse CDF over the cumulative weights picks k; z = mu_k + L_k eps.
        u = order_key(inputs["u"])  # [n]
        bounds = params["cum_keys"]  # [K-1]: first K-1 cumulative weights as int32 keys
        k = tf.reduce_sum(tf.cast(u[:, None] >= bounds[None, :], tf.int32), axis=1)  # [n]
        mu = tf.gather(params["means"], k)  # [n, d]
        chol = tf.gather(params["cholesky"], k)  # [n, d, d]
        return mu + tf.squeeze(tf.matmul(chol, inputs["eps"][:, :, None]), -1)  # [n, d]

    @staticmethod
    def prior_description(params):
        cum = np.asarray(params["cum_keys"], np.int32).view(np.float32)
        return {
            "kind": "gaussian-mixture",
            "components": int(np.shape(params["means"])[0]),
            "weights": np.diff(cum, prepend=0.0, append=1.0).tolist(),
        }

    def sample_component(self, component: int, n: int, seed: int | None = None) -> np.ndarray:
        """Decoder means ``[n, D]`` at codes from one mixture component."""
        z = self._require_mixture().sample_component(component, n, seed=seed)
        return self.decode_mean(tf.constant(z)).numpy()

    def latent_quantiles(self):
        """Per-dimension quantiles of a Normal with the mixture's marginal moments."""
        mean, cov = self._require_mixture().moments()
        marginal = tfd.Normal(mean.astype(np.float32), np.sqrt(np.diag(cov)).astype(np.float32))
        return lambda p: marginal.quantile(np.asarray(p, np.float32)[:, None]).numpy()

    # --------------------------------------------------------- serialization
    def get_config(self):
        """The constructor's arguments, and the fitted mixture and proposal as plain lists.

        So a ``.keras`` file (or a SavedModel) holds everything :meth:`post_fit`
        fitted: the model loaded back samples and evaluates as this one does.
        """
        proposal = None
        if self.proposal_scale is not None:
            proposal = {"scale": [float(v) for v in self.proposal_scale],
                        "info": self.proposal_info}
        return {**super().get_config(), "components": self.components,
                "covariance": self.covariance,
                "mixture": None if self._mixture is None else self._mixture.to_config(),
                "proposal": proposal}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        mixture, proposal = config.pop("mixture", None), config.pop("proposal", None)
        model = cls(**config)
        if mixture is not None:
            model.mixture = GMMSampler.from_config(mixture)
        if proposal is not None:
            model.set_proposal(proposal["scale"], proposal.get("info"))
        return model
