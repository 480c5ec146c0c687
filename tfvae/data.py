"""Data sets, binarization, train/validation/test splits and tf.data pipelines.

Everything a model sees goes through this module:

* :func:`load_dataset` returns a :class:`DataSet` of *raw* values (uint8 pixels,
  sklearn digits 0..16, or floats) from the embedded ``mnist-10k`` set, sklearn's
  ``digits``, a user path (a directory of MNIST-format IDX ``.gz`` files, a
  ``.npz`` or a ``.npy``) or TensorFlow Datasets.
* :func:`prepare` turns a :class:`DataSet` into :class:`Splits`: a training
  array the pipelines process, and fixed, already processed validation
  (float32) and test (uint8 bits when binarized, float32 otherwise) arrays
  that are never resampled.
* :func:`make_block_pipeline` builds the default training pipeline: blocks of
  :data:`BLOCK_STEPS` batches that a model trains on in one compiled loop,
  from one (bit-packed, for bits) tensor copy of the rows;
  :func:`make_pipeline` the per-batch one (multi-replica strategies).

Static binarization follows the shared benchmark protocol
(``shared/bench/bindata.py``) bit for bit: pixels scaled by
``x.astype(float32) / 255.0``, then ``numpy.random.default_rng(seed).random(shape)
< x`` over the whole split in file order, seed 0 for training and seed 1 for test.

Only numpy and the standard library are imported at module level, so that
``import tfvae.data`` stays fast; TensorFlow, TensorFlow Datasets and
scikit-learn are imported inside the functions that need them.
"""

from __future__ import annotations

import functools
import gzip
import lzma
import math
import os
import socket
import struct
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tfvae.errors import ConfigError, DataError

BINARIZE_MODES = ("none", "static", "dynamic", "threshold")
#: Values of :attr:`Splits.train_mode`: the binarize modes plus ``dequantize``.
TRAIN_MODES = BINARIZE_MODES + ("dequantize",)
#: Training modes that draw fresh randomness for every batch.
SEEDED_MODES = ("dynamic", "dequantize")
#: Training modes whose rows are already bits {0, 1}.
BIT_MODES = ("static", "threshold")
LIKELIHOODS = ("bernoulli", "gaussian")
EMBEDDED = "mnist-10k"
LOCAL_DATASETS = ("mnist-10k", "digits")
#: TFDS data sets known to hold single-channel images (any other name is still
#: tried as a TFDS name; colour data sets are refused when loaded).
TFDS_DATASETS = ("mnist", "fashion_mnist", "binarized_mnist", "kmnist", "emnist")

#: Rows of a t10k-only IDX set (and of the embedded ``mnist-10k``) used for
#: training; the rest is the test split (the bindata rule).
SPLIT_10K = 9000
#: Fraction of rows used for training when a single array is split by order.
TRAIN_FRACTION_NUM, TRAIN_FRACTION_DEN = 9, 10
#: Seeds of the static protocol (bindata): training split 0, test split 1.
TRAIN_SEED, TEST_SEED = 0, 1
#: Offset added to ``prepare``'s seed for the validation-row permutation.
VAL_SEED_OFFSET = 12345
#: Host probed before TFDS tries to download anything (it retries for minutes).
TFDS_HOST = ("storage.googleapis.com", 443)

_DATASETS_DIR = Path(__file__).resolve().parent / "datasets"
_EMBEDDED_FILES = ("mnist-10k-images.idx.xz", "mnist-10k-labels.idx.xz")
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_OFFLINE_OPTIONS = (
    "Offline options: '--dataset mnist-10k' (embedded MNIST test set, 9,000/1,000), "
    "'--dataset digits' (scikit-learn 8x8 digits), '--data-dir PATH' (a directory of "
    "MNIST-format IDX .gz files such as /usr/share/datasets/fashion-mnist from Debian's "
    "dataset-fashion-mnist package, a .npz with x_train/x_test, or a .npy), or prepare "
    "the TFDS data set on a connected machine and point '--tfds-data-dir' at a copy of "
    "its data directory."
)


# --------------------------------------------------------------------------- data set


@dataclass
class DataSet:
    """Raw data, flattened to rows, with what is needed to scale them.

    Attributes:
        name: ``"mnist-10k"``, ``"digits"``, a TFDS name, or the path given as data dir.
        x_train: ``(N, D)`` raw training values: uint8 or float32.
        x_test: ``(M, D)`` raw test values, same dtype as ``x_train``.
        y_train: ``(N,)`` integer labels, or None.
        y_test: ``(M,)`` integer labels, or None.
        image_shape: ``(H, W)`` with ``H * W == D`` (single channel only).
        levels: Number of discrete values: 256 for uint8 pixels, 17 for sklearn
            digits (0..16), 2 for binary data, None for continuous floats.
    """

    name: str
    x_train: np.ndarray
    x_test: np.ndarray
    y_train: np.ndarray | None
    y_test: np.ndarray | None
    image_shape: tuple
    levels: int | None

    @property
    def dim(self) -> int:
        """Number of values per example (``H * W``)."""
        return int(self.x_train.shape[1])

    def scaled(self, x: np.ndarray) -> np.ndarray:
        """Scales raw values of this data set to their natural [0, 1] scale.

        Args:
            x: Raw values (any shape) of this data set.

        Returns:
            float32 array: ``x.astype(float32) / (levels - 1)`` for discrete data
            (``/ 255.0`` for uint8 pixels, exactly as bindata; ``/ 16`` for digits;
            ``/ 1`` for binary data), floats unchanged (cast to float32).
        """
        return _scale(x, self.levels)


def _scale(x: np.ndarray, levels: int | None) -> np.ndarray:
    """float32 scaling shared by DataSet.scaled, prepare and as_float."""
    x = np.asarray(x)
    if levels is None or levels == 2:
        return x.astype(np.float32, copy=False)
    # float32 array / Python float stays float32 (NEP 50): the same operation and
    # rounding as bindata's ``x.astype(np.float32) / 255.0``.
    return x.astype(np.float32) / float(levels - 1)


def as_float(x: np.ndarray, levels: int | None = None) -> np.ndarray:
    """Returns ``x`` as float32, scaled by ``1 / (levels - 1)`` for discrete levels > 2.

    Args:
        x: Array, e.g. uint8 bits {0, 1} or raw uint8 pixels.
        levels: None or 2 for values already in their natural scale (bits are
            simply cast), 256 for uint8 pixels, 17 for digits.

    Returns:
        float32 array of the same shape.
    """
    return _scale(x, levels)


# --------------------------------------------------------------------------- loaders


def load_dataset(
    name: str | None = None,
    data_dir: str | os.PathLike | None = None,
    tfds_data_dir: str | os.PathLike | None = None,
    reachability_timeout: float = 3.0,
) -> DataSet:
    """Loads a data set by name or from a path.

    Args:
        name: ``"mnist-10k"`` (embedded, the default), ``"digits"`` (scikit-learn),
            or a TFDS name such as ``"fashion_mnist"``. Must be None when
            ``data_dir`` is given.
        data_dir: A directory of MNIST-format IDX ``.gz`` files, a ``.npz`` file
            (``x_train``, ``x_test``, optional ``y_train``, ``y_test``) or a
            ``.npy`` file (one array, first 90% of rows train, the rest test).
        tfds_data_dir: TFDS data directory (TFDS's default when None).
        reachability_timeout: Seconds to wait for the TFDS download host before
            failing when a TFDS data set is not prepared locally.

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
        return _load_path(Path(os.fspath(data_dir)).expanduser())
    if name is None or name == EMBEDDED:
        return _load_embedded()
    if name == "digits":
        return _load_digits()
    if not isinstance(name, str) or not name.strip():
        raise DataError(f"invalid data set name {name!r}; local data sets: {LOCAL_DATASETS}")
    return _load_tfds(name, tfds_data_dir, reachability_timeout)


def _load_embedded() -> DataSet:
    """The MNIST t10k set shipped with tfvae: first 9,000 train, last 1,000 test."""
    blobs = []
    for filename in _EMBEDDED_FILES:
        path = _DATASETS_DIR / filename
        try:
            blobs.append(lzma.decompress(path.read_bytes()))
        except (OSError, lzma.LZMAError) as e:
            raise DataError(
                f"the embedded data file {path} is missing or corrupt ({e}); "
                "reinstall tfvae or use --data-dir"
            ) from e
    x = _parse_idx(blobs[0], str(_DATASETS_DIR / _EMBEDDED_FILES[0]))
    y = _parse_idx(blobs[1], str(_DATASETS_DIR / _EMBEDDED_FILES[1]))
    _check_label_count(x, y, _EMBEDDED_FILES[0], _EMBEDDED_FILES[1])
    return _from_arrays(EMBEDDED, x[:SPLIT_10K], x[SPLIT_10K:], y[:SPLIT_10K], y[SPLIT_10K:])


def _load_digits() -> DataSet:
    """scikit-learn's 8x8 digits (1,797 images, values 0..16), split 90/10 by order.

    The first ``floor(0.9 * N)`` rows (1,617) are the training split, the last
    180 the test split. Raw values are kept as float32 0..16 with ``levels=17``.
    """
    from sklearn.datasets import load_digits  # lazy: sklearn is slow to import

    bunch = load_digits()
    x = bunch.data.astype(np.float32)
    y = bunch.target.astype(np.int64)
    n_train = _train_rows(len(x))
    return DataSet(
        name="digits",
        x_train=x[:n_train],
        x_test=x[n_train:],
        y_train=y[:n_train],
        y_test=y[n_train:],
        image_shape=(8, 8),
        levels=17,
    )


def _train_rows(n: int) -> int:
    """Rows of the training split when one array is split by order: floor(90%)."""
    return (TRAIN_FRACTION_NUM * n) // TRAIN_FRACTION_DEN


def _load_path(path: Path) -> DataSet:
    if not path.exists():
        raise DataError(
            f"data path {path} does not exist; give a directory of MNIST-format IDX .gz "
            "files, a .npz or a .npy file"
        )
    if path.is_dir():
        return _load_idx_dir(path)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return _load_npz(path)
    if suffix == ".npy":
        return _load_npy(path)
    raise DataError(
        f"unsupported data file {path} (extension {suffix or 'none'!r}); give a directory "
        "of MNIST-format IDX .gz files, a .npz (x_train, x_test, optional y_train, y_test) "
        "or a .npy (one array, split 90/10 by order)"
    )


def _parse_idx(data: bytes, source: str) -> np.ndarray:
    """Parses an IDX blob (header + unsigned bytes), checking magic, type and size."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(
            f"{source} is not an IDX file (bad magic number {data[:4].hex() or 'empty'}); "
            "expected MNIST-format IDX data"
        )
    dtype_code, ndim = data[2], data[3]
    if dtype_code != 0x08:
        raise DataError(
            f"{source} holds IDX type 0x{dtype_code:02x}; only unsigned bytes (0x08) "
            "are supported"
        )
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise DataError(f"{source} has a truncated or invalid IDX header")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = math.prod(dims)
    if len(data) - header != expected:
        raise DataError(
            f"{source} holds {len(data) - header} bytes of data but its IDX header "
            f"declares shape {dims} ({expected} bytes); the file is truncated or corrupt"
        )
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


def _read_idx_gz(path: Path) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(
            f"cannot read {path}: truncated or corrupt gzip file ({e}); download it again"
        ) from e
    return _parse_idx(data, str(path))


def _check_label_count(x: np.ndarray, y: np.ndarray, x_name, y_name) -> None:
    if y.ndim != 1:
        raise DataError(f"{y_name} holds an array of shape {y.shape}; labels must be 1-D")
    if len(y) != len(x):
        raise DataError(
            f"{y_name} holds {len(y)} labels but {x_name} holds {len(x)} images; "
            "the counts must match"
        )


def _load_idx_dir(path: Path) -> DataSet:
    """Loads MNIST-format IDX files; a t10k-only directory is split by file order.

    The split rule for a t10k-only directory is bindata's: the first 9,000 images
    train, the rest test. With 9,000 images or fewer (not a bindata set), the
    first ``floor(90%)`` train instead, so that the test split is not empty.
    """

    def load_pair(split):
        images, labels = (path / f for f in _IDX_FILES[split])
        x = _read_idx_gz(images)
        y = None
        if labels.exists():
            y = _read_idx_gz(labels)
            _check_label_count(x, y, images, labels)
        return x, y

    have = {split: (path / _IDX_FILES[split][0]).exists() for split in _IDX_FILES}
    if not have["test"]:
        expected = ", ".join(f for pair in _IDX_FILES.values() for f in pair)
        raise DataError(
            f"directory {path} holds no MNIST-format IDX files; expected {expected} "
            "(labels optional; the train files may be absent, then the t10k set is split "
            "9,000/rest); or give a .npz or .npy file"
        )
    x_test, y_test = load_pair("test")
    if have["train"]:
        x_train, y_train = load_pair("train")
    else:
        n = len(x_test)
        n_train = SPLIT_10K if n > SPLIT_10K else _train_rows(n)
        x_train, x_test = x_test[:n_train], x_test[n_train:]
        if y_test is not None:
            y_train, y_test = y_test[:n_train], y_test[n_train:]
        else:
            y_train = None
    return _from_arrays(str(path), x_train, x_test, y_train, y_test)


def _np_load(path: Path):
    try:
        # allow_pickle=False: an object array is refused, never unpickled.
        return np.load(path, allow_pickle=False)
    except ValueError as e:
        raise DataError(
            f"{path} holds a pickled/object array ({e}); tfvae never unpickles data: "
            "save plain numeric arrays"
        ) from e
    except Exception as e:  # zipfile/OSError/EOFError/...: all "unreadable"
        raise DataError(f"cannot read {path}: {e}") from e


def _load_npz(path: Path) -> DataSet:
    archive = _np_load(path)
    with archive:
        keys = sorted(archive.files)
        missing = [k for k in ("x_train", "x_test") if k not in keys]
        if missing:
            raise DataError(
                f"{path} lacks {', '.join(missing)}; found keys {keys}. Save the data "
                "with np.savez(path, x_train=..., x_test=..., y_train=..., y_test=...)"
            )
        arrays = {}
        for key in ("x_train", "x_test", "y_train", "y_test"):
            if key in keys:
                try:
                    arrays[key] = archive[key]
                except ValueError as e:
                    raise DataError(
                        f"{path}: array {key!r} is a pickled/object array ({e}); tfvae "
                        "never unpickles data: save plain numeric arrays"
                    ) from e
                except Exception as e:  # corrupt member
                    raise DataError(f"cannot read array {key!r} of {path}: {e}") from e
    return _from_arrays(
        str(path),
        arrays["x_train"],
        arrays["x_test"],
        arrays.get("y_train"),
        arrays.get("y_test"),
    )


def _load_npy(path: Path) -> DataSet:
    x = _np_load(path)
    if not isinstance(x, np.ndarray) or x.ndim < 2:
        raise DataError(
            f"{path} holds an array of shape {getattr(x, 'shape', None)}; expected "
            "(N, D), (N, H, W) or (N, H, W, 1) images"
        )
    n_train = _train_rows(len(x))
    return _from_arrays(str(path), x[:n_train], x[n_train:], None, None)


def _image_shape(shape: tuple, source: str) -> tuple:
    """(H, W) for an array shape (N, D), (N, H, W) or (N, H, W, 1)."""
    if len(shape) == 2:
        d = shape[1]
        side = math.isqrt(d)
        return (side, side) if side * side == d else (1, d)
    if len(shape) == 3:
        return tuple(shape[1:])
    if len(shape) == 4:
        if shape[3] != 1:
            raise DataError(
                f"{source} holds images with {shape[3]} channels (shape {shape}); only "
                "single-channel (grayscale) images are supported"
            )
        return tuple(shape[1:3])
    raise DataError(
        f"{source} holds an array of shape {shape}; expected (N, D), (N, H, W) or "
        "(N, H, W, 1)"
    )


def _convert(x: np.ndarray, source: str) -> np.ndarray:
    """Returns uint8 for integer/bool data in 0..255, float32 for floats."""
    if x.dtype == np.uint8:
        return x
    if x.dtype == np.bool_:
        return x.astype(np.uint8)
    if np.issubdtype(x.dtype, np.integer):
        if x.size and (x.min() < 0 or x.max() > 255):
            raise DataError(
                f"{source} holds integers in {x.min()}..{x.max()}; integer data must be "
                "pixel values in 0..255 (or give floats)"
            )
        return x.astype(np.uint8)
    if np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32, copy=False)
        if not np.all(np.isfinite(x)):
            raise DataError(f"{source} holds NaN or infinite values; clean the data first")
        return x
    raise DataError(f"{source} holds {x.dtype} values; expected integer or float pixels")


def _is_binary(x: np.ndarray) -> bool:
    if x.dtype == np.uint8:
        return bool(x.size == 0 or x.max() <= 1)
    return bool(np.all((x == 0) | (x == 1)))


def _labels(y, n: int, source: str, key: str) -> np.ndarray | None:
    if y is None:
        return None
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != n:
        raise DataError(
            f"{source}: {key} has shape {y.shape} but there are {n} images; labels must "
            "be one integer per image"
        )
    if not (np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_):
        raise DataError(f"{source}: {key} holds {y.dtype} values; labels must be integers")
    return y.astype(np.int64)


def _from_arrays(source: str, x_train, x_test, y_train, y_test) -> DataSet:
    """Validates and flattens raw arrays into a DataSet (levels 256, 2 or None)."""
    x_train, x_test = np.asarray(x_train), np.asarray(x_test)
    shapes = {}
    for key, x in (("x_train", x_train), ("x_test", x_test)):
        if x.ndim < 1 or len(x) == 0:
            raise DataError(
                f"{source}: {key} is empty (shape {x.shape}); the training and test "
                "splits need at least one example each"
            )
        shapes[key] = _image_shape(x.shape, f"{source} ({key})")
    if shapes["x_train"] != shapes["x_test"]:
        raise DataError(
            f"{source}: training images have shape {shapes['x_train']} but test images "
            f"{shapes['x_test']}; they must match"
        )
    image_shape = tuple(int(s) for s in shapes["x_train"])
    dim = image_shape[0] * image_shape[1]
    x_train = _convert(x_train.reshape(len(x_train), dim), f"{source} (x_train)")
    x_test = _convert(x_test.reshape(len(x_test), dim), f"{source} (x_test)")
    if x_train.dtype != x_test.dtype:
        # One split integer, the other float: compare on the float scale.
        x_train, x_test = x_train.astype(np.float32), x_test.astype(np.float32)
    if _is_binary(x_train) and _is_binary(x_test):
        # Already-binary data (e.g. TFDS binarized_mnist, or 0/1 floats): levels 2,
        # so they are used as bits and never divided by 255.
        levels = 2
    elif x_train.dtype == np.uint8:
        levels = 256
    else:
        levels = None
    return DataSet(
        name=source,
        x_train=x_train,
        x_test=x_test,
        y_train=_labels(y_train, len(x_train), source, "y_train"),
        y_test=_labels(y_test, len(x_test), source, "y_test"),
        image_shape=image_shape,
        levels=levels,
    )


# --------------------------------------------------------------------------- TFDS


def _host_reachable(timeout: float, host: tuple | None = None) -> bool:
    """True when a TCP connection to ``host`` opens within ``timeout`` seconds.

    The connect runs in a daemon thread so that a hanging DNS lookup (which
    ``socket``'s timeout does not bound) cannot delay the answer either.
    """
    host = host or TFDS_HOST
    result = []

    def probe():
        try:
            with socket.create_connection(host, timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(result and result[0])


def _load_tfds(name: str, tfds_data_dir, timeout: float) -> DataSet:
    """Loads a TFDS data set offline when prepared, else downloads it if reachable."""
    try:
        import tensorflow_datasets as tfds  # lazy: heavy, pulls TensorFlow in
    except ImportError as e:
        raise DataError(
            f"data set {name!r} needs tensorflow-datasets, which is not installed ({e}). "
            + _OFFLINE_OPTIONS
        ) from e

    data_dir = None if tfds_data_dir is None else os.fspath(tfds_data_dir)
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
        raise DataError(
            f"unknown data set {name!r}: not a local data set {LOCAL_DATASETS} nor a TFDS "
            f"data set (known grayscale TFDS sets: {', '.join(TFDS_DATASETS)}); "
            "or use --data-dir PATH"
        ) from e
    except Exception as e:  # bad config names, kwargs, ...
        raise DataError(f"cannot use TFDS data set {name!r}: {e}") from e

    if not builder.is_prepared():
        where = builder.data_dir
        # Probe the download host first: TFDS itself retries for minutes offline.
        if not _host_reachable(timeout):
            raise DataError(
                f"TFDS data set {name!r} is not prepared in {where} and the network is "
                f"unreachable ({TFDS_HOST[0]}:{TFDS_HOST[1]} could not be reached within "
                f"{timeout:g} s). " + _OFFLINE_OPTIONS
            )
        try:
            builder.download_and_prepare()
        except Exception as e:  # network/disk errors of many kinds
            raise DataError(
                f"could not download and prepare TFDS data set {name!r} into {where}: "
                f"{e}. " + _OFFLINE_OPTIONS
            ) from e

    if "image" not in builder.info.features:
        raise DataError(f"TFDS data set {name!r} has no 'image' feature; it is not images")
    arrays = {}
    for split in ("train", "test"):
        try:
            # Fixed-size batches rather than batch_size=-1 (one batch of the whole
            # split): same result, and it does not rely on the split's recorded size.
            batches = list(tfds.as_numpy(builder.as_dataset(split=split, batch_size=8192)))
        except Exception as e:  # unknown split, unreadable records, ...
            raise DataError(
                f"cannot read split {split!r} of TFDS data set {name!r} from "
                f"{builder.data_dir}: {e}; tfvae needs 'train' and 'test' splits"
            ) from e
        if not batches:
            raise DataError(f"split {split!r} of TFDS data set {name!r} is empty")
        x = np.concatenate([b["image"] for b in batches])
        y = np.concatenate([b["label"] for b in batches]) if "label" in batches[0] else None
        arrays[split] = (x, y)
    return _from_arrays(
        name, arrays["train"][0], arrays["test"][0], arrays["train"][1], arrays["test"][1]
    )


# --------------------------------------------------------------------------- binarization


def _chunks(n: int, chunk_rows: int):
    if chunk_rows < 1:
        raise ConfigError(f"chunk_rows must be at least 1, got {chunk_rows}")
    for start in range(0, n, chunk_rows):
        yield start, min(start + chunk_rows, n)


def _default_scale(x: np.ndarray) -> np.ndarray:
    # uint8 pixels -> bindata's x.astype(float32) / 255.0; anything else as float32.
    return _scale(x, 256 if x.dtype == np.uint8 else None)


def binarize_static(
    x: np.ndarray,
    seed: int,
    scale_fn: Callable[[np.ndarray], np.ndarray] | None = None,
    chunk_rows: int = 4096,
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """Statically binarizes a split: bit-identical to bindata's ``load_split``.

    bindata computes ``default_rng(seed).random(x.shape) < x_scaled`` over the whole
    split. PCG64's ``random()`` draws one 64-bit output per double, sequentially,
    so drawing ``rng.random((r, D))`` chunk after chunk in row order yields the
    same numbers; only one chunk of float64 noise and scaled values exists at a time.

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
    x = np.asarray(x)
    rng = np.random.default_rng(seed)
    keep = None if rows is None else np.asarray(rows, dtype=np.int64)
    out = np.empty((len(x) if keep is None else len(keep),) + x.shape[1:], np.uint8)
    filled = 0
    for start, stop in _chunks(len(x), chunk_rows):
        noise = rng.random((stop - start,) + x.shape[1:])
        if keep is None:
            out[start:stop] = noise < scale_fn(x[start:stop])
            continue
        local = keep[(keep >= start) & (keep < stop)] - start
        if len(local):
            out[filled:filled + len(local)] = noise[local] < scale_fn(x[start + local])
            filled += len(local)
    return out


def binarize_threshold(x_scaled: np.ndarray) -> np.ndarray:
    """Deterministic binarization: 1 where ``x_scaled > 0.5`` (strictly), else 0.

    Args:
        x_scaled: Values in their natural [0, 1] scale.

    Returns:
        uint8 array of {0, 1}, same shape.
    """
    return (np.asarray(x_scaled) > 0.5).astype(np.uint8)


def dequantize_static(
    x: np.ndarray,
    seed: int,
    levels: int,
    chunk_rows: int = 4096,
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """Dequantizes discrete values once, with fixed noise: ``(x + u) / levels``.

    ``u`` is ``default_rng(seed).random`` drawn over the whole split in row order
    (chunked like :func:`binarize_static`), so ``rows`` selects rows of the
    full-split result.

    Args:
        x: Raw integer-valued split (uint8 pixels or digits 0..16).
        seed: Noise seed.
        levels: Number of discrete values (256, 17, ...).
        chunk_rows: Rows per chunk; does not change the result.
        rows: Optional sorted row indices to keep.

    Returns:
        float32 array in [0, 1].
    """
    x = np.asarray(x)
    rng = np.random.default_rng(seed)
    keep = None if rows is None else np.asarray(rows, dtype=np.int64)
    out = np.empty((len(x) if keep is None else len(keep),) + x.shape[1:], np.float32)
    filled = 0
    for start, stop in _chunks(len(x), chunk_rows):
        noise = rng.random((stop - start,) + x.shape[1:])
        if keep is None:
            out[start:stop] = (x[start:stop] + noise) / levels
            continue
        local = keep[(keep >= start) & (keep < stop)] - start
        if len(local):
            out[filled:filled + len(local)] = (x[start + local] + noise[local]) / levels
            filled += len(local)
    return out


# --------------------------------------------------------------------------- splits


@dataclass
class Splits:
    """Training, validation and test data, ready for a model.

    Attributes:
        train: Array the training pipeline consumes per batch, interpreted by
            ``train_mode``: uint8 bits for ``static``/``threshold``, raw values
            (uint8 or float32) for ``dynamic``/``dequantize``/``none``.
        val: Fixed float32 validation rows (already binarized/dequantized/scaled,
            never resampled), or None.
        test: Fixed test rows, processed the same way: uint8 bits {0, 1} in the
            binarizing modes (a quarter of the memory of float32), float32
            otherwise. Use :func:`as_float` for a float32 copy.
        y_train: Labels of ``train`` rows, or None.
        y_val: Labels of ``val`` rows, or None.
        y_test: Labels of ``test`` rows, or None.
        train_mode: What the pipeline does per batch: ``static``, ``threshold``
            (cast bits), ``dynamic`` (resample bits), ``dequantize`` (add uniform
            noise) or ``none`` (scale).
        levels: Levels of ``train`` as the pipeline must read it (2 for bits,
            256 for uint8 pixels, 17 for digits, None for floats).
        image_shape: ``(H, W)``.
        train_index: Row indices of ``train`` in the data set's training split.
        val_index: Row indices of ``val`` in the data set's training split, or None.
    """

    train: np.ndarray
    val: np.ndarray | None
    test: np.ndarray
    y_train: np.ndarray | None
    y_val: np.ndarray | None
    y_test: np.ndarray | None
    train_mode: str
    levels: int | None
    image_shape: tuple
    train_index: np.ndarray | None = field(default=None, repr=False)
    val_index: np.ndarray | None = field(default=None, repr=False)


def _val_rows(n: int, val_fraction: float, seed: int):
    """Sorted (train_rows, val_rows) of a seeded random validation subset."""
    if not isinstance(val_fraction, (int, float)) or not 0.0 <= val_fraction < 1.0:
        raise ConfigError(
            f"validation fraction must be in [0, 1), got {val_fraction!r}; "
            "use e.g. --val-fraction 0.05, or 0 for no validation set"
        )
    n_val = math.floor(val_fraction * n)
    if val_fraction > 0 and n_val < 1:
        raise ConfigError(
            f"validation fraction {val_fraction} of {n} training examples leaves no "
            "validation example; use a larger fraction or 0"
        )
    if n - n_val < 1:
        raise ConfigError(
            f"validation fraction {val_fraction} leaves no training example out of {n}"
        )
    if n_val == 0:
        return np.arange(n), None
    perm = np.random.default_rng(seed + VAL_SEED_OFFSET).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def _resolve_mode(ds: DataSet, likelihood: str, binarize: str | None) -> str:
    if likelihood not in LIKELIHOODS:
        raise ConfigError(f"unknown likelihood {likelihood!r}; choose one of {LIKELIHOODS}")
    if binarize is not None and binarize not in BINARIZE_MODES:
        raise ConfigError(f"unknown binarize mode {binarize!r}; choose one of {BINARIZE_MODES}")
    discrete = ds.levels is not None and ds.levels > 2
    if binarize is None:
        if likelihood == "bernoulli":
            binarize = "none" if ds.levels == 2 else "dynamic"
        else:
            binarize = "none"
    if binarize == "none" and likelihood == "gaussian" and discrete:
        # Discrete pixels under a continuous density: dequantize (x + u) / levels.
        return "dequantize"
    if binarize == "none" and ds.levels == 2:
        return "none"
    if binarize in ("none", "dynamic", "static") and ds.levels is None:
        # Float data must be probabilities to be Bernoulli targets or binarized.
        lo = min(float(ds.x_train.min()), float(ds.x_test.min()))
        hi = max(float(ds.x_train.max()), float(ds.x_test.max()))
        if lo < 0.0 or hi > 1.0:
            if binarize == "none" and likelihood == "bernoulli":
                raise DataError(
                    f"{ds.name}: values span {lo:g}..{hi:g}, outside [0, 1], so they "
                    "cannot be Bernoulli targets; use --binarize threshold or "
                    "--likelihood gaussian"
                )
            if binarize != "none":
                raise DataError(
                    f"{ds.name}: values span {lo:g}..{hi:g}, outside [0, 1], so they "
                    f"cannot be binarized as probabilities (--binarize {binarize}); use "
                    "--binarize threshold or --likelihood gaussian with --binarize none"
                )
    return binarize


def prepare(
    ds: DataSet,
    likelihood: str = "bernoulli",
    binarize: str | None = None,
    val_fraction: float = 0.05,
    seed: int = 0,
) -> Splits:
    """Binarizes/dequantizes a data set and carves a fixed validation subset.

    Modes (``binarize`` None picks ``dynamic`` for Bernoulli on non-binary data,
    ``none`` for binary data or a Gaussian likelihood):

    * ``static``: training split binarized with seed 0 and test with seed 1 in file
      order (bindata), before the validation rows are taken from the training bits.
    * ``dynamic``: training rows stay raw and are resampled per batch; validation
      rows get the static seed-0 bits of those rows, test the static seed-1 bits.
    * ``threshold``: ``scaled > 0.5`` everywhere.
    * ``none``: scaled values (Bernoulli needs them in [0, 1]). With a Gaussian
      likelihood and discrete data (uint8, digits) this becomes ``dequantize``:
      training rows raw, noise ``(x + u) / levels`` per batch; test dequantized once
      with seed 1 and validation with the seed-0 noise of those rows.

    Args:
        ds: The data set.
        likelihood: ``"bernoulli"`` or ``"gaussian"``.
        binarize: One of :data:`BINARIZE_MODES`, or None for the default above.
        val_fraction: Fraction in [0, 1) of training rows held out for validation,
            chosen by ``default_rng(seed + 12345).permutation``; 0 for none.
        seed: Seed of the validation subset.

    Returns:
        The :class:`Splits`.

    Raises:
        ConfigError: Unknown likelihood/mode or an unusable validation fraction.
        DataError: Float data outside [0, 1] where probabilities are needed.
    """
    mode = _resolve_mode(ds, likelihood, binarize)
    train_idx, val_idx = _val_rows(len(ds.x_train), val_fraction, seed)
    x_train, x_test = ds.x_train, ds.x_test
    levels = ds.levels
    val = None

    def take(a, idx):
        return None if a is None or idx is None else a[idx]

    if mode == "static":
        # The whole split in file order first (bindata), then carve validation.
        bits = binarize_static(x_train, TRAIN_SEED, ds.scaled)
        train = bits if val_idx is None else bits[train_idx]
        val = None if val_idx is None else bits[val_idx].astype(np.float32)
        del bits
        test = binarize_static(x_test, TEST_SEED, ds.scaled)
        levels = 2
    elif mode == "dynamic":
        train = x_train[train_idx]
        if val_idx is not None:
            val = binarize_static(x_train, TRAIN_SEED, ds.scaled, rows=val_idx)
            val = val.astype(np.float32)
        test = binarize_static(x_test, TEST_SEED, ds.scaled)
    elif mode == "threshold":
        train = binarize_threshold(ds.scaled(x_train[train_idx]))
        val = None if val_idx is None else binarize_threshold(
            ds.scaled(x_train[val_idx])
        ).astype(np.float32)
        test = binarize_threshold(ds.scaled(x_test))
        levels = 2
    elif mode == "dequantize":
        train = x_train[train_idx]
        if val_idx is not None:
            val = dequantize_static(x_train, TRAIN_SEED, ds.levels, rows=val_idx)
        test = dequantize_static(x_test, TEST_SEED, ds.levels)
    else:  # "none"
        train = x_train[train_idx]
        val = None if val_idx is None else ds.scaled(x_train[val_idx])
        test = ds.scaled(x_test)
    return Splits(
        train=train,
        val=val,
        test=test,
        y_train=take(ds.y_train, train_idx),
        y_val=take(ds.y_train, val_idx),
        y_test=ds.y_test,
        train_mode=mode,
        levels=levels,
        image_shape=ds.image_shape,
        train_index=train_idx,
        val_index=val_idx,
    )


# --------------------------------------------------------------------------- pipeline


def _batch_transform(mode: str, levels: int | None):
    """``fn(rows, s)``: a gathered ``(b, D)`` slice -> float32, as ``mode`` says.

    ``s`` is an int64 scalar seed for the modes that draw noise (``dynamic`` bits,
    ``dequantize`` noise), ignored by the others.
    """
    import tensorflow as tf  # lazy: heavy

    scale = 1.0 if levels is None or levels < 2 else float(levels - 1)

    def to_float(b):
        b = tf.cast(b, tf.float32)
        return b if scale == 1.0 else b / scale

    if mode == "dynamic":

        def fn(b, s):
            p = to_float(b)
            u = tf.random.stateless_uniform(tf.shape(p), seed=tf.stack([s, 0]))
            return tf.cast(u < p, tf.float32)

    elif mode == "dequantize":
        levels_f = float(levels)

        def fn(b, s):
            b = tf.cast(b, tf.float32)
            u = tf.random.stateless_uniform(tf.shape(b), seed=tf.stack([s, 1]))
            return (b + u) / levels_f

    elif mode in BIT_MODES:

        def fn(b, s):
            return tf.cast(b, tf.float32)  # already bits {0, 1}: never rescaled

    else:

        def fn(b, s):
            return to_float(b)

    return fn


def make_pipeline(
    x: np.ndarray,
    mode: str,
    batch_size: int,
    levels: int | None,
    shuffle: bool,
    seed: int,
    drop_remainder: bool = False,
    repeat: bool = False,
):
    """Builds the ``tf.data`` pipeline of float32 ``(B, D)`` batches.

    Per-batch randomness (``dynamic`` bits, ``dequantize`` noise) uses
    ``tf.random.stateless_uniform`` seeded by an element of
    ``tf.data.Dataset.random(seed, rerandomize_each_iteration=True)`` zipped with
    the batches: each epoch (each new iterator, or each pass of ``repeat``) draws
    new bits, yet a fresh pipeline with the same seed reproduces the same epochs,
    independently of parallel map scheduling. Shuffling is seeded the same way.

    Args:
        x: Training rows (uint8 or float32), ``(N, D)``.
        mode: One of :data:`TRAIN_MODES` (usually ``Splits.train_mode``).
        batch_size: Rows per batch, at most ``N``.
        levels: ``Splits.levels`` (scaling: ``/ (levels - 1)``; ``dequantize``:
            ``(x + u) / levels``); None for floats.
        shuffle: Shuffle rows each epoch (buffer = all rows).
        seed: Seed of shuffling and of per-batch randomness.
        drop_remainder: Drop the last, smaller batch.
        repeat: Repeat forever (epochs reshuffled and resampled).

    Returns:
        A ``tf.data.Dataset`` of float32 batches.

    Raises:
        ConfigError: Unknown mode, bad batch size, or ``dequantize`` without levels.
    """
    import tensorflow as tf  # lazy: heavy

    if mode not in TRAIN_MODES:
        raise ConfigError(f"unknown pipeline mode {mode!r}; choose one of {TRAIN_MODES}")
    n = len(x)
    _check_batches(n, batch_size)
    if mode == "dequantize" and not levels:
        raise ConfigError("dequantize needs discrete data (levels), got levels=None")

    # One tensor copy of the rows; batches are gathered from it by shuffled
    # indices. Shuffling indices (8 bytes each) rather than rows avoids a
    # shuffle buffer holding a second copy of the data set, and gathering a
    # batch at once is much cheaper than slicing rows one by one.
    rows = tf.convert_to_tensor(x)
    ds = tf.data.Dataset.range(n)
    if shuffle:
        ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    if repeat:
        ds = ds.repeat()
    ds = ds.map(lambda i: tf.gather(rows, i))
    fn = _batch_transform(mode, levels)
    if mode in SEEDED_MODES:
        # One int64 per batch, new per iteration but reproducible for this seed.
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        ds = tf.data.Dataset.zip((ds, seeds))
    else:
        fn = functools.partial(fn, s=None)
    ds = ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


# --------------------------------------------------------------------------- fused blocks

#: Training steps that one element of a block pipeline holds: a model runs them
#: in one compiled loop (see ``LatentVariableModel.train_step``).
BLOCK_STEPS = 50


@dataclass
class BlockPipeline:
    """A repeating ``tf.data`` pipeline of training blocks and its epoch size.

    Each element is ``{"block": (K, B, D), "rows": n}``: ``K`` batches of ``B``
    rows, of which the first ``n`` (in row-major order) are real and the rest
    padding; for bits, ``{"bits": (K, B, ceil(D / 8)), "rows": n}`` with rows
    packed by :func:`pack_bits`, unpacked by the model a batch at a time.
    Every epoch is one fresh permutation of all rows cut into
    ``steps_per_epoch`` blocks; only an epoch's last block is short, so the
    batches are exactly those of a per-batch pipeline (``ceil(N / B)`` per
    epoch, the last one smaller when ``B`` does not divide ``N``).

    Attributes:
        dataset: Infinite dataset of block dicts (pass ``steps_per_epoch`` to fit).
        steps_per_epoch: Blocks per epoch.
        batches_per_epoch: Training steps per epoch, ``ceil(N / B)``.
        block_steps: ``K``, training steps per full block.
    """

    dataset: object
    steps_per_epoch: int
    batches_per_epoch: int
    block_steps: int


def _check_batches(n: int, batch_size) -> None:
    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) \
            or batch_size < 1:
        raise ConfigError(f"batch size must be a positive integer, got {batch_size!r}")
    if batch_size > n:
        raise ConfigError(
            f"batch size {batch_size} is larger than the {n} training examples; "
            f"use --batch-size <= {n}"
        )


def is_binary(x: np.ndarray, chunk_rows: int = 4096) -> bool:
    """Whether every value of ``x`` is 0 or 1 (checked chunk by chunk)."""
    x = np.asarray(x)
    if x.dtype == bool:
        return True
    return all(
        bool(np.all((c == 0) | (c == 1))) for c in (x[a:b] for a, b in _chunks(len(x), chunk_rows))
    )


def pack_bits(x: np.ndarray, chunk_rows: int = 8192) -> np.ndarray:
    """``np.packbits(x, axis=1)`` of a ``(N, D)`` array of bits, chunk by chunk.

    Eight pixels per byte: a binarized 60,000 x 784 split takes 5.9 MB instead
    of 47 MB. Works on any dtype holding only 0 and 1 without a full-size
    temporary.
    """
    x = np.asarray(x)
    out = np.empty((len(x), (x.shape[1] + 7) // 8), np.uint8)
    for start, stop in _chunks(len(x), chunk_rows):
        out[start:stop] = np.packbits(x[start:stop].astype(bool, copy=False), axis=1)
    return out


def unpack_bits(packed, width: int):
    """TensorFlow inverse of :func:`pack_bits`: ``(n, ceil(D/8))`` -> ``(n, D)`` uint8."""
    import tensorflow as tf  # lazy: heavy

    shifts = tf.constant([7, 6, 5, 4, 3, 2, 1, 0], tf.uint8)
    bits = tf.bitwise.bitwise_and(tf.bitwise.right_shift(packed[..., None], shifts), 1)
    bits = tf.reshape(bits, [tf.shape(packed)[0], packed.shape[-1] * 8])
    return bits[:, :width]


def make_block_pipeline(
    x: np.ndarray,
    mode: str,
    batch_size: int,
    levels: int | None,
    seed: int,
    shuffle: bool = True,
    block_steps: int = BLOCK_STEPS,
) -> BlockPipeline:
    """The fast training pipeline: blocks of ``block_steps`` batches per element.

    The rows are held once, as a tensor: bit-packed for the bit modes
    (``static``, ``threshold``), as given otherwise. Each epoch draws one
    permutation (``stateless_shuffle`` seeded by an element of
    ``Dataset.random(seed)``, so a pipeline with the same seed replays the same
    epochs), gathers a block of rows at a time and applies ``mode`` to it:
    bits stay packed (a model unpacks them), other modes give float32 with the
    per-block noise of ``dynamic``/``dequantize`` drawn from the same seeds.

    Args:
        x: Training rows ``(N, D)`` (``Splits.train``).
        mode: One of :data:`TRAIN_MODES`.
        batch_size: Rows per training step, at most ``N``.
        levels: ``Splits.levels``.
        seed: Seed of the permutations and of per-block noise.
        shuffle: Permute rows every epoch (otherwise file order).
        block_steps: Training steps per element (fewer when an epoch is shorter).

    Returns:
        A :class:`BlockPipeline`.
    """
    import tensorflow as tf  # lazy: heavy

    if mode not in TRAIN_MODES:
        raise ConfigError(f"unknown pipeline mode {mode!r}; choose one of {TRAIN_MODES}")
    x = np.asarray(x)
    if x.ndim != 2:
        raise ConfigError(f"training rows must be a (N, D) array, got shape {x.shape}")
    n, width = x.shape
    _check_batches(n, batch_size)
    if mode == "dequantize" and not levels:
        raise ConfigError("dequantize needs discrete data (levels), got levels=None")
    batches = -(-n // batch_size)
    steps = max(1, min(int(block_steps), batches))
    size = steps * batch_size
    blocks = -(-n // size)
    packed = mode in BIT_MODES
    rows = tf.convert_to_tensor(pack_bits(x) if packed else x)
    transform = _batch_transform(mode, levels)

    def epoch(s):
        order = tf.range(n, dtype=tf.int32)
        if shuffle:
            order = tf.random.experimental.stateless_shuffle(order, seed=tf.stack([s, 2]))
        # Padding indices point at row 0; they are never trained on.
        order = tf.reshape(tf.pad(order, [[0, blocks * size - n]]), [blocks, size])
        counts = tf.minimum(size, n - tf.range(blocks, dtype=tf.int32) * size)
        block_seeds = s * 100_003 + tf.range(blocks, dtype=tf.int64)
        return tf.data.Dataset.from_tensor_slices((order, counts, block_seeds))

    def gather(order, count, s):
        b = tf.gather(rows, order)
        if packed:  # the model unpacks a batch at a time, inside its compiled loop
            return {"bits": tf.reshape(b, [steps, batch_size, -1]), "rows": count}
        b = transform(b, s)
        return {"block": tf.reshape(b, [steps, batch_size, width]), "rows": count}

    ds = tf.data.Dataset.random(seed=seed).flat_map(epoch)
    ds = ds.map(gather).prefetch(2)
    return BlockPipeline(ds, blocks, batches, steps)

