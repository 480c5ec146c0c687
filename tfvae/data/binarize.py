"""Scaling, binarization and dequantization of whole splits (numpy only).

Static binarization follows the shared benchmark protocol
(``shared/bench/bindata.py``) bit for bit: pixels scaled by
``x.astype(float32) / 255.0``, then ``numpy.random.default_rng(seed).random(shape)
< x`` over the whole split in file order, seed 0 for training and seed 1 for
test. The noise is drawn chunk by chunk (PCG64's ``random()`` draws one
64-bit output per double, sequentially, so chunks in row order give the same
numbers), so only one chunk of float64 noise exists at a time.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from tfvae.errors import ConfigError


def scale(x: np.ndarray, levels: int | None) -> np.ndarray:
    """Raw values on their natural [0, 1] scale, as float32.

    ``x.astype(float32) / (levels - 1)`` for discrete data with more than two
    levels (uint8 pixels: ``/ 255.0``, the same operation and rounding as
    bindata's; digits: ``/ 16``); binary data (levels 2) and continuous
    floats (levels None) are only cast.
    """
    x = np.asarray(x)
    if levels is None or levels <= 2:
        return x.astype(np.float32, copy=False)
    # float32 array / Python float stays float32 (NEP 50).
    return x.astype(np.float32) / float(levels - 1)


def is_binary(x: np.ndarray, chunk_rows: int = 4096) -> bool:
    """Whether every value of ``x`` is 0 or 1 (checked chunk by chunk)."""
    x = np.asarray(x)
    if x.dtype == bool or x.size == 0:
        return True
    if x.dtype == np.uint8:
        return bool(x.max() <= 1)
    return all(bool(np.all((x[a:b] == 0) | (x[a:b] == 1)))
               for a, b in chunks(len(x), chunk_rows))


def chunks(n: int, chunk_rows: int):
    """``(start, stop)`` of consecutive row chunks of at most ``chunk_rows`` rows."""
    if chunk_rows < 1:
        raise ConfigError(f"chunk_rows must be at least 1, got {chunk_rows}")
    for start in range(0, n, chunk_rows):
        yield start, min(start + chunk_rows, n)


def _with_noise(x, seed, fn, dtype, chunk_rows, rows):
    """``fn(raw chunk, uniform noise chunk)`` over a split, noise drawn in row order.

    The noise is ``default_rng(seed).random`` over the whole split, so the
    result for ``rows`` equals those rows of the whole-split result.
    """
    x = np.asarray(x)
    rng = np.random.default_rng(seed)
    keep = None if rows is None else np.asarray(rows, dtype=np.int64)
    out = np.empty((len(x) if keep is None else len(keep),) + x.shape[1:], dtype)
    filled = 0
    for start, stop in chunks(len(x), chunk_rows):
        noise = rng.random((stop - start,) + x.shape[1:])
        if keep is None:
            out[start:stop] = fn(x[start:stop], noise)
            continue
        local = keep[(keep >= start) & (keep < stop)] - start
        if len(local):
            out[filled:filled + len(local)] = fn(x[start + local], noise[local])
            filled += len(local)
    return out


def _default_scale(x: np.ndarray) -> np.ndarray:
    # uint8 pixels -> bindata's x.astype(float32) / 255.0; anything else as float32.
    return scale(x, 256 if x.dtype == np.uint8 else None)


def binarize_static(
    x: np.ndarray,
    seed: int,
    scale_fn: Callable[[np.ndarray], np.ndarray] | None = None,
    chunk_rows: int = 4096,
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """Statically binarizes a split: bit-identical to bindata's ``load_split``.

    Args:
        x: Raw split, rows first (e.g. ``(N, D)`` uint8), in file order.
        seed: Seed of ``numpy.random.default_rng`` (bindata: 0 train, 1 test).
        scale_fn: Maps a chunk of raw rows to probabilities (e.g. ``DataSet.scaled``).
            None: uint8 -> ``x.astype(float32) / 255.0``, other dtypes cast to float32.
        chunk_rows: Rows per chunk; does not change the result.
        rows: Optional sorted row indices to keep: the noise is still drawn for the
            whole split (so the bits equal those of the full split), but only these
            rows are returned.

    Returns:
        uint8 array of {0, 1} with the shape of ``x`` (or ``(len(rows),) + x.shape[1:]``).
    """
    scale_fn = scale_fn or _default_scale
    return _with_noise(x, seed, lambda raw, u: u < scale_fn(raw), np.uint8, chunk_rows, rows)


def dequantize_static(
    x: np.ndarray,
    seed: int,
    levels: int,
    chunk_rows: int = 4096,
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """Dequantizes discrete values once, with fixed noise: ``(x + u) / levels``.

    Args:
        x: Raw integer-valued split (uint8 pixels or digits 0..16).
        seed: Noise seed (``default_rng(seed).random`` over the whole split).
        levels: Number of discrete values (256, 17, ...).
        chunk_rows: Rows per chunk; does not change the result.
        rows: Optional sorted row indices to keep.

    Returns:
        float32 array in [0, 1].
    """
    return _with_noise(x, seed, lambda raw, u: (raw + u) / levels, np.float32, chunk_rows, rows)


def binarize_threshold(x_scaled: np.ndarray) -> np.ndarray:
    """Deterministic binarization: 1 where ``x_scaled > 0.5`` (strictly), else 0.

    Args:
        x_scaled: Values in their natural [0, 1] scale.

    Returns:
        uint8 array of {0, 1}, same shape.
    """
    return (np.asarray(x_scaled) > 0.5).astype(np.uint8)
