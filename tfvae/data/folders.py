"""A folder of PNG or JPEG images as a data set, read file by file.

The images are never all in memory: :class:`FolderDataSet` holds file names
and labels, and :mod:`tfvae.data.streams` decodes them on the fly with
``tf.data``, so a folder bigger than memory trains.

Layout: ``DIR/train/`` and ``DIR/test/`` when both exist (the given split),
otherwise every image under ``DIR``, split 90/10 by a seeded permutation.
Images directly in a folder have no label; images in sub-folders are
labelled by sub-folder (class names in sorted order), as Keras'
``image_dataset_from_directory`` does. Every image is centre-cropped to the
target aspect ratio and resized to ``image_size`` (default: the first
image's size); grey-level images have one channel, all others three.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tfvae.errors import DataError

#: File name endings read as images (case-insensitive).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: Seed of the permutation that splits a folder without train/ and test/.
SPLIT_SEED = 0


@dataclass
class FolderDataSet:
    """Images in files: names, labels and the shape they are decoded to.

    Attributes:
        name: the folder.
        train_files, test_files: image paths of each split.
        y_train, y_test: integer labels (sub-folder index), or None.
        image_shape: ``(H, W, C)`` every image is decoded, cropped and resized to.
        classes: the sub-folder names the labels index, or None.
        levels: 256 (8-bit pixels).
    """

    name: str
    train_files: list
    test_files: list
    y_train: np.ndarray | None
    y_test: np.ndarray | None
    image_shape: tuple
    classes: list | None = None
    levels: int = 256
    streamed: bool = field(default=True, repr=False)

    @property
    def dim(self) -> int:
        return int(math.prod(self.image_shape))


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def is_image_folder(path: Path) -> bool:
    """Whether ``path`` holds image files, directly or one sub-folder down."""
    if not path.is_dir():
        return False
    if _images(path):
        return True
    return any(_images(sub) for sub in path.iterdir() if sub.is_dir())


def _scan(folder: Path, classes: list | None = None):
    """Files and labels of one folder: ``(files, labels or None, class names or None)``."""
    top = _images(folder)
    subs = sorted(sub for sub in folder.iterdir() if sub.is_dir() and _images(sub))
    if top and subs:
        raise DataError(
            f"{folder} holds images both directly and in sub-folders ({subs[0].name}/...); "
            "put every image in a class sub-folder, or none"
        )
    if top:
        return [str(p) for p in top], None, None
    if not subs:
        raise DataError(f"{folder} holds no {'/'.join(IMAGE_SUFFIXES)} images")
    classes = classes or [sub.name for sub in subs]
    files, labels = [], []
    for sub in subs:
        if sub.name not in classes:
            raise DataError(f"{sub} is a class the training folder does not have "
                            f"({', '.join(classes)})")
        found = _images(sub)
        files += [str(p) for p in found]
        labels += [classes.index(sub.name)] * len(found)
    return files, np.asarray(labels, np.int64), classes


def _shape(first: str, image_size) -> tuple[int, int, int]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(first) as image:
            width, height = image.size
            channels = 1 if image.mode in ("1", "L", "LA", "I", "I;16", "F") else 3
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"cannot read the image {first}: {exc}") from None
    if image_size is not None:
        height, width = (int(s) for s in image_size)
    return (height, width, channels)


def load_folder(path: Path, image_size=None) -> FolderDataSet:
    """A :class:`FolderDataSet` of the images under ``path`` (see the module docstring)."""
    if (path / "train").is_dir() and (path / "test").is_dir():
        train, y_train, classes = _scan(path / "train")
        test, y_test, _ = _scan(path / "test", classes)
        if (y_train is None) != (y_test is None):
            raise DataError(f"{path}: train/ and test/ must both use class sub-folders, or neither")
    else:
        files, labels, classes = _scan(path)
        if len(files) < 2:
            raise DataError(f"{path} holds {len(files)} image; give at least two (train and test)")
        order = np.random.default_rng(SPLIT_SEED).permutation(len(files))
        n_train = max(1, (9 * len(files)) // 10)
        train = [files[i] for i in order[:n_train]]
        test = [files[i] for i in order[n_train:]]
        y_train = None if labels is None else labels[order[:n_train]]
        y_test = None if labels is None else labels[order[n_train:]]
    return FolderDataSet(str(path), train, test, y_train, y_test,
                         _shape(train[0], image_size), classes)
