"""Local data sets: the embedded MNIST digits, scikit-learn's digits, MNIST-format
IDX folders, ``.npz`` and ``.npy`` files, and arrays.

Each loader returns a :class:`DataSet` of raw values (uint8 pixels, digits
0..16, or floats) flattened to rows, with the image shape ``(H, W, C)`` that
unflattens them. Nothing is unpickled. :func:`tfvae.data.load_dataset`
(:mod:`tfvae.data.load`) picks the loader for a name or a path.
"""

from __future__ import annotations

import gzip
import lzma
import math
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tfvae.data.binarize import is_binary, scale
from tfvae.errors import DataError

EMBEDDED = "mnist-10k"
LOCAL_DATASETS = ("mnist-10k", "digits")
#: Rows of a t10k-only IDX set (and of the embedded ``mnist-10k``) used for
#: training; the rest is the test split (the bindata rule).
SPLIT_10K = 9000
#: Fraction of rows used for training when a single array is split by order.
TRAIN_FRACTION_NUM, TRAIN_FRACTION_DEN = 9, 10
#: Channel counts an image may have: grey-level or RGB.
CHANNELS = (1, 3)

_DATASETS_DIR = Path(__file__).resolve().parent / "datasets"
_EMBEDDED_FILES = ("mnist-10k-images.idx.xz", "mnist-10k-labels.idx.xz")
IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_SHAPES = "(N, D), (N, H, W) or (N, H, W, C) with C 1 or 3"


@dataclass
class DataSet:
    """Raw data, flattened to rows, with what is needed to scale them.

    Attributes:
        name: ``"mnist-10k"``, ``"digits"``, a TFDS name, or the path given as data dir.
        x_train: ``(N, D)`` raw training values: uint8 or float32.
        x_test: ``(M, D)`` raw test values, same dtype as ``x_train``.
        y_train: ``(N,)`` integer labels, or None.
        y_test: ``(M,)`` integer labels, or None.
        image_shape: ``(H, W, C)`` with ``H * W * C == D`` (rows are channel-last).
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
        """Number of values per example (``H * W * C``)."""
        return int(math.prod(self.image_shape))

    def scaled(self, x: np.ndarray) -> np.ndarray:
        """Raw values of this data set on their natural [0, 1] scale (float32).

        ``x.astype(float32) / (levels - 1)`` for discrete data (``/ 255.0`` for
        uint8 pixels, exactly as bindata; ``/ 16`` for digits), binary data and
        floats only cast.
        """
        return scale(x, self.levels)


def load_embedded() -> DataSet:
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
    x = parse_idx(blobs[0], str(_DATASETS_DIR / _EMBEDDED_FILES[0]))
    y = parse_idx(blobs[1], str(_DATASETS_DIR / _EMBEDDED_FILES[1]))
    _check_label_count(x, y, _EMBEDDED_FILES[0], _EMBEDDED_FILES[1])
    return from_arrays(EMBEDDED, x[:SPLIT_10K], x[SPLIT_10K:], y[:SPLIT_10K], y[SPLIT_10K:])


def load_digits() -> DataSet:
    """scikit-learn's 8x8 digits (1,797 images, values 0..16), split 90/10 by order.

    The first ``floor(0.9 * N)`` rows (1,617) are the training split, the last
    180 the test split. Raw values are kept as float32 0..16 with ``levels=17``.
    """
    from sklearn.datasets import load_digits  # lazy: sklearn is slow to import

    bunch = load_digits()
    x = bunch.data.astype(np.float32)
    y = bunch.target.astype(np.int64)
    n_train = train_rows(len(x))
    return DataSet(
        name="digits",
        x_train=x[:n_train],
        x_test=x[n_train:],
        y_train=y[:n_train],
        y_test=y[n_train:],
        image_shape=(8, 8, 1),
        levels=17,
    )


def train_rows(n: int) -> int:
    """Rows of the training split when one array is split by order: floor(90%)."""
    return (TRAIN_FRACTION_NUM * n) // TRAIN_FRACTION_DEN


def check_path(path) -> Path:
    """Raises DataError unless ``path`` (``~`` expanded) exists; NumPy-only, so the
    command checks ``--data-dir`` before importing TensorFlow."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(
            f"data path {path} does not exist; give a directory of MNIST-format IDX .gz "
            "files, a folder of PNG/JPEG images, a .npz or a .npy file"
        )
    return path


def load_path(path: Path) -> DataSet:
    check_path(path)
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


def parse_idx(data: bytes, source: str) -> np.ndarray:
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
    return parse_idx(data, str(path))


def _check_label_count(x: np.ndarray, y: np.ndarray, x_name, y_name) -> None:
    if y.ndim != 1:
        raise DataError(f"{y_name} holds an array of shape {y.shape}; labels must be 1-D")
    if len(y) != len(x):
        raise DataError(
            f"{y_name} holds {len(y)} labels but {x_name} holds {len(x)} images; "
            "the counts must match"
        )


def has_idx_files(path: Path) -> bool:
    """Whether a directory holds MNIST-format IDX image files."""
    return any((path / IDX_FILES[split][0]).exists() for split in IDX_FILES)


def _load_idx_dir(path: Path) -> DataSet:
    """Loads MNIST-format IDX files; a t10k-only directory is split by file order.

    The split rule for a t10k-only directory is bindata's: the first 9,000 images
    train, the rest test. With 9,000 images or fewer (not a bindata set), the
    first ``floor(90%)`` train instead, so that the test split is not empty.
    """

    def load_pair(split):
        images, labels = (path / f for f in IDX_FILES[split])
        x = _read_idx_gz(images)
        y = None
        if labels.exists():
            y = _read_idx_gz(labels)
            _check_label_count(x, y, images, labels)
        return x, y

    have = {split: (path / IDX_FILES[split][0]).exists() for split in IDX_FILES}
    if not have["test"]:
        expected = ", ".join(f for pair in IDX_FILES.values() for f in pair)
        raise DataError(
            f"directory {path} holds no MNIST-format IDX files nor PNG/JPEG images; expected "
            f"{expected} (labels optional; the train files may be absent, then the t10k set is "
            "split 9,000/rest), a folder of images, or a .npz or .npy file"
        )
    x_test, y_test = load_pair("test")
    if have["train"]:
        x_train, y_train = load_pair("train")
    else:
        n = len(x_test)
        n_train = SPLIT_10K if n > SPLIT_10K else train_rows(n)
        x_train, x_test = x_test[:n_train], x_test[n_train:]
        if y_test is not None:
            y_train, y_test = y_test[:n_train], y_test[n_train:]
        else:
            y_train = None
    return from_arrays(str(path), x_train, x_test, y_train, y_test)


#: The first byte of a pickle (protocol 2 and later).
_PICKLE_OPCODE = b"\x80"


def _stored_dtype(stream) -> np.dtype | None:
    """The dtype an ``.npy`` stream's header declares, or None without a readable header."""
    try:
        major, _ = np.lib.format.read_magic(stream)
        read = {1: np.lib.format.read_array_header_1_0,
                2: np.lib.format.read_array_header_2_0}.get(major)
        return None if read is None else read(stream)[2]
    except (ValueError, OSError, EOFError):
        return None


def _unloadable(source: str, stream, error: Exception) -> DataError:
    """Why an ``.npy`` array (a file, or a member of an ``.npz``) did not load."""
    dtype = _stored_dtype(stream)
    if dtype is not None and dtype.hasobject:
        return DataError(f"{source} holds a pickled/object array; tfvae never unpickles data: "
                         "save plain numeric arrays")
    stream.seek(0)
    start = stream.read(len(np.lib.format.MAGIC_PREFIX))
    if dtype is not None or start == np.lib.format.MAGIC_PREFIX:
        return DataError(f"{source} is truncated or damaged ({error}); write it again with "
                         "numpy.save or numpy.savez")
    if start[:1] == _PICKLE_OPCODE:
        return DataError(f"{source} is a pickle, not a NumPy array file; tfvae never unpickles "
                         "data: save plain numeric arrays with numpy.save")
    return DataError(f"{source} is not a NumPy .npy array: it does not start with the .npy "
                     "header")


def _np_load(path: Path):
    try:
        # allow_pickle=False: an object array is refused, never unpickled.
        return np.load(path, allow_pickle=False)
    except ValueError as e:
        with open(path, "rb") as stream:
            raise _unloadable(str(path), stream, e) from e
    except zipfile.BadZipFile as e:
        raise DataError(f"{path} is truncated or damaged ({e}); write it again with "
                        "numpy.savez") from e
    except Exception as e:  # OSError/EOFError/...: all "unreadable"
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
                    with archive.zip.open(f"{key}.npy") as stream:
                        raise _unloadable(f"{path}: array {key!r}", stream, e) from e
                except Exception as e:  # corrupt member
                    raise DataError(f"cannot read array {key!r} of {path}: {e}") from e
    return from_arrays(
        str(path), arrays["x_train"], arrays["x_test"], arrays.get("y_train"),
        arrays.get("y_test"),
    )


def _load_npy(path: Path) -> DataSet:
    x = _np_load(path)
    if not isinstance(x, np.ndarray) or x.ndim < 2:
        raise DataError(
            f"{path} holds an array of shape {getattr(x, 'shape', None)}; expected {_SHAPES}"
        )
    n_train = train_rows(len(x))
    return from_arrays(str(path), x[:n_train], x[n_train:], None, None)


def image_shape_of(shape: tuple, source: str) -> tuple[int, int, int]:
    """``(H, W, C)`` for an array shape (N, D), (N, H, W) or (N, H, W, C)."""
    if len(shape) == 2:
        d = shape[1]
        side = math.isqrt(d)
        return (side, side, 1) if side * side == d else (1, d, 1)
    if len(shape) == 3:
        return (int(shape[1]), int(shape[2]), 1)
    if len(shape) == 4:
        if shape[3] not in CHANNELS:
            raise DataError(
                f"{source} holds images with {shape[3]} channels (shape {shape}); images "
                "must have 1 (grey-level) or 3 (RGB) channels, channels last"
            )
        return tuple(int(s) for s in shape[1:4])
    raise DataError(f"{source} holds an array of shape {shape}; expected {_SHAPES}")


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


def with_image_shape(ds, image_shape) -> DataSet:
    """``ds`` with rows read as images of ``image_shape`` ``(H, W, C)`` (same size).

    For flat ``(N, D)`` rows, whose shape a file cannot say (``--image-shape``).
    """
    shape = tuple(int(s) for s in image_shape)
    if len(shape) != 3 or shape[-1] not in CHANNELS or math.prod(shape) != ds.dim:
        raise DataError(
            f"{ds.name}: --image-shape {','.join(map(str, shape))} does not fit rows of "
            f"{ds.dim} values; give height,width,channels with channels 1 or 3 and "
            f"height x width x channels = {ds.dim}"
        )
    if shape == tuple(ds.image_shape):
        return ds
    if getattr(ds, "streamed", False):
        raise DataError(f"{ds.name} is a folder of images: use --image-size to resize them")
    import dataclasses

    return dataclasses.replace(ds, image_shape=shape)


def from_arrays(source: str, x_train, x_test, y_train=None, y_test=None) -> DataSet:
    """Validates and flattens raw arrays into a DataSet (levels 256, 2 or None).

    Args:
        source: what the arrays are called in messages (a name or a path).
        x_train: training images ``(N, D)``, ``(N, H, W)`` or ``(N, H, W, C)``
            (C 1 or 3), integers in 0..255 or floats.
        x_test: test images, shaped as ``x_train``.
        y_train: optional integer labels of ``x_train``.
        y_test: optional integer labels of ``x_test``.
    """
    x_train, x_test = np.asarray(x_train), np.asarray(x_test)
    shapes = {}
    for key, x in (("x_train", x_train), ("x_test", x_test)):
        if x.ndim < 1 or len(x) == 0:
            raise DataError(
                f"{source}: {key} is empty (shape {x.shape}); the training and test "
                "splits need at least one example each"
            )
        shapes[key] = image_shape_of(x.shape, f"{source} ({key})")
    if shapes["x_train"] != shapes["x_test"]:
        raise DataError(
            f"{source}: training images have shape {shapes['x_train']} but test images "
            f"{shapes['x_test']}; they must match"
        )
    image_shape = shapes["x_train"]
    dim = math.prod(image_shape)
    x_train = _convert(x_train.reshape(len(x_train), dim), f"{source} (x_train)")
    x_test = _convert(x_test.reshape(len(x_test), dim), f"{source} (x_test)")
    if x_train.dtype != x_test.dtype:
        # One split integer, the other float: compare on the float scale.
        x_train, x_test = x_train.astype(np.float32), x_test.astype(np.float32)
    if is_binary(x_train) and is_binary(x_test):
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
