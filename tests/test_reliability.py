"""Bad input at the command line, safe loading, determinism.

Every case must end with a clear message naming the problem and a non-zero
exit code: never a traceback, never lost work.
"""

import gzip
import pickle
import struct

import numpy as np
import pytest
from click.testing import CliRunner
from tfvae_cli.main import cli

import tfvae

TRAIN = ["train", "--epochs", "1", "--hidden", "8", "--latent-dim", "2", "--iwae-k", "2"]


class Exploit:
    """Unpickling this would create a marker file: loaders must never do it."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _idx(path, array, magic_dims):
    header = struct.pack(">HBB", 0, 0x08, magic_dims) + b"".join(
        struct.pack(">I", s) for s in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def _make_bad_data(tmp_path, case):
    """Writes the bad input of one case and returns the --data-dir argument."""
    rng = np.random.default_rng(0)
    if case == "missing":
        return str(tmp_path / "does-not-exist")
    if case == "empty-dir":
        (tmp_path / "d").mkdir()
        return str(tmp_path / "d")
    if case == "truncated-idx":
        d = tmp_path / "idx"
        d.mkdir()
        _idx(d / "t10k-images-idx3-ubyte.gz", rng.integers(0, 255, (50, 28, 28)), 3)
        raw = (d / "t10k-images-idx3-ubyte.gz").read_bytes()
        (d / "t10k-images-idx3-ubyte.gz").write_bytes(raw[: len(raw) // 2])
        return str(d)
    if case == "label-count":
        d = tmp_path / "idx"
        d.mkdir()
        _idx(d / "t10k-images-idx3-ubyte.gz", rng.integers(0, 255, (50, 28, 28)), 3)
        _idx(d / "t10k-labels-idx1-ubyte.gz", rng.integers(0, 9, (40,)), 1)
        return str(d)
    if case == "corrupt-npz":
        (tmp_path / "x.npz").write_bytes(b"PK\x03\x04 this is not a zip")
        return str(tmp_path / "x.npz")
    if case == "wrong-shape":
        np.save(tmp_path / "x.npy", rng.random((20, 4, 4, 2)).astype(np.float32))
        return str(tmp_path / "x.npy")
    if case == "empty":
        np.save(tmp_path / "x.npy", np.zeros((0, 784), np.float32))
        return str(tmp_path / "x.npy")
    if case == "nan":
        x = rng.random((100, 784)).astype(np.float32)
        x[3, 5] = np.nan
        np.save(tmp_path / "x.npy", x)
        return str(tmp_path / "x.npy")
    if case == "out-of-range":
        np.save(tmp_path / "x.npy", rng.random((100, 784)).astype(np.float32) * 5)
        return str(tmp_path / "x.npy")
    if case == "npz-label-count":
        np.savez(tmp_path / "x.npz", x_train=rng.random((30, 784)), x_test=rng.random((10, 784)),
                 y_train=np.zeros(29, np.int64), y_test=np.zeros(10, np.int64))
        return str(tmp_path / "x.npz")
    if case == "pickled-npy":
        np.save(tmp_path / "x.npy", np.array([Exploit(tmp_path / "pwned")], dtype=object),
                allow_pickle=True)
        return str(tmp_path / "x.npy")
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case, words",
    [
        ("missing", "does-not-exist"),
        ("empty-dir", "idx"),
        ("truncated-idx", "t10k-images-idx3-ubyte.gz"),
        ("label-count", "40"),
        ("corrupt-npz", "x.npz"),
        ("wrong-shape", "channel"),
        ("empty", "empty"),
        ("nan", "NaN"),
        ("out-of-range", "--likelihood gaussian"),
        ("npz-label-count", "29"),
        ("pickled-npy", "pickle"),
    ],
)
def test_bad_data_through_the_cli(tmp_path, case, words):
    data_dir = _make_bad_data(tmp_path, case)
    extra = ["--likelihood", "bernoulli", "--binarize", "none"] if case == "out-of-range" else []
    result = CliRunner().invoke(cli, TRAIN + extra + ["--data-dir", data_dir,
                                                       "--out", str(tmp_path / "run")])
    assert result.exit_code == 1, result.output
    assert words.lower() in result.output.lower(), result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(
    "args, words",
    [
        (["--latent-dim", "-2"], "--latent-dim"),
        (["--hidden", "400,0"], "positive"),
        (["--decoder-hidden", "x"], "comma-separated"),
        (["--batch-size", "0"], "--batch-size"),
        (["--dataset", "no_such_dataset_xyz"], "no_such_dataset_xyz"),
        (["--num-samples", "1", "--estimator", "rloo"], "--num-samples"),
        (["--val-fraction", "-0.1"], "--val-fraction"),
    ],
)
def test_bad_options_through_the_cli(tmp_path, args, words):
    result = CliRunner().invoke(cli, TRAIN + args + ["--out", str(tmp_path / "run")])
    assert result.exit_code != 0
    assert words in result.output, result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("k", ["0", "-5"])
def test_bad_k_through_the_cli(tiny_run, k):
    result = CliRunner().invoke(cli, ["evaluate", str(tiny_run), "--k", k])
    assert result.exit_code != 0 and "k must be a positive integer" in result.output


def test_a_planted_pickle_is_refused_not_executed(tmp_path, tiny_run):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    marker = tmp_path / "pwned"
    payload = pickle.dumps(Exploit(marker))
    # Where each tfvae file is expected, put a pickle instead.
    (run / "config.json").write_bytes(payload)
    result = CliRunner().invoke(cli, ["evaluate", str(run)])
    assert result.exit_code != 0 and "corrupt" in result.output
    (run / "config.json").write_text((tiny_run / "config.json").read_text())
    (run / "checkpoints" / "best.weights.h5").write_bytes(payload)
    result = CliRunner().invoke(cli, ["sample", str(run), "--out", str(tmp_path / "s.png")])
    assert result.exit_code != 0 and "cannot be read" in result.output
    assert not marker.exists()


@pytest.mark.slow
def test_deterministic_switch_gives_identical_metrics(tmp_path):
    kwargs = dict(epochs=1, hidden=(16,), latent_dim=2, iwae_k=3, verbose=0, figures=False,
                  deterministic=True, seed=5)
    a = tfvae.train(out=tmp_path / "a", **kwargs)
    b = tfvae.train(out=tmp_path / "b", **kwargs)
    assert a.history[0]["loss"] == b.history[0]["loss"]
    assert a.evaluation == b.evaluation


def test_manifest_paths_must_stay_inside_the_export(tmp_path):
    import json

    from tfvae.errors import RunDirError
    from tfvae.export import FORMAT, read_manifest

    (tmp_path / "manifest.json").write_text(json.dumps(
        {"format": FORMAT, "format_version": 2,
         "files": {"../../etc/passwd": {"sha256": "0", "bytes": 1}}}))
    with pytest.raises(RunDirError, match="outside its directory"):
        read_manifest(tmp_path)


def test_export_of_a_run_that_never_finished_an_epoch(tmp_path, tiny_run):
    run = tmp_path / "unfinished"
    run.mkdir()
    (run / "config.json").write_text((tiny_run / "config.json").read_text())
    out = tmp_path / "export"
    result = CliRunner().invoke(cli, ["export", str(run), "--out", str(out)])
    assert result.exit_code != 0 and "never finished an epoch" in result.output
    assert "Traceback" not in result.output and not out.exists()
