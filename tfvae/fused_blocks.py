"""The fused training block: its format, bit packing and binarization noise.

Shared by the data pipelines that make blocks and the models that train on
them, this module holds three things: the format of a block (below), the bit
packing of binary rows (:func:`pack_bits`, :func:`unpack_bits`) and the
*binarization noise* of dynamic binarization: 16-bit uniforms from which a
pixel's bit is drawn (:func:`draw_noise`, :func:`noisy_bits`). That noise is
training data's; it is neither a sampler's noise (the ``eps`` and ``u`` inputs
of generation, :mod:`tfvae.sampler_noise`) nor dequantization noise (the
uniform added to discrete pixels by the ``dequantize`` mode,
:mod:`tfvae.data.modes`).

A block is one element of :func:`tfvae.data.blocks`: ``K`` batches that a
model's ``train_step`` runs in one compiled loop. It is a dict:

* ``{"block": (K, B, D) float32, "rows": n}``, or
* ``{"bits": (K, B, ceil(D / 8)) uint8, "rows": n}`` for binary rows packed
  eight pixels per byte by :func:`pack_bits` (unpacked by the model a batch
  at a time with :func:`unpack_bits`), or
* ``{"levels": (K, B, D), "noise": (K, B, D) uint16, "peak": float32, "rows": n}``
  for bits still to be drawn (dynamic binarization, ``noise`` its
  binarization noise): pixel ``j`` is 1 when
  ``noise[j] / 2^16 < levels[j] / peak`` (:func:`noisy_bits`, in the model's
  compiled step);

the first ``n`` rows (in row-major order) are real, the rest padding.
"""

from __future__ import annotations

import numpy as np

#: Training steps that one block holds.
BLOCK_STEPS = 50
#: Keys of a block dict.
FLOAT_KEY, BITS_KEY, ROWS_KEY = "block", "bits", "rows"
LEVELS_KEY, NOISE_KEY, PEAK_KEY = "levels", "noise", "peak"
#: The kinds of block, and the keys of their ``[steps, batch, width]`` parts.
KINDS = {"float": (FLOAT_KEY,), "bits": (BITS_KEY,), "noisy": (LEVELS_KEY, NOISE_KEY)}


def is_block(data) -> bool:
    """Whether a ``train_step`` input is a fused block."""
    return isinstance(data, dict) and ROWS_KEY in data and any(
        keys[0] in data for keys in KINDS.values())


def block_data(block) -> tuple:
    """``(parts, kind)`` of a fused block (or of its element spec).

    ``kind`` is a key of :data:`KINDS`; ``parts`` its ``[steps, batch, width]``
    tensors (specs), then for ``noisy`` blocks the peak.
    """
    kind = next(k for k, keys in KINDS.items() if keys[0] in block)
    parts = tuple(block[key] for key in KINDS[kind])
    return (parts + (block[PEAK_KEY],) if kind == "noisy" else parts), kind


def noisy_bits(levels, noise, peak, dtype=None):
    """Dynamic binarization: bits of a ``noisy`` block, 1 where ``noise / 2^16 < levels / peak``.

    With ``p = levels / peak`` in [0, 1] and ``noise`` uniform on the 16-bit
    integers, a pixel is 1 with probability ``ceil(2^16 p) / 2^16``: within
    ``2^-16`` of ``p``, exactly 0 for ``p = 0`` and 1 for ``p = 1``. For
    integer levels and ``peak`` up to 255 that is exact in float32: no
    ``noise / 2^16`` lies within rounding of ``p`` unless equal to it. Drawn as
    32-bit words, two pixels each, the noise costs half the random numbers of
    a float32 uniform per pixel.

    Args:
      levels: pixel values ``(..., D)``, any real dtype.
      noise: uint16 ``(..., D)`` binarization noise (:func:`draw_noise`).
      peak: float32 scalar, the value of a pixel that is always 1.
      dtype: the result's dtype (default float32).
    """
    from tfvae._keras import tf

    p = tf.cast(levels, tf.float32) / peak
    u = tf.cast(noise, tf.float32) * (2.0 ** -16)
    return tf.cast(u < p, tf.float32 if dtype is None else dtype)


def draw_noise(rows, width: int, seed):
    """Binarization noise: uniform uint16 ``(rows, width)`` for :func:`noisy_bits`, stateless.

    Not a sampler's noise (that is :func:`tfvae.export.draw_noise`, from
    :mod:`tfvae.sampler_noise`).

    ``rows`` may be a scalar tensor; ``seed`` is a shape ``[2]`` integer tensor,
    as ``tf.random.stateless_uniform`` takes it: the same seed, the same noise.
    Drawn by TensorFlow's random kernel in the input pipeline, never inside
    XLA: XLA's CPU generator is much slower (``benchmarks/README.md``).
    """
    from tfvae._keras import tf

    words = tf.random.stateless_uniform([rows, (width + 1) // 2], seed=seed, minval=None,
                                        maxval=None, dtype=tf.uint32)
    noise = tf.reshape(tf.bitcast(words, tf.uint16), [rows, -1])
    return noise if width % 2 == 0 else noise[:, :width]


def pack_bits(x: np.ndarray, chunk_rows: int = 8192) -> np.ndarray:
    """``np.packbits(x, axis=1)`` of a ``(N, D)`` array of bits, chunk by chunk.

    Eight pixels per byte: an eighth of the bytes of a uint8 array of bits, a
    thirty-second of float32. Works on any dtype holding only 0 and 1 without
    a full-size temporary.
    """
    x = np.asarray(x)
    out = np.empty((len(x), (x.shape[1] + 7) // 8), np.uint8)
    for start in range(0, len(x), chunk_rows):
        stop = min(start + chunk_rows, len(x))
        out[start:stop] = np.packbits(x[start:stop].astype(bool, copy=False), axis=1)
    return out


def unpack_bits(packed, width: int, dtype=None):
    """TensorFlow inverse of :func:`pack_bits`: ``(..., ceil(D/8))`` -> ``(..., D)``.

    Pixel ``j`` is bit ``7 - j % 8`` of byte ``j // 8``: a gather of the bytes
    by a constant column index, then floating-point arithmetic (exact below
    256). Written so that no step reshapes ``(..., bytes, 8)`` into
    ``(..., D)``: inside a compiled training step XLA fuses the unpacking into
    each consumer of the batch, and through a reshape every element would
    cost an integer division and remainder, as much as the rest of the step.
    Written this way, a packed batch trains as fast as a float32 one
    (``benchmarks/train_throughput.py``).

    Args:
      packed: uint8 tensor ``(..., ceil(D/8))`` from :func:`pack_bits`.
      width: ``D``, the number of bits per row.
      dtype: the result's dtype (default uint8).
    """
    from tfvae._keras import tf

    columns = np.arange(width)
    index = tf.constant(columns // 8, tf.int32)
    scale = tf.constant(np.exp2(columns % 8 - 7).astype(np.float32))  # 2^-(7 - j % 8)
    shifted = tf.floor(tf.cast(tf.gather(packed, index, axis=-1), tf.float32) * scale)
    bits = shifted - 2.0 * tf.floor(0.5 * shifted)  # the lowest bit of the shifted byte
    return tf.cast(bits, tf.uint8 if dtype is None else dtype)
