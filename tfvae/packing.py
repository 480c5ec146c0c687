"""The fused training block: the format shared by data pipelines and models.

A block is one element of :func:`tfvae.data.blocks`: ``K`` batches that a
model's ``train_step`` runs in one compiled loop. It is a dict:

* ``{"block": (K, B, D) float32, "rows": n}``, or
* ``{"bits": (K, B, ceil(D / 8)) uint8, "rows": n}`` for binary rows packed
  eight pixels per byte by :func:`pack_bits` (unpacked by the model a batch
  at a time with :func:`unpack_bits`);

the first ``n`` rows (in row-major order) are real, the rest padding.
"""

from __future__ import annotations

import numpy as np

#: Training steps that one block holds.
BLOCK_STEPS = 50
#: Keys of a block dict.
FLOAT_KEY, BITS_KEY, ROWS_KEY = "block", "bits", "rows"


def is_block(data) -> bool:
    """Whether a ``train_step`` input is a fused block."""
    return isinstance(data, dict) and ROWS_KEY in data and (FLOAT_KEY in data or BITS_KEY in data)


def block_data(block) -> tuple:
    """``(data, packed)`` of a fused block (or of its element spec): its
    ``[steps, batch, width]`` tensor and whether that is bit-packed."""
    packed = BITS_KEY in block
    return block[BITS_KEY if packed else FLOAT_KEY], packed


def pack_bits(x: np.ndarray, chunk_rows: int = 8192) -> np.ndarray:
    """``np.packbits(x, axis=1)`` of a ``(N, D)`` array of bits, chunk by chunk.

    Eight pixels per byte: a binarized 60,000 x 784 split takes 5.9 MB instead
    of 47 MB. Works on any dtype holding only 0 and 1 without a full-size
    temporary.
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
    each consumer of the batch, and through a reshape every element cost an
    integer division and remainder (about 2 ms a batch of 50 rows of 784
    pixels on this machine, as much as the rest of the step; now on a par
    with a float32 batch, ``benchmarks/train_throughput.py``).

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
