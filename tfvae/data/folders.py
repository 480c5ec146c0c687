"""A folder of PNG or JPEG images as a data set, read file by file.

The images are never all in memory: :class:`FolderDataSet` holds file names
and labels, and :mod:`tfvae.data.streams` decodes them on the fly with
``tf.data``, so a folder bigger than memory trains.

Layouts (:data:`LAYOUTS`): images directly in ``DIR``, or in class
sub-folders ``DIR/<class>/``, split 90/10 by a seeded permutation; or
``DIR/train/`` and ``DIR/test/`` (the given split), each holding images
directly or in class sub-folders. Images directly in a folder have no label;
images in sub-folders are labelled by sub-folder (class names in sorted
order), as Keras' ``image_dataset_from_directory`` does. A folder with fewer
than :data:`MIN_IMAGES` images in these places is not taken for a data set
(a mistyped path to a folder with a few stray pictures). Every image is
centre-cropped to the target aspect ratio and resized to ``image_size``
(default: the first image's size); grey-level images have one channel, all
others three.

Every file is checked when the folder is loaded
(:mod:`tfvae.data.image_checks`): files that cannot be used are named and
the folder refused, or they are left out with a warning
(``bad_images="skip"``), never found in the middle of training.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tfvae.data import image_checks
from tfvae.data.image_checks import printable
from tfvae.errors import ConfigError, DataError, DataWarning

#: File name endings read as images (case-insensitive).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: Seed of the permutation that splits a folder without train/ and test/.
SPLIT_SEED = 0
#: Fewest images a folder holds to be read as an image data set.
MIN_IMAGES = 10
#: Where an image data set keeps its images.
LAYOUTS = ("DIR/*.png (or .jpg), DIR/<class>/*.png, or DIR/train/ and DIR/test/ each "
           "holding images or <class>/ folders of them")
#: The given split's folders.
SPLIT_FOLDERS = ("train", "test")
#: Bad files a message names (it counts the others).
SHOWN = 5


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


def _folders(path: Path) -> list[Path]:
    return sorted(sub for sub in path.iterdir() if sub.is_dir())


def is_image_folder(path: Path) -> bool:
    """Whether ``path`` holds image files where a data set keeps them (:data:`LAYOUTS`).

    Directly, one sub-folder down, or in class folders under ``train/`` or
    ``test/``; :func:`load_folder` then checks that there are enough.
    """
    if not path.is_dir():
        return False
    if _images(path):
        return True
    return any(_images(sub) or (sub.name in SPLIT_FOLDERS and any(map(_images, _folders(sub))))
               for sub in _folders(path))


def _scan(folder: Path, classes: list | None = None):
    """Files and labels of one folder: ``(files, labels or None, class names or None)``."""
    top = _images(folder)
    subs = sorted(sub for sub in folder.iterdir() if sub.is_dir() and _images(sub))
    if top and subs:
        raise DataError(
            f"{printable(folder)} holds images both directly and in sub-folders "
            f"({printable(subs[0].name)}/...); put every image in a class sub-folder, or none"
        )
    if top:
        return [str(p) for p in top], None, None
    if not subs:
        raise DataError(f"{printable(folder)} holds no {'/'.join(IMAGE_SUFFIXES)} images "
                        "directly or in class sub-folders")
    classes = classes or [sub.name for sub in subs]
    files, labels = [], []
    for sub in subs:
        if sub.name not in classes:
            raise DataError(f"{printable(sub)} is a class the training folder does not have "
                            f"({', '.join(map(printable, classes))})")
        found = _images(sub)
        files += [str(p) for p in found]
        labels += [classes.index(sub.name)] * len(found)
    return files, np.asarray(labels, np.int64), classes


def _layout(path: Path):
    """``(train, y_train, test or None, y_test, classes)``: test None when not given."""
    given = [path / name for name in SPLIT_FOLDERS if (path / name).is_dir()]
    if len(given) == 2:
        train, y_train, classes = _scan(given[0])
        test, y_test, _ = _scan(given[1], classes)
        if (y_train is None) != (y_test is None):
            raise DataError(f"{printable(path)}: train/ and test/ must both use class "
                            "sub-folders, or neither")
    elif len(given) == 1 and not _images(given[0]) and any(map(_images, _folders(given[0]))):
        missing = ({"train", "test"} - {given[0].name}).pop()
        raise DataError(f"{printable(path)} holds {given[0].name}/ with class folders but no "
                        f"{missing}/: give both, or put the class folders in "
                        f"{printable(path)} itself to split it 90/10")
    else:
        train, y_train, classes = _scan(path)
        test, y_test = None, None
    found = len(train) + len(test or ())
    if found < MIN_IMAGES:
        names = ", ".join(printable(Path(f).relative_to(path)) for f in (train + (test or []))[:3])
        raise DataError(
            f"{printable(path)} is not an image data set: it holds {found} image"
            f"{'' if found == 1 else 's'} ({names}) where a data set keeps them, fewer than "
            f"{MIN_IMAGES}. Check --data-dir; an image folder is laid out as {LAYOUTS}")
    return train, y_train, test, y_test, classes


def _shape(path: Path, train: list, headers: dict, image_size) -> tuple[int, int, int]:
    """``(H, W, C)``: ``image_size`` (or the first readable training image's) and its channels."""
    first = next((headers[f] for f in train if not isinstance(headers[f], str)), None)
    if first is None:
        raise DataError(f"{printable(path)}: no training image can be read (the first, "
                        f"{printable(train[0])}, {headers[train[0]]})")
    height, width = (first.height, first.width) if image_size is None else \
        (int(s) for s in image_size)
    return (height, width, first.channels)


def _leave_out(path: Path, bad: dict, total: int, bad_images: str) -> None:
    """Refuses the folder (``refuse``) or warns (``skip``), naming the first bad files."""
    named = "; ".join(f"{printable(Path(f).relative_to(path))} {why}"
                      for f, why in list(bad.items())[:SHOWN])
    more = f"; and {len(bad) - SHOWN} more" if len(bad) > SHOWN else ""
    count = f"{len(bad)} of the {total} images in {printable(path)}"
    if bad_images == "skip":
        warnings.warn(f"leaving out {count} that cannot be used: {named}{more}", DataWarning,
                      stacklevel=3)
        return
    raise DataError(f"{count} cannot be used: {named}{more}. Replace or remove them, or pass "
                    "--bad-images skip to train without them")


def _keep(files: list, labels, bad: dict):
    keep = [i for i, f in enumerate(files) if f not in bad]
    return [files[i] for i in keep], None if labels is None else labels[keep]


def load_folder(path: Path, image_size=None, bad_images: str = "refuse") -> FolderDataSet:
    """A :class:`FolderDataSet` of the images under ``path`` (see the module docstring).

    Args:
      path: the folder.
      image_size: ``(H, W)`` to resize to (default: the first training image's size).
      bad_images: ``"refuse"`` (a DataError naming the files that cannot be used) or
        ``"skip"`` (leave them out with a :class:`tfvae.errors.DataWarning`).
    """
    if bad_images not in ("refuse", "skip"):
        raise ConfigError(f"unknown bad_images {bad_images!r}; choose refuse or skip")
    train, y_train, test, y_test, classes = _layout(path)
    files = train + (test or [])
    headers = {f: image_checks.read_header(f) for f in files}
    shape = _shape(path, train, headers, image_size)
    bad = image_checks.find_bad(files, headers, shape)
    if bad:
        _leave_out(path, bad, len(files), bad_images)
        train, y_train = _keep(train, y_train, bad)
        if test is not None:
            test, y_test = _keep(test, y_test, bad)
    if test is None:
        if len(train) < 2:
            raise DataError(f"{printable(path)} holds {len(train)} usable image; give at least "
                            "two (train and test)")
        order = np.random.default_rng(SPLIT_SEED).permutation(len(train))
        n_train = max(1, (9 * len(train)) // 10)
        test = [train[i] for i in order[n_train:]]
        y_test = None if y_train is None else y_train[order[n_train:]]
        y_train = None if y_train is None else y_train[order[:n_train]]
        train = [train[i] for i in order[:n_train]]
    for name, split in (("training", train), ("test", test)):
        if not split:
            raise DataError(f"{printable(path)}: no usable {name} image is left")
    return FolderDataSet(printable(path), train, test, y_train, y_test, shape, classes)
