"""Training, validation and test splits of image files, decoded on the fly.

:func:`prepare_folder` is :func:`tfvae.data.prepare` for a
:class:`tfvae.data.folders.FolderDataSet`: the same data modes, applied per
batch as images are read, so no split is ever held in memory. Training
batches draw fresh binarization noise (dynamic bits) or dequantization noise
from per-batch seeds; validation and test batches draw fixed noise (the same
every time they are read), as the fixed splits of arrays do.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from tfvae.data import image_checks, modes
from tfvae.data.folders import FolderDataSet
from tfvae.errors import ConfigError

#: Images read and decoded in parallel, and batches prefetched, by tf.data.
_AUTOTUNE = -1


def _decoder(image_shape):
    """``path -> uint8 [D]``: read, decode, centre-crop to the aspect ratio, resize.

    :func:`tfvae.data.image_checks.find_bad` checked every file against the
    same decoding and cropping when the folder was loaded.
    """
    from tfvae._keras import tf

    height, width, channels = image_shape

    def load(path):
        image = image_checks.decode(path, channels)
        shape = tf.cast(tf.shape(image)[:2], tf.float32)
        scale = tf.minimum(shape[0] / height, shape[1] / width)
        crop = tf.cast(tf.round(tf.constant([height, width], tf.float32) * scale), tf.int32)
        offset = (tf.shape(image)[:2] - crop) // 2
        image = tf.image.crop_to_bounding_box(image, offset[0], offset[1], crop[0], crop[1])
        image = tf.image.resize(image, [height, width], antialias=True)
        image = tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)
        return tf.reshape(image, [height * width * channels])

    return load


@dataclass
class FileSplit:
    """One split of image files, read as batches of processed float32 rows.

    Attributes:
        files: image paths.
        labels: integer labels, or None.
        image_shape: ``(H, W, C)``.
        mode: the data mode (a key of :data:`tfvae.data.MODES`).
        levels: 256.
        fixed_seed: seed of the fixed noise of evaluation batches (None: training split).
    """

    files: list
    labels: np.ndarray | None
    image_shape: tuple
    mode: str
    levels: int
    fixed_seed: int | None = None

    def __len__(self) -> int:
        return len(self.files)

    @property
    def dim(self) -> int:
        return int(math.prod(self.image_shape))

    def dataset(self, batch_size: int, shuffle: bool = False, seed: int = 0,
                repeat: bool = False):
        """A ``tf.data.Dataset`` of float32 ``(B, D)`` batches under the split's mode."""
        from tfvae._keras import tf

        spec = modes.MODES[self.mode]
        # As bytes: a file name need not be valid UTF-8.
        files = tf.data.Dataset.from_tensor_slices([os.fsencode(f) for f in self.files])
        if shuffle:
            files = files.shuffle(len(self.files), seed=seed, reshuffle_each_iteration=True)
        if repeat:
            files = files.repeat()
        ds = files.map(_decoder(self.image_shape), num_parallel_calls=_AUTOTUNE)
        ds = ds.batch(int(batch_size))
        if self.fixed_seed is None:  # training: fresh noise every batch and epoch
            seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        else:  # evaluation: the same noise every time batch i is read
            seeds = tf.data.Dataset.range(self.fixed_seed * 1_000_003,
                                          self.fixed_seed * 1_000_003 + 2**31)
        ds = tf.data.Dataset.zip((ds, seeds)).map(
            lambda rows, s: spec.batch(rows, s, self.levels), num_parallel_calls=_AUTOTUNE)
        return ds.prefetch(_AUTOTUNE)

    def batches(self, batch_size: int):
        """The split once, as numpy float32 batches (what :func:`tfvae.evaluate` reads)."""
        for batch in self.dataset(batch_size):
            yield batch.numpy()

    def rows(self, limit: int | None = None, seed: int = 0) -> np.ndarray:
        """Up to ``limit`` processed rows, in order, as one float32 array."""
        files = self.files if limit is None else self.files[:limit]
        head = FileSplit(files, None, self.image_shape, self.mode, self.levels,
                         self.fixed_seed if self.fixed_seed is not None else seed)
        return np.concatenate(list(head.batches(256)))


@dataclass
class StreamSplits:
    """:class:`tfvae.data.Splits` for files: the same fields, each split a :class:`FileSplit`."""

    train: FileSplit
    val: FileSplit | None
    test: FileSplit
    y_train: np.ndarray | None
    y_val: np.ndarray | None
    y_test: np.ndarray | None
    train_mode: str
    levels: int
    image_shape: tuple
    streamed: bool = True

    @property
    def dequantized_levels(self) -> int | None:
        return self.levels if self.train_mode == "dequantize" else None

    def test_rows(self, limit: int | None = None) -> np.ndarray:
        return self.test.rows(limit)

    def train_rows(self, limit: int | None = None, seed: int = 0) -> np.ndarray:
        return self.train.rows(limit, seed)

    def train_moments(self, seed: int = 0, limit: int = 20000):
        """Mean and standard deviation of (up to ``limit``) training rows as the model sees them."""
        rows = self.train.rows(limit, seed).astype(np.float64)
        return rows.mean(axis=0).astype(np.float32), rows.std(axis=0).astype(np.float32)


#: Data modes that work batch by batch on raw pixels (the others need a whole split).
STREAM_MODES = ("none", "dynamic", "dequantize")


def prepare_folder(ds: FolderDataSet, mode: str, train_idx, val_idx) -> StreamSplits:
    """Splits of a folder under a data mode (``none``, ``dynamic`` or ``dequantize``).

    ``train_idx`` and ``val_idx`` pick the training and validation files among
    the training split's (``val_idx`` None: no validation split).
    """
    if mode not in STREAM_MODES:
        raise ConfigError(f"--binarize {mode} needs the whole split in memory; with a folder of "
                          f"images use --binarize dynamic (or none)")

    def split(files, labels, idx, fixed):
        if idx is not None:
            files = [files[i] for i in idx]
            labels = None if labels is None else labels[idx]
        return FileSplit(files, labels, ds.image_shape, mode, ds.levels, fixed), labels

    train, y_train = split(ds.train_files, ds.y_train, train_idx, None)
    val, y_val = (None, None) if val_idx is None else split(ds.train_files, ds.y_train, val_idx,
                                                           modes.TRAIN_SEED + 1)
    test, y_test = split(ds.test_files, ds.y_test, None, modes.TEST_SEED + 1)
    return StreamSplits(train, val, test, y_train, y_val, y_test, mode, ds.levels,
                        tuple(ds.image_shape))
