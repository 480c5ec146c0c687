"""Loading a data set by name or by path (the one entry point).

Local names and paths go to :mod:`tfvae.data.sources`, every other name to
TensorFlow Datasets (:mod:`tfvae.data.tfds`, offline first, failing fast).
"""

from __future__ import annotations

import os
from pathlib import Path

from tfvae.data import folders, sources, tfds
from tfvae.data.folders import FolderDataSet
from tfvae.data.sources import DataSet
from tfvae.errors import DataError


def load_dataset(
    name: str | None = None,
    data_dir: str | os.PathLike | None = None,
    tfds_data_dir: str | os.PathLike | None = None,
    reachability_timeout: float = 3.0,
    image_size=None,
    bad_images: str = "refuse",
) -> DataSet | FolderDataSet:
    """Loads a data set by name or from a path.

    Args:
        name: ``"mnist-10k"`` (embedded, the default), ``"digits"`` (scikit-learn),
            or a TFDS name such as ``"fashion_mnist"``. Must be None when
            ``data_dir`` is given.
        data_dir: A directory of MNIST-format IDX ``.gz`` files, a folder of
            PNG/JPEG images (read file by file: a :class:`FolderDataSet`), a
            ``.npz`` file (``x_train``, ``x_test``, optional ``y_train``,
            ``y_test``) or a ``.npy`` file (one array, first 90% of rows train,
            the rest test).
        tfds_data_dir: TFDS data directory (TFDS's default when None).
        reachability_timeout: Seconds to wait for the TFDS download host before
            failing when a TFDS data set is not prepared locally.
        image_size: ``(H, W)`` images of a folder are resized to (default:
            the first image's size).
        bad_images: what to do with files of a folder that cannot be read or
            decoded (every file is checked here): ``"refuse"`` (a DataError
            naming them) or ``"skip"`` (left out, with a warning).

    Returns:
        The :class:`DataSet`.

    Raises:
        DataError: The data set is unknown, missing, unreadable or unusable; the
            message says what to do.
    """
    if name is not None and data_dir is not None:
        raise DataError(
            f"give either a data set name ({name!r}) or a data directory ({data_dir}), "
            "not both"
        )
    if data_dir is not None:
        path = Path(os.fspath(data_dir)).expanduser()
        if path.is_dir() and not sources.has_idx_files(path) and folders.is_image_folder(path):
            return folders.load_folder(path, image_size, bad_images)
        return sources.load_path(path)
    if name is None or name == sources.EMBEDDED:
        return sources.load_embedded()
    if name == "digits":
        return sources.load_digits()
    if not isinstance(name, str) or not name.strip():
        raise DataError(f"invalid data set name {name!r}; local data sets: "
                        f"{sources.LOCAL_DATASETS}")
    return tfds.load(name, tfds_data_dir, reachability_timeout)
