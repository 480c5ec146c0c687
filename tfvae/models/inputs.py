"""What a model takes from user code, checked and converted before anything is traced.

``fit``, ``evaluate`` and ``predict`` (and :func:`tfvae.evaluate`) take what a
Keras user has at hand and turn it into the float32 rows ``[N, D]`` a model
computes on. Checking here, in Python, means a wrong input fails with tfvae's
own message instead of an error from inside a compiled step:

* shapes: rows ``(N, D)``, or images ``(N, H, W, C)`` of the model's
  ``image_shape`` (``(N, H, W)`` for one channel), flattened in row-major
  (channels-last) order, as the CLI's data are;
* ``uint8`` values are 8-bit pixels: scaled by ``1 / 255`` for a density
  (Gaussian likelihood) and by ``1 / (levels - 1)`` for the discretized
  logistic, whose values are ``k / (levels - 1)``; for a Bernoulli
  likelihood they must be bits (0 or 1): grey pixels are refused with the
  way to binarize them, since dividing them by 255 or binarizing them are
  two different models;
* values: a Bernoulli or logistic likelihood takes values in [0, 1]; arrays
  outside it, or with NaN or infinite values, are refused before training.

A ``tf.data.Dataset`` gets the same conversion as a map, and its batches the
same range check as an assertion in the pipeline, which ``fit`` and
``evaluate`` turn back into a :class:`tfvae.errors.DataError`. (Pulling the
first batch ahead would start one more iteration of the dataset, which moves
a seeded shuffle or per-epoch noise on by one epoch.) Fused training blocks
(:func:`tfvae.data.blocks`) are checked for their width and refused under a
``tf.distribute`` strategy. Keras 3 objects (callbacks, optimizers) are
refused with a ``TypeError``: tfvae models are tf_keras (Keras 2) models.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import re
import weakref

import numpy as np

from tfvae._keras import keras, tf
from tfvae.errors import ConfigError, DataError
from tfvae.fused_blocks import block_data, is_block

#: Names the assertion of a dataset's range check, to find it in TensorFlow's error.
_RANGE_MARK = "tfvae-range-check"
#: Datasets of float rows whose values tfvae's data layer has already checked.
_CHECKED = weakref.WeakSet()


def checked(ds):
    """Marks ``ds``, float32 rows ``[batch, D]`` already checked, to be passed as it is."""
    _CHECKED.add(ds)
    return ds


# ------------------------------------------------------------------ Keras 3


def refuse_keras3(**objects) -> None:
    """Raises TypeError for objects of the ``keras`` package (Keras 3), by argument name.

    Args:
      **objects: argument name -> an object, a list of them, or None.
    """
    for name, value in objects.items():
        for obj in value if isinstance(value, (list, tuple)) else [value]:
            top = {cls.__module__.split(".")[0] for cls in type(obj).__mro__}
            if "keras" in top and "tf_keras" not in top:
                raise TypeError(
                    f"{name}: {type(obj).__name__} comes from the `keras` package (Keras 3), but "
                    "tfvae models are tf_keras (Keras 2) models, as tfp.layers need: use "
                    "tfvae.keras (e.g. tfvae.keras.callbacks.EarlyStopping, "
                    "tfvae.keras.optimizers.Adam)"
                )


def bind(method, args, kwargs) -> dict:
    """The arguments of a call of a Keras ``Model`` method, by name (``self`` left out)."""
    arguments = inspect.signature(method).bind(None, *args, **kwargs).arguments
    arguments.pop("self")
    arguments.update(arguments.pop("kwargs", {}))
    return arguments


# ------------------------------------------------------------------ arrays


def example_width(model, shape, what: str) -> int:
    """Checks the per-example shape of an input; returns ``D``."""
    dim, image = model.input_dim, tuple(model.image_shape)
    accepted = [(dim,), image] + ([image[:2]] if image[2] == 1 else [])
    if tuple(shape) in accepted:
        return dim
    images = " or ".join(f"(N, {', '.join(map(str, s))})" for s in accepted[1:])
    hint = ""
    if len(shape) == 3 and shape[0] == image[2] and tuple(shape[1:]) == image[:2]:
        hint = "; these look channels-first: move the channels last (np.moveaxis(x, 1, -1))"
    raise DataError(
        f"{what}: examples of shape {tuple(shape)}, but the model takes rows (N, {dim}) or "
        f"images {images} (input_dim={dim}, image_shape={image}){hint}"
    )


def _from_uint8(model, x):
    """uint8 values as the model's float32 values (see the module docstring)."""
    levels = model.likelihood_levels
    top = int(x.max()) if x.size else 0
    if levels == 2 and top > 1:
        raise DataError(
            f"uint8 values up to {top} on a Bernoulli likelihood, which takes bits: binarize "
            "8-bit pixels with tfvae.data.binarize_static(x, seed=0) (as `tfvae train` does), "
            "or pass grey levels as probabilities, x.astype('float32') / 255"
        )
    if levels is not None and top > levels - 1:
        raise DataError(f"uint8 values up to {top} on a logistic likelihood of levels={levels}, "
                        f"which takes values 0..{levels - 1}; build it with levels=256")
    peak = 255.0 if levels is None else float(max(levels - 1, 1))
    return x.astype(np.float32) if peak == 1.0 else x.astype(np.float32) / np.float32(peak)


def _range_message(model, where: str, lo: float | None, hi: float | None) -> str:
    """Why values were refused; ``lo``, ``hi`` their range (None: not known)."""
    span = "fall outside it" if lo is None else f"range from {lo:g} to {hi:g}"
    if lo is not None and not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{where} hold NaN or infinite values; clean or drop those examples"
    if model.likelihood_levels == 2:
        return (
            f"a Bernoulli likelihood takes values in [0, 1] (bits, or grey levels as "
            f"probabilities), but {where} {span}: scale them into [0, 1] (e.g. x / 255 for "
            "8-bit pixels), binarize them (tfvae.data.binarize_static), or build the model "
            "with likelihood='gaussian'"
        )
    return (
        f"a discretized logistic likelihood takes pixel values k / (levels - 1) in [0, 1] "
        f"(levels={model.likelihood_levels}), but {where} {span}: pass 8-bit pixels as "
        "uint8 (scaled for you) or divide them by levels - 1"
    )


def check_range(model, x, where: str = "the data") -> None:
    """Refuses values a discrete likelihood cannot score (outside [0, 1], or not finite)."""
    if x.size == 0:
        return
    lo, hi = float(np.min(x)), float(np.max(x))
    bounded = model.discrete_likelihood
    if not (math.isfinite(lo) and math.isfinite(hi)) or (bounded and (lo < 0.0 or hi > 1.0)):
        raise DataError(_range_message(model, where, lo, hi))


def rows(model, x, what: str = "data", check: bool = True) -> np.ndarray:
    """An array of examples as the model's float32 rows ``[N, D]`` (see the module docstring).

    Args:
      model: a tfvae model.
      x: rows ``(N, D)`` or images ``(N, H, W, C)``; any numeric dtype (``uint8``:
        8-bit pixels), a numpy array, a list or an eager tensor.
      what: the call the data came to, for messages (``"fit"``).
      check: refuse values the likelihood cannot score (NaN and infinities
        always, values outside [0, 1] for Bernoulli and logistic likelihoods).

    Raises:
      DataError: a shape, dtype or range the model cannot take; the message
        says what to pass instead.
    """
    x = x.numpy() if isinstance(x, tf.Tensor) else np.asarray(x)
    if x.ndim < 2:
        image = ", ".join(map(str, model.image_shape))
        raise DataError(f"{what}: data of shape {x.shape}; pass examples first, as rows "
                        f"(N, {model.input_dim}) or images (N, {image})")
    x = x.reshape(len(x), example_width(model, x.shape[1:], what))
    if x.dtype == np.uint8:
        x = _from_uint8(model, x)
    elif x.dtype.kind not in "biuf":
        raise DataError(f"{what}: data of dtype {x.dtype}; pass numbers (float32, or uint8 pixels)")
    else:
        x = x.astype(np.float32, copy=False)
    if check:
        check_range(model, x, f"the data given to {what}")
    return x


# ---------------------------------------------------------------- datasets


def _dataset(model, ds, what: str, check: bool):
    """A dataset whose examples are converted (and range-checked) as arrays are."""
    spec = ds.element_spec
    if ds in _CHECKED:
        example_width(model, spec.shape[1:], what)
        return ds
    if is_block(spec):
        refuse_blocks_under_strategy(model)
        model._check_block(*block_data(spec))
        return ds
    first = spec[0] if isinstance(spec, tuple) else spec
    if not isinstance(first, tf.TensorSpec):
        return ds  # dicts and ragged inputs go to Keras as they are
    shape = first.shape
    if shape.rank is not None and shape.rank < 2:
        raise DataError(f"{what}: the dataset's elements have shape {shape}, single examples: "
                        "batch it first (dataset.batch(128))")
    if shape.rank is not None and shape[1:].is_fully_defined():
        example_width(model, shape[1:], what)
    convert = first.dtype != tf.float32 or shape.rank != 2
    check = check and model.discrete_likelihood
    if not (convert or check):
        return ds

    def one(x):
        x = tf.reshape(x, [-1, model.input_dim])
        if x.dtype == tf.uint8:
            levels = model.likelihood_levels
            x = tf.cast(x, tf.float32) / (255.0 if levels is None else max(levels - 1, 1))
        x = tf.cast(x, tf.float32)
        if not check:
            return x
        lo, hi = tf.reduce_min(x), tf.reduce_max(x)
        # NaN fails both comparisons; an empty batch (inf, -inf) passes.
        ok = tf.logical_and(lo >= 0.0, hi <= 1.0)
        with tf.control_dependencies([tf.debugging.Assert(ok, [_RANGE_MARK, lo, hi])]):
            return tf.identity(x)

    if isinstance(spec, tuple):
        return ds.map(lambda x, *rest: (one(x), *rest))
    return ds.map(one)


def refuse_blocks_under_strategy(model) -> None:
    """Fused blocks train outside ``tf.distribute`` strategies: refuse them at once."""
    # The model's own strategy (made under its scope) counts outside the scope too.
    own = model.distribute_strategy
    if tf.distribute.has_strategy() or own is not tf.distribute.get_strategy():
        raise ConfigError(
            "fused training blocks run outside tf.distribute strategies (tfvae.data.blocks; "
            "even one-device ones: the optimizer's cross-replica update cannot run inside the "
            "compiled loop); under a strategy train on plain batches (arrays, or "
            "tfvae.data.make_pipeline)"
        )


def model_input(model, x, what: str, check: bool = True):
    """``x`` of ``fit``/``evaluate``/``predict`` converted: arrays, tensors and datasets.

    Generators, ``keras.utils.Sequence`` objects and dicts go to Keras as they are.
    """
    if x is None or isinstance(x, (dict, keras.utils.Sequence)):
        return x
    if isinstance(x, tf.data.Dataset):
        return _dataset(model, x, what, check)
    if isinstance(x, (np.ndarray, list, tf.Tensor)) or hasattr(x, "__array__"):
        return rows(model, x, what, check)
    return x


def validation_data(model, data):
    """``validation_data`` of ``fit`` converted: a dataset, ``x``, or ``(x, ...)``."""
    if isinstance(data, (tuple, list)) and data:
        return (model_input(model, data[0], "fit(validation_data)"), *data[1:])
    return model_input(model, data, "fit(validation_data)")


@contextlib.contextmanager
def range_errors(model):
    """Turns a dataset's failed range assertion into tfvae's :class:`DataError`."""
    try:
        yield
    except tf.errors.OpError as exc:
        message = str(exc)
        if _RANGE_MARK not in message:
            raise
        # The assertion prints its data after the mark: "[lo] [hi]".
        found = re.findall(r"\[([^\[\]]+)\]", message.split(_RANGE_MARK, 1)[1])
        try:
            lo, hi = float(found[0]), float(found[1])
        except (IndexError, ValueError):
            lo = hi = None
        where = "the values of a batch of the dataset"
        raise DataError(_range_message(model, where, lo, hi)) from None
