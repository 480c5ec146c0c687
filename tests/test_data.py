"""Tests of tfvae.data: loaders, binarization, splits and pipelines (offline, seeded)."""

from __future__ import annotations

import gzip
import lzma
import os
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tfvae import data
from tfvae.data import tfds as tfds_source
from tfvae.errors import ConfigError, DataError

REFERENCE = Path(__file__).resolve().parent / "reference"
SHARED_BINDATA = Path(__file__).resolve().parents[2] / "shared" / "bench" / "bindata.py"
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
HYPOTHESIS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


# --------------------------------------------------------------------------- helpers


def idx_bytes(arr: np.ndarray, dtype_code: int = 0x08, magic: bytes = b"\0\0") -> bytes:
    """IDX encoding: 2 zero bytes, type code, ndim, big-endian dims, then the data."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    header = magic + bytes([dtype_code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.tobytes()


def write_idx(path: Path, arr: np.ndarray, **kw) -> Path:
    with gzip.open(path, "wb") as f:
        f.write(idx_bytes(arr, **kw))
    return path


def write_idx_dir(root: Path, x_train=None, y_train=None, x_test=None, y_test=None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, arr in (
        ("train-images-idx3-ubyte.gz", x_train),
        ("train-labels-idx1-ubyte.gz", y_train),
        ("t10k-images-idx3-ubyte.gz", x_test),
        ("t10k-labels-idx1-ubyte.gz", y_test),
    ):
        if arr is not None:
            write_idx(root / name, arr)
    return root


def images(n: int, h: int = 28, w: int = 28, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w), dtype=np.uint8)


def labels(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 10, n, dtype=np.uint8)


@pytest.fixture(scope="module")
def mnist10k() -> data.DataSet:
    return data.load_dataset()


@pytest.fixture(scope="module")
def embedded_idx_dir(tmp_path_factory) -> Path:
    """The embedded mnist-10k written as a t10k-only IDX directory (bindata's input)."""
    root = tmp_path_factory.mktemp("mnist-test")
    for src, dst in zip(
        ("mnist-10k-images.idx.xz", "mnist-10k-labels.idx.xz"),
        ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
        strict=True,
    ):
        raw = lzma.decompress((Path(data.__file__).parent / "datasets" / src).read_bytes())
        with gzip.open(root / dst, "wb", compresslevel=1) as f:
            f.write(raw)
    return root


def import_bindata():
    """The shared protocol (tests/reference/bindata.py, a verified copy of ../shared's)."""
    sys.path.insert(0, str(REFERENCE))
    try:
        import bindata
    finally:
        sys.path.remove(str(REFERENCE))
    return bindata


def test_reference_bindata_is_the_shared_one():
    if not SHARED_BINDATA.exists():
        pytest.skip(f"{SHARED_BINDATA} is not beside this checkout; the copy is checked "
                    "where it is")
    assert (REFERENCE / "bindata.py").read_bytes() == SHARED_BINDATA.read_bytes(), (
        "tests/reference/bindata.py differs from ../shared/bench/bindata.py: copy it again")


def unchunked_static(x: np.ndarray, seed: int) -> np.ndarray:
    """bindata's formula over the whole split at once."""
    x = x.astype(np.float32) / 255.0
    return (np.random.default_rng(seed).random(x.shape) < x).astype(np.uint8)


# --------------------------------------------------------------------------- embedded / digits


def test_import_is_light():
    # numpy + stdlib only: TensorFlow, TFDS and sklearn are imported lazily.
    code = (
        "import sys, tfvae.data; "
        "print(sorted(m for m in ('tensorflow', 'tensorflow_datasets', 'sklearn') "
        "if m in sys.modules))"
    )
    root = Path(data.__file__).parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_embedded_mnist10k(mnist10k):
    ds = mnist10k
    assert ds.name == "mnist-10k"
    assert ds.x_train.shape == (9000, 784) and ds.x_test.shape == (1000, 784)
    assert ds.x_train.dtype == np.uint8 and ds.x_test.dtype == np.uint8
    assert ds.y_train.shape == (9000,) and ds.y_test.shape == (1000,)
    assert list(ds.y_train[:5]) == [7, 2, 1, 0, 4]  # the first t10k labels
    assert set(np.unique(ds.y_test)) == set(range(10))
    assert ds.image_shape == (28, 28, 1) and ds.dim == 784 and ds.levels == 256
    sc = ds.scaled(ds.x_test[:3])
    assert sc.dtype == np.float32
    np.testing.assert_array_equal(sc, ds.x_test[:3].astype(np.float32) / 255.0)


def test_default_is_embedded_and_name_plus_dir_refused(tmp_path):
    assert data.load_dataset("mnist-10k").x_train.shape == (9000, 784)
    with pytest.raises(DataError, match="not both"):
        data.load_dataset("mnist-10k", data_dir=tmp_path)


def test_digits_and_gaussian_dequantize():
    ds = data.load_dataset("digits")
    assert ds.x_train.shape == (1617, 64) and ds.x_test.shape == (180, 64)
    assert ds.levels == 17 and ds.image_shape == (8, 8, 1) and ds.dim == 64
    assert ds.x_train.max() == 16
    np.testing.assert_allclose(ds.scaled(ds.x_test), ds.x_test / 16)
    sp = data.prepare(ds, likelihood="gaussian")
    assert sp.train_mode == "dequantize" and sp.levels == 17
    for a in (sp.val, sp.test):
        assert a.dtype == np.float32 and a.min() >= 0 and a.max() <= 1
    # Dequantized values stay in their bin: floor(v * levels) == raw value.
    np.testing.assert_array_equal(np.floor(sp.test * 17), ds.x_test)
    again = data.prepare(ds, likelihood="gaussian")
    np.testing.assert_array_equal(again.test, sp.test)
    np.testing.assert_array_equal(again.val, sp.val)


# --------------------------------------------------------------------------- static binarization


def test_static_bit_identical_to_bindata(mnist10k, embedded_idx_dir):
    bindata = import_bindata()
    for split, x, seed in (("train", mnist10k.x_train, 0), ("test", mnist10k.x_test, 1)):
        ref, y = bindata.load_split(str(embedded_idx_dir), split)
        mine = data.binarize_static(x, seed, mnist10k.scaled, chunk_rows=1000)
        np.testing.assert_array_equal(mine, ref.astype(np.uint8))
    # prepare(static) without validation reproduces both splits exactly.
    sp = data.prepare(mnist10k, binarize="static", val_fraction=0)
    np.testing.assert_array_equal(sp.train, bindata.load_split(str(embedded_idx_dir), "train")[0])
    np.testing.assert_array_equal(sp.test, bindata.load_split(str(embedded_idx_dir), "test")[0])
    # Loading the IDX directory gives the same data as the embedded set.
    ds = data.load_dataset(data_dir=embedded_idx_dir)
    np.testing.assert_array_equal(ds.x_train, mnist10k.x_train)
    np.testing.assert_array_equal(ds.y_test, mnist10k.y_test)


@pytest.mark.parametrize("chunk_rows", [1, 7, 4096, 100000])
def test_static_chunked_equals_unchunked(chunk_rows):
    x = np.random.default_rng(3).integers(0, 256, (300, 50), dtype=np.uint8)
    out = data.binarize_static(x, 5, chunk_rows=chunk_rows)
    assert out.dtype == np.uint8 and out.shape == x.shape
    np.testing.assert_array_equal(out, unchunked_static(x, 5))
    rows = np.array([0, 6, 7, 150, 299])
    np.testing.assert_array_equal(
        data.binarize_static(x, 5, chunk_rows=chunk_rows, rows=rows), out[rows]
    )


def test_threshold_is_strict():
    x = np.array([[0.0, 0.5, 0.5001, 1.0]], np.float32)
    np.testing.assert_array_equal(data.binarize_threshold(x), [[0, 0, 1, 1]])
    assert data.binarize_threshold(x).dtype == np.uint8


@HYPOTHESIS
@given(
    x=hnp.arrays(np.uint8, hnp.array_shapes(min_dims=2, max_dims=2, max_side=40)),
    seed=st.integers(0, 2**32 - 1),
    chunk=st.integers(1, 50),
)
def test_static_properties(x, seed, chunk):
    out = data.binarize_static(x, seed, chunk_rows=chunk)
    assert out.shape == x.shape and out.dtype == np.uint8
    assert set(np.unique(out)) <= {0, 1}
    np.testing.assert_array_equal(out, data.binarize_static(x, seed))
    np.testing.assert_array_equal(out, unchunked_static(x, seed))
    assert not out[x == 0].any() and out[x == 255].all()


# --------------------------------------------------------------------------- prepare


def test_prepare_dynamic_default(mnist10k):
    sp = data.prepare(mnist10k, val_fraction=0.05, seed=0)
    assert sp.train_mode == "dynamic" and sp.levels == 256
    assert sp.train.dtype == np.uint8 and sp.train.shape == (8550, 784)
    assert sp.val.shape == (450, 784) and sp.val.dtype == np.float32
    # Test bits stay uint8 (a quarter of float32's memory); evaluation casts per batch.
    assert sp.test.shape == (1000, 784) and sp.test.dtype == np.uint8
    assert set(np.unique(sp.val)) == {0.0, 1.0}
    # Validation rows: disjoint from training rows, together all of them.
    assert not set(sp.val_index) & set(sp.train_index)
    assert len(set(sp.val_index) | set(sp.train_index)) == 9000
    np.testing.assert_array_equal(sp.train, mnist10k.x_train[sp.train_index])
    np.testing.assert_array_equal(sp.y_val, mnist10k.y_train[sp.val_index])
    # Val = static seed-0 bits of those rows; test = static seed-1 bits.
    bits = unchunked_static(mnist10k.x_train, 0)
    np.testing.assert_array_equal(sp.val, bits[sp.val_index])
    np.testing.assert_array_equal(sp.test, unchunked_static(mnist10k.x_test, 1))
    # Fixed: the same call gives the same rows and bits; another seed other rows.
    again = data.prepare(mnist10k, val_fraction=0.05, seed=0)
    np.testing.assert_array_equal(again.val, sp.val)
    other = data.prepare(mnist10k, val_fraction=0.05, seed=1)
    assert not np.array_equal(other.val_index, sp.val_index)


def test_prepare_static_and_threshold(mnist10k):
    st_ = data.prepare(mnist10k, binarize="static", val_fraction=0.1)
    bits = unchunked_static(mnist10k.x_train, 0)
    np.testing.assert_array_equal(st_.train, bits[st_.train_index])
    np.testing.assert_array_equal(st_.val, bits[st_.val_index])
    assert st_.train.dtype == np.uint8 and st_.levels == 2 and st_.train_mode == "static"
    th = data.prepare(mnist10k, binarize="threshold", val_fraction=0)
    assert th.val is None and th.y_val is None and th.train.shape == (9000, 784)
    np.testing.assert_array_equal(th.train, mnist10k.x_train > 127)  # x/255 > 0.5
    assert th.test.dtype == np.uint8
    np.testing.assert_array_equal(th.test, mnist10k.x_test > 127)


def test_prepare_gaussian_and_none(mnist10k):
    g = data.prepare(mnist10k, likelihood="gaussian")
    assert g.train_mode == "dequantize" and g.train.dtype == np.uint8
    assert 0 <= g.test.min() and g.test.max() <= 1
    gb = data.prepare(mnist10k, likelihood="gaussian", binarize="static")
    assert gb.train_mode == "static"
    nb = data.prepare(mnist10k, binarize="none")
    assert nb.train_mode == "none"
    np.testing.assert_array_equal(nb.test, mnist10k.x_test.astype(np.float32) / 255.0)


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5, 0.00001])
def test_prepare_bad_fractions(mnist10k, fraction):
    with pytest.raises(ConfigError):
        data.prepare(mnist10k, val_fraction=fraction)


def test_prepare_bad_options(mnist10k):
    with pytest.raises(ConfigError):
        data.prepare(mnist10k, binarize="sometimes")
    with pytest.raises(ConfigError):
        data.prepare(mnist10k, likelihood="poisson")
    tiny = data.DataSet("t", mnist10k.x_train[:1], mnist10k.x_test, None, None, (28, 28, 1), 256)
    with pytest.raises(ConfigError):
        data.prepare(tiny, val_fraction=0.5)


def test_floats_outside_unit_interval(tmp_path):
    x = np.random.default_rng(0).normal(size=(20, 16)).astype(np.float32)
    np.savez(tmp_path / "f.npz", x_train=x, x_test=x[:5])
    ds = data.load_dataset(data_dir=tmp_path / "f.npz")
    assert ds.levels is None and ds.image_shape == (4, 4, 1)
    with pytest.raises(DataError, match="--likelihood gaussian"):
        data.prepare(ds, binarize="none")
    with pytest.raises(DataError, match="outside"):
        data.prepare(ds)  # bernoulli default: dynamic
    sp = data.prepare(ds, likelihood="gaussian", val_fraction=0.1)
    assert sp.train_mode == "none" and sp.levels is None
    np.testing.assert_array_equal(sp.test, x[:5])
    assert data.prepare(ds, binarize="threshold").train_mode == "threshold"


# --------------------------------------------------------------------------- pipelines


def collect(ds) -> np.ndarray:
    return np.concatenate([b.numpy() for b in ds])


def test_pipeline_dynamic(mnist10k):
    x = mnist10k.x_train[:1024]
    pipe = data.make_pipeline(x, "dynamic", 256, 256, shuffle=False, seed=7)
    e1, e2 = collect(pipe), collect(pipe)
    assert e1.dtype == np.float32 and e1.shape == (1024, 784)
    assert set(np.unique(e1)) == {0.0, 1.0}
    assert not np.array_equal(e1, e2)  # resampled each epoch
    fresh = data.make_pipeline(x, "dynamic", 256, 256, shuffle=False, seed=7)
    np.testing.assert_array_equal(collect(fresh), e1)
    np.testing.assert_array_equal(collect(fresh), e2)
    other = data.make_pipeline(x, "dynamic", 256, 256, shuffle=False, seed=8)
    assert not np.array_equal(collect(other), e1)
    p = mnist10k.scaled(x)
    assert abs(e1.mean() - p.mean()) < 0.005
    assert np.abs(e1.mean(0) - p.mean(0)).max() < 0.1
    assert not e1[x == 0].any() and e1[x == 255].all()


def test_pipeline_shuffle_and_batches(mnist10k):
    x = mnist10k.x_train[:100]
    pipe = data.make_pipeline(x, "none", 32, 256, shuffle=True, seed=1)
    batches = [b.numpy() for b in pipe]
    assert [len(b) for b in batches] == [32, 32, 32, 4]
    e1 = np.concatenate(batches)
    e2 = collect(pipe)
    # Each epoch is a permutation of the scaled rows, reshuffled per epoch.
    key = lambda a: np.sort(a.sum(1))  # noqa: E731
    np.testing.assert_allclose(key(e1), key(mnist10k.scaled(x)), rtol=1e-6)
    assert not np.array_equal(e1, e2)
    fresh = data.make_pipeline(x, "none", 32, 256, shuffle=True, seed=1)
    np.testing.assert_array_equal(collect(fresh), e1)
    dropped = data.make_pipeline(x, "none", 32, 256, False, 1, drop_remainder=True)
    assert [len(b) for b in dropped] == [32, 32, 32]
    rep = data.make_pipeline(x, "dynamic", 50, 256, False, 1, repeat=True)
    first = [b.numpy() for b in rep.take(4)]
    assert not np.array_equal(first[0], first[2])  # second pass resampled


def test_pipeline_static_dequantize_and_errors(mnist10k):
    bits = data.binarize_static(mnist10k.x_train[:64], 0)
    out = collect(data.make_pipeline(bits, "static", 64, 2, False, 0))
    np.testing.assert_array_equal(out, bits.astype(np.float32))
    x = mnist10k.x_train[:64]
    deq = collect(data.make_pipeline(x, "dequantize", 16, 256, False, 0))
    assert deq.min() >= 0 and deq.max() <= 1
    np.testing.assert_array_equal(np.floor(deq * 256), x)
    with pytest.raises(ConfigError, match=r"larger than the 64 training examples.*--batch-size"):
        data.make_pipeline(x, "dynamic", 65, 256, False, 0)
    with pytest.raises(ConfigError):
        data.make_pipeline(x, "bogus", 8, 256, False, 0)
    with pytest.raises(ConfigError):
        data.make_pipeline(x, "dequantize", 8, None, False, 0)


# --------------------------------------------------------------------------- data_dir: IDX


def test_idx_full_directory(tmp_path):
    xtr, xte = images(30, 5, 7, seed=1), images(10, 5, 7, seed=2)
    root = write_idx_dir(tmp_path, xtr, labels(30), xte, labels(10, 1))
    ds = data.load_dataset(data_dir=root)
    assert ds.image_shape == (5, 7, 1) and ds.levels == 256 and ds.name == str(root)
    np.testing.assert_array_equal(ds.x_train, xtr.reshape(30, 35))
    np.testing.assert_array_equal(ds.x_test, xte.reshape(10, 35))
    np.testing.assert_array_equal(ds.y_test, labels(10, 1))
    # Labels are optional.
    root2 = write_idx_dir(tmp_path / "nolabels", xtr, None, xte, None)
    ds2 = data.load_dataset(data_dir=str(root2))
    assert ds2.y_train is None and ds2.y_test is None


def test_idx_t10k_only_split(tmp_path):
    x, y = images(9100, 2, 2), labels(9100)
    ds = data.load_dataset(data_dir=write_idx_dir(tmp_path / "a", x_test=x, y_test=y))
    assert ds.x_train.shape == (9000, 4) and ds.x_test.shape == (100, 4)
    np.testing.assert_array_equal(ds.x_test, x[9000:].reshape(100, 4))
    np.testing.assert_array_equal(ds.y_train, y[:9000])
    small = data.load_dataset(data_dir=write_idx_dir(tmp_path / "b", x_test=images(50)))
    assert len(small.x_train) == 45 and len(small.x_test) == 5


def test_idx_errors(tmp_path):
    x = images(20, 4, 4)
    with pytest.raises(DataError, match="does not exist"):
        data.load_dataset(data_dir=tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz"):
        data.load_dataset(data_dir=tmp_path / "empty")
    # Truncated gzip.
    root = write_idx_dir(tmp_path / "trunc", x_test=x)
    f = root / "t10k-images-idx3-ubyte.gz"
    f.write_bytes(f.read_bytes()[:-20])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz.*truncated or corrupt"):
        data.load_dataset(data_dir=root)
    # Not gzip at all.
    f.write_bytes(b"hello world")
    with pytest.raises(DataError, match="t10k-images"):
        data.load_dataset(data_dir=root)
    # Wrong magic, wrong dtype code, header/byte-count mismatch.
    write_idx(f, x, magic=b"PK")
    with pytest.raises(DataError, match="magic"):
        data.load_dataset(data_dir=root)
    write_idx(f, x, dtype_code=0x0D)
    with pytest.raises(DataError, match="0x0d"):
        data.load_dataset(data_dir=root)
    with gzip.open(f, "wb") as g:
        g.write(idx_bytes(x)[:-3])
    with pytest.raises(DataError, match="truncated or corrupt"):
        data.load_dataset(data_dir=root)
    # Label count mismatch names both counts.
    root = write_idx_dir(tmp_path / "labels", x_test=x, y_test=labels(19))
    with pytest.raises(DataError, match="19 labels.*20 images"):
        data.load_dataset(data_dir=root)


# --------------------------------------------------------------------------- data_dir: npz/npy


@pytest.mark.parametrize(
    ("shape", "image_shape"),
    [((784,), (28, 28, 1)), ((28, 28), (28, 28, 1)), ((28, 28, 1), (28, 28, 1)),
     ((10,), (1, 10, 1)), ((3, 5), (3, 5, 1)), ((4, 6, 3), (4, 6, 3))],
)
def test_npz_shapes(tmp_path, shape, image_shape):
    rng = np.random.default_rng(0)
    xtr = rng.integers(0, 256, (12,) + shape, dtype=np.uint8)
    xte = rng.integers(0, 256, (4,) + shape, dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x_train=xtr, x_test=xte, y_train=np.arange(12),
             y_test=np.arange(4))
    ds = data.load_dataset(data_dir=tmp_path / "d.npz")
    assert ds.image_shape == image_shape and ds.levels == 256
    np.testing.assert_array_equal(ds.x_train, xtr.reshape(12, -1))
    np.testing.assert_array_equal(ds.y_test, np.arange(4))


def test_npy_split_and_dtypes(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (20, 28, 28)).astype(np.int64)
    np.save(tmp_path / "a.npy", x)
    ds = data.load_dataset(data_dir=tmp_path / "a.npy")
    assert ds.x_train.shape == (18, 784) and ds.x_test.shape == (2, 784)
    assert ds.x_train.dtype == np.uint8 and ds.levels == 256 and ds.y_train is None
    np.testing.assert_array_equal(ds.x_test, x[18:].reshape(2, 784))
    np.save(tmp_path / "b.npy", (x > 127).astype(np.float64))
    ds = data.load_dataset(data_dir=tmp_path / "b.npy")
    assert ds.levels == 2 and ds.x_train.dtype == np.float32
    assert data.prepare(ds, val_fraction=0.2).train_mode == "none"
    np.save(tmp_path / "c.npy", x + 1000)
    with pytest.raises(DataError, match="0..255"):
        data.load_dataset(data_dir=tmp_path / "c.npy")


def test_npz_npy_errors(tmp_path):
    x = np.zeros((10, 784), np.float32)
    np.savez(tmp_path / "missing.npz", x_train=x, images=x)
    with pytest.raises(DataError, match=r"x_test.*\['images', 'x_train'\]"):
        data.load_dataset(data_dir=tmp_path / "missing.npz")
    bad = x.copy()
    bad[3, 4] = np.nan
    np.savez(tmp_path / "nan.npz", x_train=bad, x_test=x)
    with pytest.raises(DataError, match="NaN"):
        data.load_dataset(data_dir=tmp_path / "nan.npz")
    bad[3, 4] = np.inf
    np.save(tmp_path / "inf.npy", bad)
    with pytest.raises(DataError, match="infinite"):
        data.load_dataset(data_dir=tmp_path / "inf.npy")
    np.savez(tmp_path / "empty.npz", x_train=x, x_test=x[:0])
    with pytest.raises(DataError, match="empty"):
        data.load_dataset(data_dir=tmp_path / "empty.npz")
    np.savez(tmp_path / "two.npz", x_train=np.zeros((4, 8, 8, 2)), x_test=np.zeros((2, 8, 8, 2)))
    with pytest.raises(DataError, match="2 channels"):
        data.load_dataset(data_dir=tmp_path / "two.npz")
    np.savez(tmp_path / "rank.npz", x_train=np.zeros((4, 2, 2, 2, 2)), x_test=np.zeros(4))
    with pytest.raises(DataError, match="shape"):
        data.load_dataset(data_dir=tmp_path / "rank.npz")
    np.savez(tmp_path / "lab.npz", x_train=x, x_test=x, y_train=np.arange(9))
    with pytest.raises(DataError, match="y_train"):
        data.load_dataset(data_dir=tmp_path / "lab.npz")
    (tmp_path / "d.csv").write_text("1,2\n")
    with pytest.raises(DataError, match=r"\.npz.*\.npy"):
        data.load_dataset(data_dir=tmp_path / "d.csv")
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(DataError, match="junk.npy"):
        data.load_dataset(data_dir=tmp_path / "junk.npy")


class _Payload:
    """Unpickling this would run os.mkdir(marker): proof that code was executed."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_pickled_arrays_refused_not_executed(tmp_path):
    marker = tmp_path / "executed"
    obj = np.array([_Payload(str(marker))] * 4, dtype=object)
    np.save(tmp_path / "evil.npy", obj, allow_pickle=True)
    np.savez(tmp_path / "evil.npz", x_train=obj, x_test=obj)
    for name in ("evil.npy", "evil.npz"):
        with pytest.raises(DataError, match="pickle"):
            data.load_dataset(data_dir=tmp_path / name)
        assert not marker.exists()
    # Control: the payload is live (unpickling really would execute it).
    control = tmp_path / "control"
    np.save(tmp_path / "ctl.npy", np.array([_Payload(str(control))], dtype=object),
            allow_pickle=True)
    np.load(tmp_path / "ctl.npy", allow_pickle=True)
    assert control.exists()


@HYPOTHESIS
@given(
    x=hnp.arrays(
        st.sampled_from([np.uint8, np.float32]),
        st.tuples(st.integers(2, 12), st.sampled_from([(4,), (3, 3), (2, 2, 1), (5,)])).map(
            lambda t: (t[0],) + t[1]
        ),
        elements=st.integers(0, 255),
    ),
    use_npz=st.booleans(),
)
def test_npz_npy_round_trip(x, use_npz):
    if x.dtype == np.float32:
        x = x / 255.0  # floats in [0, 1]
    n = len(x)
    with tempfile.TemporaryDirectory() as tmp:
        if use_npz:
            path = Path(tmp) / "d.npz"
            np.savez(path, x_train=x, x_test=x[:1], y_train=np.arange(n), y_test=[5])
            n_train = n
        else:
            path = Path(tmp) / "d.npy"
            np.save(path, x)
            n_train = (9 * n) // 10
        ds = data.load_dataset(data_dir=path)
    flat = x.reshape(n, -1)
    assert ds.dim == flat.shape[1] == np.prod(ds.image_shape)
    np.testing.assert_array_equal(ds.x_train, flat[:n_train])
    expected_test = flat[:1] if use_npz else flat[n_train:]
    np.testing.assert_array_equal(ds.x_test, expected_test)
    if use_npz:
        np.testing.assert_array_equal(ds.y_train, np.arange(n))


# --------------------------------------------------------------------------- TFDS


def test_tfds_offline_fails_fast(tmp_path, monkeypatch):
    """Not prepared and the host unreachable: refused with the offline options, before
    TFDS is asked to download (offline it retries for minutes)."""
    tfds = pytest.importorskip("tensorflow_datasets")
    probes = []
    monkeypatch.setattr(tfds_source, "host_reachable", lambda timeout: probes.append(timeout))
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare",
                        lambda *a, **k: pytest.fail("asked TFDS to download"))
    with pytest.raises(DataError) as err:
        data.load_dataset("fashion_mnist", tfds_data_dir=tmp_path, reachability_timeout=1.5)
    assert probes == [1.5]
    msg = str(err.value)
    for needle in ("mnist-10k", "--data-dir", "--dataset digits", "--tfds-data-dir",
                   "not prepared", "unreachable", str(tmp_path)):
        assert needle in msg


def test_tfds_unreachable_host_and_unknown_name(tmp_path, monkeypatch):
    pytest.importorskip("tensorflow_datasets")
    # A closed local port: refused at once, whatever the machine's network.
    monkeypatch.setattr(tfds_source, "TFDS_HOST", ("127.0.0.1", 9))
    with pytest.raises(DataError, match="unreachable"):
        data.load_dataset("mnist", tfds_data_dir=tmp_path, reachability_timeout=1.0)
    with pytest.raises(DataError, match="mnist-10k.*fashion_mnist"):
        data.load_dataset("no_such_dataset_xyz", tfds_data_dir=tmp_path)


def test_tfds_prepared_path_mocked(tmp_path, monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    # tfds' mock generates random examples; pretend the data set is prepared.
    monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: True)
    monkeypatch.setattr(tfds_source, "host_reachable",
                        lambda *a, **k: pytest.fail("probed network"))
    with tfds.testing.mock_data(num_examples=6):
        ds = data.load_dataset("fashion_mnist", tfds_data_dir=tmp_path)
        bin_ds = data.load_dataset("binarized_mnist", tfds_data_dir=tmp_path)
    assert ds.x_train.shape == (6, 784) and ds.x_train.dtype == np.uint8
    assert ds.image_shape == (28, 28, 1) and ds.y_train.shape == (6,)
    assert bin_ds.y_train is None and bin_ds.x_test.shape[1] == 784


# --------------------------------------------------------------------------- real data (slow)


@pytest.mark.slow
@pytest.mark.skipif(not FASHION_DIR.exists(), reason="Debian fashion-mnist not installed")
def test_fashion_mnist_idx_matches_bindata():
    ds = data.load_dataset(data_dir=FASHION_DIR)
    assert ds.x_train.shape == (60000, 784) and ds.x_test.shape == (10000, 784)
    assert ds.y_train.shape == (60000,) and ds.levels == 256
    bindata = import_bindata()
    sp = data.prepare(ds, binarize="static", val_fraction=0)
    np.testing.assert_array_equal(sp.train, bindata.load_split(str(FASHION_DIR), "train")[0])
    np.testing.assert_array_equal(sp.test, bindata.load_split(str(FASHION_DIR), "test")[0])
