"""What each data mode does, in one table.

A *mode* says how the raw training split becomes what a model trains on:
how the fixed validation and test splits are made once (numpy, seeded), and
what happens to each training batch (TensorFlow, per-batch seed). The
binarize modes of ``--binarize`` (``none``, ``static``, ``dynamic``,
``threshold``) are modes, and so is ``dequantize`` (discrete pixels under a
continuous density: ``(x + u) / levels``), which :func:`tfvae.data.prepare`
picks for a Gaussian likelihood on discrete data.

Two modes draw noise per batch, and the two are different things:
``dynamic`` draws *binarization noise* (16-bit uniforms from which each
pixel's bit is drawn, :func:`dynamic_noise`, format in
:mod:`tfvae.fused_blocks`), ``dequantize`` *dequantization noise* (the
uniform ``u`` added to each discrete pixel). Neither is a sampler's noise,
the input of generation (:mod:`tfvae.sampler_noise`).

Adding a mode is one :class:`Mode` entry in :data:`MODES`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tfvae.data.binarize import binarize_static, binarize_threshold, dequantize_static
from tfvae.fused_blocks import draw_noise, noisy_bits

#: Seeds of the static protocol (bindata): training split 0, test split 1.
TRAIN_SEED, TEST_SEED = 0, 1


@dataclass(frozen=True)
class Mode:
    """One data mode.

    Attributes:
      name: the mode's name (``Splits.train_mode``).
      seeded: training batches draw fresh binarization or dequantization noise
        (new every epoch).
      bits: training rows are bits {0, 1} (fused blocks hold them bit-packed).
      noisy: training batches are bits drawn from binarization noise
        (:func:`tfvae.fused_blocks.noisy_bits`): fused blocks carry the rows and the
        noise, and the model's compiled step draws the bits.
      split: ``(ds, train_idx, val_idx) -> (train, val, test, levels)``: the
        training rows as the pipeline reads them, fixed float32 validation rows
        (or None), fixed test rows (uint8 bits or float32), and the levels of
        ``train``. ``train_idx``/``val_idx`` are None for "all rows"/"none".
      batch: ``(rows, seed, levels) -> float32``: a gathered batch (TensorFlow),
        with ``seed`` an int64 scalar tensor (ignored unless ``seeded``).
    """

    name: str
    seeded: bool
    bits: bool
    split: Callable
    batch: Callable
    noisy: bool = False


def _take(x, idx):
    return x if idx is None else x[idx]


def _float(rows, levels):
    from tfvae._keras import tf

    rows, top = tf.cast(rows, tf.float32), peak(levels)
    return rows if top == 1.0 else rows / top  # no division by 1 in every batch


def peak(levels) -> float:
    """The value of a full pixel: ``levels - 1``, or 1.0 for bits and floats."""
    return 1.0 if levels is None or levels <= 2 else float(levels - 1)


def _uniform(rows, seed, salt):
    """Dequantization noise: a uniform on [0, 1) per value of ``rows``, seeded."""
    from tfvae._keras import tf

    return tf.random.stateless_uniform(tf.shape(rows), seed=tf.stack([seed, salt]))


def _static_split(ds, train_idx, val_idx):
    # The whole split in file order first (bindata), then carve validation.
    bits = binarize_static(ds.x_train, TRAIN_SEED, ds.scaled)
    val = None if val_idx is None else bits[val_idx].astype(np.float32)
    return _take(bits, train_idx), val, binarize_static(ds.x_test, TEST_SEED, ds.scaled), 2


def _dynamic_split(ds, train_idx, val_idx):
    val = None
    if val_idx is not None:
        val = binarize_static(ds.x_train, TRAIN_SEED, ds.scaled, rows=val_idx)
        val = val.astype(np.float32)
    test = binarize_static(ds.x_test, TEST_SEED, ds.scaled)
    return _take(ds.x_train, train_idx), val, test, ds.levels


def dynamic_noise(rows, seed):
    """Binarization noise of ``dynamic`` bits: uint16 ``(n, D)`` for ``rows``, seeded per batch.

    Each pixel's bit is drawn from it by :func:`tfvae.fused_blocks.noisy_bits`
    (in the per-batch pipeline, or in the model's compiled step for fused
    blocks).
    """
    from tfvae._keras import tf

    return draw_noise(tf.shape(rows)[0], int(rows.shape[-1]), tf.stack([seed, 0]))


def _dynamic_batch(rows, seed, levels):
    return noisy_bits(rows, dynamic_noise(rows, seed), peak(levels))


def _threshold_split(ds, train_idx, val_idx):
    def bits(x):
        return binarize_threshold(ds.scaled(x))

    val = None if val_idx is None else bits(ds.x_train[val_idx]).astype(np.float32)
    return bits(_take(ds.x_train, train_idx)), val, bits(ds.x_test), 2


def _dequantize_split(ds, train_idx, val_idx):
    val = None
    if val_idx is not None:
        val = dequantize_static(ds.x_train, TRAIN_SEED, ds.levels, rows=val_idx)
    test = dequantize_static(ds.x_test, TEST_SEED, ds.levels)
    return _take(ds.x_train, train_idx), val, test, ds.levels


def _dequantize_batch(rows, seed, levels):
    from tfvae._keras import tf

    rows = tf.cast(rows, tf.float32)
    return (rows + _uniform(rows, seed, 1)) / float(levels)


def _none_split(ds, train_idx, val_idx):
    val = None if val_idx is None else ds.scaled(ds.x_train[val_idx])
    return _take(ds.x_train, train_idx), val, ds.scaled(ds.x_test), ds.levels


MODES: dict[str, Mode] = {
    "none": Mode("none", seeded=False, bits=False, split=_none_split,
                 batch=lambda rows, seed, levels: _float(rows, levels)),
    "static": Mode("static", seeded=False, bits=True, split=_static_split,
                   batch=lambda rows, seed, levels: _float(rows, None)),
    "dynamic": Mode("dynamic", seeded=True, bits=False, split=_dynamic_split,
                    batch=_dynamic_batch, noisy=True),
    "threshold": Mode("threshold", seeded=False, bits=True, split=_threshold_split,
                      batch=lambda rows, seed, levels: _float(rows, None)),
    "dequantize": Mode("dequantize", seeded=True, bits=False, split=_dequantize_split,
                       batch=_dequantize_batch),
}


def get(name: str) -> Mode:
    """The mode called ``name``; ConfigError naming the choices otherwise."""
    from tfvae.errors import ConfigError

    try:
        return MODES[name]
    except KeyError:
        raise ConfigError(f"unknown data mode {name!r}; choose one of {tuple(MODES)}") from None
