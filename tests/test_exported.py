"""The committed reference exports in ``exported/`` against what ``exported/build.sh`` makes today.

The quick tests rebuild no file: they compare each committed manifest with
the manifest the current exporter writes for an untrained model of the same
configuration (same format version, image shape, noise, signatures, file
names), check that the configuration is the one ``tfvae.train`` defaults give
today, that every listed file is there with its sha256, and run every file
once. The slow test runs ``build.sh`` into a temporary folder and compares
the two manifests' structure.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tfvae.export import manifest as manifest_lib

ROOT = Path(__file__).resolve().parents[1]
EXPORTED = ROOT / "exported"
#: The models build.sh exports, one folder each.
FAMILIES = ("gaussian", "bernoulli", "ae-gmm")
#: What build.sh asks of the exporter.
FORMATS, PRECISIONS, INT8 = ("tflite",), ("float16", "int8"), "dynamic-range"
#: Manifest entries that hold measured or learned values: compared by structure only.
LEARNED = {"created", "prior", "training", "metrics", "versions", "files"}


def committed(family) -> dict:
    return json.loads((EXPORTED / family / manifest_lib.MANIFEST).read_text())


@pytest.fixture(scope="module")
def train_data():
    """``(config_of(family), training rows)``: build.sh's configuration, filled by its data."""
    from tfvae.config import Config
    from tfvae.runs.families import with_precision
    from tfvae.runs.run_data import data_info, load_data, train_float

    cache = {}

    def config_of(family):
        if family not in cache:
            # build.sh: tfvae.train(model=family) defaults, the precision as a new run records it
            config = with_precision(Config(model=family))
            dataset, splits = load_data(config)
            cache[family] = config, data_info(dataset, splits), splits
        return cache[family]

    config, _, splits = config_of("ae-gmm")
    return config_of, train_float(splits, config.seed, limit=300)


def current_manifest(family, train_data, tmp_path) -> dict:
    """The manifest the current exporter writes for build.sh's model of ``family``, untrained.

    The same code path as ``export`` minus the training and the conversion:
    the graphs, their signatures and the manifest entries, with the committed
    run's record as the run information.
    """
    from tfvae.export.exporting import _manifest
    from tfvae.export.graph import export_module, signature_io
    from tfvae.runs.families import family as family_spec

    config_of, rows = train_data
    config, _, _ = config_of(family)
    spec = family_spec(family)
    model = spec.build(config)
    if spec.post_fit is not None:  # the mixture the sampler draws from
        spec.post_fit(model, rows, config.seed)
    module, info = export_module(model)
    io = signature_io(module, info)
    old = committed(family)
    run_info = {**old["training"], "evaluation": old["metrics"]}
    return _manifest(model, info, io, FORMATS, PRECISIONS, INT8, run_info, tmp_path)


def same_structure(a, b, where="manifest"):
    """Asserts that two JSON values have the same keys at every level and the same types."""
    if isinstance(a, dict):
        assert isinstance(b, dict), where
        assert sorted(a) == sorted(b), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for key in a:
            same_structure(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), f"{where}: {a!r} vs {b!r}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            same_structure(x, y, f"{where}[{i}]")
    elif isinstance(a, (int, float)) and not isinstance(a, bool):
        assert isinstance(b, (int, float)) and not isinstance(b, bool), f"{where}: {a!r}, {b!r}"
    else:
        assert type(a) is type(b), f"{where}: {a!r} vs {b!r}"


# ---------------------------------------------------------------- quick


@pytest.mark.parametrize("family", FAMILIES)
def test_committed_manifest_is_what_the_exporter_writes_today(family, train_data, tmp_path):
    old = committed(family)
    assert old["format"] == manifest_lib.FORMAT
    assert old["format_version"] == manifest_lib.FORMAT_VERSION, (
        "exported/ is stale: rebuild it with `bash exported/build.sh`")
    assert old["image_shape"] == [28, 28, 1]
    new = current_manifest(family, train_data, tmp_path)
    same_structure(new, {**old, "files": {}})
    for key in new.keys() - LEARNED:  # format, shapes, noise, signatures, file names
        assert new[key] == old[key], f"{key}: the exporter writes {new[key]!r}, not {old[key]!r}"
    assert {k: v for k, v in new["prior"].items() if not isinstance(v, list)} == {
        k: v for k, v in old["prior"].items() if not isinstance(v, list)}
    assert np.shape(new["prior"].get("means")) == np.shape(old["prior"].get("means"))


@pytest.mark.parametrize("family", FAMILIES)
def test_committed_training_record_is_build_sh_today(family, train_data):
    """The configuration and data are what ``tfvae.train(model=family)`` uses today."""
    config_of, _ = train_data
    config, data, _ = config_of(family)
    training = committed(family)["training"]
    today = json.loads(json.dumps(config.to_dict()))
    stored = training["config"]
    # A field added since the build is no staleness while build.sh leaves it at its default.
    defaults = json.loads(json.dumps(type(config)().to_dict()))
    added = set(today) - set(stored)
    assert set(stored) <= set(today), sorted(set(stored) - set(today))
    assert {k: today[k] for k in added} == {k: defaults[k] for k in added}
    assert {k: today[k] for k in stored} == stored
    assert training["data"] == data
    assert training["run"] == {
        "path": family, "checkpoint": "best", "status": "completed",
        "epochs_completed": config.epochs, "best_epoch": training["run"]["best_epoch"]}
    metrics = committed(family)["metrics"]
    assert metrics["n"] == data["test"] and metrics["elbo"] < 0


@pytest.mark.parametrize("family", FAMILIES)
def test_committed_files_are_listed_hashed_and_run(family):
    from tfvae.export import ExportDir

    folder = EXPORTED / family
    manifest = committed(family)
    on_disk = {p.name for p in folder.iterdir()} - {manifest_lib.MANIFEST}
    listed = {name for files in manifest["tflite"].values() for name in files.values()}
    assert set(manifest["files"]) == listed == on_disk
    assert listed == {manifest_lib.tflite_name(s, p) for s in manifest_lib.SIGNATURES
                      for p in PRECISIONS}
    for name, entry in manifest["files"].items():
        content = (folder / name).read_bytes()
        assert entry == {"sha256": hashlib.sha256(content).hexdigest(), "bytes": len(content)}
    exported = ExportDir(folder)  # verifies the hashes itself, and every output's shape
    assert exported.precisions == PRECISIONS
    for precision in PRECISIONS:
        images = exported.sample(3, seed=0, precision=precision)
        assert images.shape == (3, 784) and np.all((images >= 0) & (images <= 1))
        codes = exported.run("encode", {"x": images}, precision=precision)
        assert set(codes) == set(manifest["signatures"]["encode"]["outputs"])
        decoded = exported.run("decode", {"z": np.zeros([2, 20], np.float32)},
                               precision=precision)["image"]
        assert decoded.shape == (2, 784)


def test_exported_folder_is_compact():
    """Only the build script, its README and the three exports' LiteRT files and manifests."""
    names = {p.relative_to(EXPORTED).as_posix() for p in EXPORTED.rglob("*") if p.is_file()}
    expected = {"README.md", "build.sh"} | {
        f"{family}/{name}" for family in FAMILIES
        for name in [manifest_lib.MANIFEST, *committed(family)["files"]]}
    assert names == expected
    total = sum(p.stat().st_size for p in EXPORTED.rglob("*") if p.is_file())
    assert total < 10e6  # float16 and int8 only: float32 and the SavedModel stay out


def test_readme_python_runs_as_written(monkeypatch):
    """The Python blocks of exported/README.md run from the checkout's root."""
    text = (EXPORTED / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 2
    monkeypatch.chdir(ROOT)
    for block in blocks:
        namespace: dict = {}
        exec(compile(block, "exported/README.md", "exec"), namespace)
    assert namespace["images"].shape == (16, 784) and namespace["codes"].shape == (16, 20)
    assert str(committed("gaussian")["image_shape"]) in text  # [28, 28, 1]: (H, W, C)


# ---------------------------------------------------------------- slow


@pytest.mark.slow
def test_build_sh_rebuilds_the_same_structure(tmp_path):
    """``bash exported/build.sh OUT`` writes three exports shaped like the committed ones
    (trained for 1 epoch instead of 20: the structure does not depend on them)."""
    out = tmp_path / "exported"
    env = {**os.environ, "PYTHON": sys.executable, "TMPDIR": str(tmp_path), "EPOCHS": "1"}
    result = subprocess.run(["bash", str(EXPORTED / "build.sh"), str(out)], env=env,
                            capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(FAMILIES)  # no staging left over
    for family in FAMILIES:
        new = json.loads((out / family / manifest_lib.MANIFEST).read_text())
        old = committed(family)
        same_structure(new, old)
        for key in new.keys() - LEARNED:
            assert new[key] == old[key], key
        assert new["training"]["config"] == {**old["training"]["config"], "epochs": 1}
        assert new["training"]["data"] == old["training"]["data"]
        assert sorted(new["files"]) == sorted(old["files"])
        assert sorted(p.name for p in (out / family).iterdir()) == sorted(
            p.name for p in (EXPORTED / family).iterdir())
