"""Training, validation and test splits, prepared once per run.

:func:`prepare` picks the data mode (see :mod:`tfvae.data.modes`), carves a
seeded validation subset from the training split and makes the fixed
validation and test rows; the training rows stay as the pipelines read them.
It also warns when the data look wrong for the likelihood.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np

from tfvae import options
from tfvae.data import modes
from tfvae.data.sources import DataSet
from tfvae.errors import ConfigError, DataError, DataWarning

#: Offset added to ``prepare``'s seed for the validation-row permutation.
VAL_SEED_OFFSET = 12345
#: Share of blank (constant) training images above which prepare warns.
BLANK_WARNING = 0.01


@dataclass
class Splits:
    """Training, validation and test data, ready for a model.

    Attributes:
        train: Array the training pipeline consumes per batch, interpreted by
            ``train_mode``: uint8 bits for ``static``/``threshold``, raw values
            (uint8 or float32) for ``dynamic``/``dequantize``/``none``.
        val: Fixed float32 validation rows (already binarized/dequantized/scaled,
            never resampled), or None.
        test: Fixed test rows, processed the same way: uint8 bits {0, 1} in the
            binarizing modes (a quarter of the memory of float32), float32
            otherwise.
        y_train: Labels of ``train`` rows, or None.
        y_val: Labels of ``val`` rows, or None.
        y_test: Labels of ``test`` rows, or None.
        train_mode: A key of :data:`tfvae.data.MODES`: what the pipeline does
            per batch.
        levels: Levels of ``train`` as the pipeline must read it (2 for bits,
            256 for uint8 pixels, 17 for digits, None for floats).
        image_shape: ``(H, W, C)``.
        train_index: Row indices of ``train`` in the data set's training split.
        val_index: Row indices of ``val`` in the data set's training split, or None.
    """

    train: np.ndarray
    val: np.ndarray | None
    test: np.ndarray
    y_train: np.ndarray | None
    y_val: np.ndarray | None
    y_test: np.ndarray | None
    train_mode: str
    levels: int | None
    image_shape: tuple
    train_index: np.ndarray | None = field(default=None, repr=False)
    val_index: np.ndarray | None = field(default=None, repr=False)
    streamed: bool = field(default=False, repr=False)

    @property
    def dequantized_levels(self) -> int | None:
        """``L`` when the data are dequantized as ``(k + u) / L``, else None."""
        return self.levels if self.train_mode == "dequantize" else None

    def test_rows(self, limit: int | None = None) -> np.ndarray:
        """The first ``limit`` processed test rows."""
        return self.test[:limit]

    def train_moments(self, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Mean and standard deviation ``[D]`` of the training rows as the model sees them
        (noise included)."""
        from tfvae.data.pipelines import make_pipeline

        total, squares, count = None, None, 0
        for batch in make_pipeline(self.train, self.train_mode, min(len(self.train), 4096),
                                   self.levels, shuffle=False, seed=seed):
            rows = batch.numpy().astype(np.float64)
            part, part2 = rows.sum(axis=0), np.square(rows).sum(axis=0)
            total = part if total is None else total + part
            squares = part2 if squares is None else squares + part2
            count += len(rows)
        mean = total / count
        std = np.sqrt(np.maximum(squares / count - np.square(mean), 0.0))
        return mean.astype(np.float32), std.astype(np.float32)

    def train_rows(self, limit: int | None = None, seed: int = 0) -> np.ndarray:
        """A float32 copy of the first ``limit`` training rows, as the model sees them."""
        from tfvae.data.pipelines import make_pipeline

        rows = self.train[:limit]
        ds = make_pipeline(rows, self.train_mode, min(len(rows), 1000), self.levels,
                           shuffle=False, seed=seed)
        return np.concatenate([b.numpy() for b in ds])


def validation_rows(n: int, val_fraction: float, seed: int, size: int | None = None,
                    order: str = "random"):
    """Sorted ``(train_rows, val_rows)`` of the validation subset.

    ``size`` rows (or ``floor(val_fraction * n)``), a seeded random subset
    (``order="random"``) or the last rows in file order (``order="end"``).
    ``val_rows`` is None when there are none.
    """
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) \
            or not 0.0 <= val_fraction < 1.0:
        raise ConfigError(
            f"validation fraction must be in [0, 1), got {val_fraction!r}; "
            "use e.g. --val-fraction 0.05, or 0 for no validation set"
        )
    n_val = math.floor(val_fraction * n) if size is None else int(size)
    if size is None and val_fraction > 0 and n_val < 1:
        raise ConfigError(
            f"validation fraction {val_fraction} of {n} training examples leaves no "
            "validation example; use a larger fraction or 0"
        )
    if n - n_val < 1:
        what = f"validation fraction {val_fraction}" if size is None else \
            f"--val-size {size}"
        raise ConfigError(f"{what} leaves no training example out of {n}")
    if n_val == 0:
        return np.arange(n), None
    if order == "end":
        return np.arange(n - n_val), np.arange(n - n_val, n)
    if order != "random":
        raise ConfigError(f"unknown validation order {order!r}; choose random or end")
    perm = np.random.default_rng(seed + VAL_SEED_OFFSET).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def resolve_mode(ds, likelihood: str, binarize: str | None) -> str:
    """The data mode for a likelihood and a ``--binarize`` value (None: the default).

    Bernoulli: ``dynamic`` for non-binary data, ``none`` for binary data.
    Gaussian: ``none``, which becomes ``dequantize`` for discrete pixels.
    Logistic: ``none`` (the pixels as they are, on a grid of [0, 1]).
    Float data must lie in [0, 1] to be binarized or used as Bernoulli targets.
    """
    if likelihood not in options.LIKELIHOODS:
        raise ConfigError(f"unknown likelihood {likelihood!r}; choose one of "
                          f"{tuple(options.LIKELIHOODS)}")
    if binarize is not None and binarize not in options.BINARIZE:
        raise ConfigError(f"unknown binarize mode {binarize!r}; choose one of "
                          f"{tuple(options.BINARIZE)}")
    if binarize is None:
        binarize = "dynamic" if likelihood == "bernoulli" and ds.levels != 2 else "none"
    discrete = ds.levels is not None and ds.levels > 2
    if likelihood == "logistic":
        if not discrete:
            raise DataError(
                f"{ds.name}: the logistic likelihood scores discrete pixel values (such as "
                "8-bit images), but these data are "
                f"{'binary' if ds.levels == 2 else 'continuous'}; use --likelihood "
                f"{'bernoulli' if ds.levels == 2 else 'gaussian'}")
        if binarize != "none":
            raise ConfigError(f"the logistic likelihood scores the pixels as they are: "
                              f"--binarize must be none, got {binarize}")
        return "none"
    if binarize == "none" and likelihood == "gaussian" and discrete:
        return "dequantize"
    if binarize in ("none", "dynamic", "static") and ds.levels is None:
        lo, hi = _value_range(ds)
        if lo < 0.0 or hi > 1.0:
            if binarize == "none" and likelihood == "bernoulli":
                raise DataError(
                    f"{ds.name}: values span {lo:g}..{hi:g}, outside [0, 1], so they "
                    "cannot be Bernoulli targets; use --binarize threshold or "
                    "--likelihood gaussian"
                )
            if binarize != "none":
                raise DataError(
                    f"{ds.name}: values span {lo:g}..{hi:g}, outside [0, 1], so they "
                    f"cannot be binarized as probabilities (--binarize {binarize}); use "
                    "--binarize threshold or --likelihood gaussian with --binarize none"
                )
    return binarize


def _value_range(ds: DataSet) -> tuple[float, float]:
    return (min(float(ds.x_train.min()), float(ds.x_test.min())),
            max(float(ds.x_train.max()), float(ds.x_test.max())))


def data_warnings(ds: DataSet, likelihood: str) -> list[str]:
    """What looks wrong in the data for this likelihood (an empty list if nothing)."""
    found = []
    x = ds.x_train
    lo, hi = _value_range(ds)
    if lo == hi:
        found.append(f"{ds.name}: every value is {lo:g}; there is nothing to learn")
        return found
    blank = int(np.count_nonzero(x.min(axis=1) == x.max(axis=1)))
    if blank > BLANK_WARNING * len(x):
        found.append(f"{ds.name}: {blank} of {len(x)} training images are blank (one value "
                     "everywhere); check the data")
    if likelihood == "gaussian" and ds.levels is None and (lo < 0.0 or hi > 1.0):
        found.append(
            f"{ds.name}: values span {lo:g}..{hi:g}, outside [0, 1]. The Gaussian likelihood "
            "models any real values, but its scale floor (--min-scale) and the figures "
            "(drawn on [0, 1]) assume pixel intensities; rescale the data to [0, 1]"
        )
    return found


def _labels(ds, idx):
    return None if ds.y_train is None or idx is None else ds.y_train[idx]


def prepare(
    ds,
    likelihood: str = "bernoulli",
    binarize: str | None = None,
    val_fraction: float = 0.05,
    seed: int = 0,
    val_size: int | None = None,
    val_order: str = "random",
):
    """Binarizes/dequantizes a data set and carves a fixed validation subset.

    Modes (see :mod:`tfvae.data.modes`; ``binarize`` None picks ``dynamic`` for
    Bernoulli on non-binary data, ``none`` for binary data or a Gaussian
    likelihood): ``static`` binarizes the training split with seed 0 and test
    with seed 1 in file order (bindata), then takes the validation rows from
    the training bits; ``dynamic`` resamples training bits per batch, with
    the static bits for validation and test; ``threshold`` is ``scaled > 0.5``;
    ``none`` scales (``dequantize``, ``(x + u) / levels``, for a Gaussian on pixels).

    Args:
        ds: The data set (a :class:`tfvae.data.folders.FolderDataSet` gives
            :class:`tfvae.data.streams.StreamSplits`, read file by file).
        likelihood: A key of :data:`tfvae.options.LIKELIHOODS` (None for the default).
        binarize: A key of :data:`tfvae.options.BINARIZE` (None for the default).
        val_fraction: Fraction in [0, 1) of training rows held out for validation
            (rows chosen by ``default_rng(seed + 12345)``); 0 for none.
        seed: Seed of the validation subset.
        val_size: see :func:`validation_rows`.
        val_order: see :func:`validation_rows`.

    Returns:
        The :class:`Splits` (or :class:`tfvae.data.StreamSplits`).
    """
    if getattr(ds, "streamed", False):
        from tfvae.data.streams import prepare_folder

        mode = resolve_mode(ds, likelihood, binarize)
        rows = validation_rows(len(ds.train_files), val_fraction, seed, val_size, val_order)
        return prepare_folder(ds, mode, *rows)
    mode = modes.get(resolve_mode(ds, likelihood, binarize))
    for message in data_warnings(ds, likelihood):
        warnings.warn(message, DataWarning, stacklevel=2)
    train_idx, val_idx = validation_rows(len(ds.x_train), val_fraction, seed, val_size,
                                         val_order)
    # All rows and no validation: no fancy-indexed copy of the training split.
    take_idx = None if val_idx is None else train_idx
    train, val, test, levels = mode.split(ds, take_idx, val_idx)
    return Splits(
        train=train,
        val=val,
        test=test,
        y_train=ds.y_train if take_idx is None else _labels(ds, take_idx),
        y_val=_labels(ds, val_idx),
        y_test=ds.y_test,
        train_mode=mode.name,
        levels=levels,
        image_shape=tuple(ds.image_shape),
        train_index=train_idx,
        val_index=val_idx,
    )
