"""``tf.data`` pipelines: per-batch (Keras' loop) and fused blocks (tfvae's fast path).

Both hold the training rows once, as a tensor, and gather batches by index
(no shuffle buffer holding a second copy), and apply the data mode of
:mod:`tfvae.data.modes` to each batch with a per-batch stateless seed, so a
pipeline with the same seed replays the same epochs.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from tfvae.data import modes
from tfvae.data.binarize import is_binary
from tfvae.errors import ConfigError
from tfvae.fused_blocks import (
    BITS_KEY,
    BLOCK_STEPS,
    FLOAT_KEY,
    LEVELS_KEY,
    NOISE_KEY,
    PEAK_KEY,
    ROWS_KEY,
    pack_bits,
)


def _check(x, mode: str, batch_size, levels) -> modes.Mode:
    """Validates a pipeline's arguments; returns the mode."""
    if mode not in modes.MODES:
        raise ConfigError(f"unknown pipeline mode {mode!r}; choose one of {tuple(modes.MODES)}")
    if np.ndim(x) != 2:
        raise ConfigError(f"training rows must be a (N, D) array, got shape {np.shape(x)}")
    n = len(x)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise ConfigError(f"batch size must be a positive integer, got {batch_size!r}")
    if batch_size > n:
        raise ConfigError(
            f"batch size {batch_size} is larger than the {n} training examples; "
            f"use batch_size <= {n} (--batch-size)"
        )
    if mode == "dequantize" and not levels:
        raise ConfigError("dequantize needs discrete data (levels), got levels=None")
    return modes.MODES[mode]


def make_pipeline(
    x: np.ndarray,
    mode: str,
    batch_size: int,
    levels: int | None,
    shuffle: bool,
    seed: int,
    drop_remainder: bool = False,
    repeat: bool = False,
    indices: bool = False,
):
    """Builds the ``tf.data`` pipeline of float32 ``(B, D)`` batches.

    Per-batch randomness (the binarization noise of ``dynamic`` bits, the
    dequantization noise of ``dequantize``) uses
    ``tf.random.stateless_uniform`` seeded by an element of
    ``tf.data.Dataset.random(seed, rerandomize_each_iteration=True)`` zipped with
    the batches: each epoch (each new iterator, or each pass of ``repeat``) draws
    new noise, yet a fresh pipeline with the same seed reproduces the same epochs,
    independently of parallel map scheduling. Shuffling is seeded the same way.

    Args:
        x: Training rows (uint8 or float32), ``(N, D)``.
        mode: A key of :data:`tfvae.data.MODES` (usually ``Splits.train_mode``).
        batch_size: Rows per batch, at most ``N``.
        levels: ``Splits.levels``; None for floats.
        shuffle: Shuffle rows each epoch.
        seed: Seed of shuffling and of per-batch randomness.
        drop_remainder: Drop the last, smaller batch.
        repeat: Repeat forever (epochs reshuffled and resampled).
        indices: Yield ``(batch, rows)`` pairs, ``rows`` the batch's int32 row
            indices in ``x`` (for models that keep parameters per example).

    Returns:
        A ``tf.data.Dataset`` of float32 batches (or of ``(batch, rows)`` pairs).

    Raises:
        ConfigError: Unknown mode, bad batch size, or ``dequantize`` without levels.
    """
    from tfvae._keras import tf

    spec = _check(x, mode, batch_size, levels)
    n = len(x)
    rows = tf.convert_to_tensor(x)
    ds = tf.data.Dataset.range(n)
    if shuffle:
        ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    if repeat:
        ds = ds.repeat()
    # With indices, each batch's row indices ride along as a second component.
    ds = ds.map(lambda i: (tf.gather(rows, i), tf.cast(i, tf.int32)) if indices
                else tf.gather(rows, i))
    if spec.seeded:
        # One int64 per batch, new per iteration but reproducible for this seed.
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        ds = tf.data.Dataset.zip((ds, seeds))
    ds = ds.map(_per_batch(spec, levels, indices), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def _per_batch(spec: modes.Mode, levels, indices: bool):
    """A mode's map of ``batch`` (and its seed), or of ``(batch, rows)`` pairs (and seed)."""
    fn = functools.partial(spec.batch, levels=levels)
    if not spec.seeded:
        fn = functools.partial(fn, seed=None)
    if not indices:
        return fn
    if spec.seeded:
        return lambda pair, seed: (fn(pair[0], seed), pair[1])
    return lambda batch, rows: (fn(batch), rows)


@dataclass
class BlockPipeline:
    """A repeating ``tf.data`` pipeline of fused training blocks and its epoch size.

    Each element is a block (see :mod:`tfvae.fused_blocks`): ``K`` batches of ``B``
    rows, float32 or bit-packed. Every epoch is one fresh permutation of all
    rows cut into ``steps_per_epoch`` blocks; only an epoch's last block is
    short, so the batches are exactly those of a per-batch pipeline
    (``ceil(N / B)`` per epoch, the last one smaller when ``B`` does not divide
    ``N``).

    Attributes:
        dataset: Infinite dataset of blocks: pass it to ``fit`` with
            ``steps_per_epoch``.
        steps_per_epoch: Blocks per epoch (Keras' steps).
        batches_per_epoch: Training steps per epoch, ``ceil(N / B)``.
        block_steps: ``K``, training steps per full block.
        batch_size: ``B``.
        rows: ``N``, training rows per epoch.
    """

    dataset: object
    steps_per_epoch: int
    batches_per_epoch: int
    block_steps: int
    batch_size: int
    rows: int


def blocks(
    x: np.ndarray,
    batch_size: int,
    seed: int = 0,
    shuffle: bool = True,
    mode: str | None = None,
    levels: int | None = None,
    block_steps: int = BLOCK_STEPS,
) -> BlockPipeline:
    """The fused training pipeline: one element holds ``block_steps`` batches.

    A tfvae model's ``train_step`` runs a block's batches in one XLA-compiled
    loop (the epoch's last, partial batch as one more step): the batches and
    updates of Keras' per-batch loop, without its per-step overhead. What it
    changes in ``fit``: Keras counts one step per block, so callbacks' batch
    hooks and the progress bar advance once per block, and ``run_eagerly``
    does not apply to the compiled loop.

    The rows are held once, as a tensor: bit-packed when they are bits, as
    given otherwise. Each epoch draws one permutation (seeded by an element of
    ``Dataset.random(seed)``), gathers a block of rows at a time and applies
    the data mode to it with the same seeds; ``dynamic`` bits are left for the
    model's compiled step to draw, from the block's rows and 16-bit
    binarization noise (:func:`tfvae.fused_blocks.noisy_bits`).

    Args:
        x: Training rows ``(N, D)``.
        batch_size: Rows per training step, at most ``N``.
        seed: Seed of the permutations and of per-block binarization or
            dequantization noise.
        shuffle: Permute rows every epoch (otherwise file order).
        mode: A key of :data:`tfvae.data.MODES`; None: ``static`` (held
            bit-packed) for binary rows, ``none`` otherwise.
        levels: Levels of ``x`` for the mode (None: 256 for uint8, else none).
        block_steps: Training steps per block (fewer when an epoch is shorter).

    Returns:
        A :class:`BlockPipeline`.

    Example:
      >>> b = tfvae.data.blocks(x_train, batch_size=128, seed=0)
      >>> model.fit(b.dataset, steps_per_epoch=b.steps_per_epoch, epochs=10)
    """
    x = np.asarray(x)
    if mode is None:
        mode = "static" if is_binary(x) else "none"
    bits = mode in modes.MODES and modes.MODES[mode].bits
    if levels is None and x.dtype == np.uint8 and not bits:
        levels = 256  # as documented: 8-bit rows are 256 levels unless told
    spec = _check(x, mode, batch_size, levels)
    n = len(x)
    batches = -(-n // batch_size)
    steps = max(1, min(int(block_steps), batches))
    dataset, count = _block_dataset(x, spec, levels, steps, int(batch_size), seed, shuffle)
    return BlockPipeline(dataset, count, batches, steps, int(batch_size), n)


def _block_dataset(x, spec, levels, steps, batch_size, seed, shuffle):
    """The repeating dataset of blocks and the number of blocks per epoch."""
    from tfvae._keras import tf

    n, width = x.shape
    size = steps * batch_size
    count = -(-n // size)
    packed = spec.bits
    rows = tf.convert_to_tensor(pack_bits(x) if packed else x)

    def epoch(s):
        order = tf.range(n, dtype=tf.int32)
        if shuffle:
            order = tf.random.experimental.stateless_shuffle(order, seed=tf.stack([s, 2]))
        # Padding indices point at row 0; they are never trained on.
        order = tf.reshape(tf.pad(order, [[0, count * size - n]]), [count, size])
        counts = tf.minimum(size, n - tf.range(count, dtype=tf.int32) * size)
        block_seeds = s * 100_003 + tf.range(count, dtype=tf.int64)
        return tf.data.Dataset.from_tensor_slices((order, counts, block_seeds))

    def gather(order, rows_in_block, s):
        b = tf.gather(rows, order)
        if packed:  # the model unpacks a batch at a time, inside its compiled loop
            return {BITS_KEY: tf.reshape(b, [steps, batch_size, -1]), ROWS_KEY: rows_in_block}
        if spec.noisy:  # the same bits as spec.batch, drawn by the model's compiled loop
            return {LEVELS_KEY: tf.reshape(b, [steps, batch_size, width]),
                    NOISE_KEY: tf.reshape(modes.dynamic_noise(b, s), [steps, batch_size, width]),
                    PEAK_KEY: tf.constant(modes.peak(levels)), ROWS_KEY: rows_in_block}
        b = spec.batch(b, s, levels)
        return {FLOAT_KEY: tf.reshape(b, [steps, batch_size, width]), ROWS_KEY: rows_in_block}

    ds = tf.data.Dataset.random(seed=seed).flat_map(epoch)
    return ds.map(gather).prefetch(2).with_options(_no_autotune()), count


def _no_autotune():
    """Options for a pipeline whose buffers are all fixed: no autotuning thread.

    With autotuning on, deleting the iterator at the end of ``fit`` could
    wait for tf.data's tuning thread to wake, often for seconds
    (``~RootDataset::Iterator`` joining the thread in
    ``Model::OptimizeLoop``); without the thread there is nothing to wait for.
    """
    from tfvae._keras import tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return options
