"""Exports are replaced all or nothing, by one writer, and run only what they list.

Issue 31, classes 2 and 3 (and Ctrl-C during an export, a JSON bomb in a
manifest): an overwrite keeps the old export until the new one is whole and
never deletes a file that is not the export's own; a second export into the
same folder is refused with the first one's process id; a killed export's
staging folder is removed by the next one; every path a manifest names stays
in the export and is listed with a digest; every input is checked against
the model file's own signature, on both backends.

Two tiny Gaussian exports (float32 LiteRT only) are made once per module;
each test works on copies. The CLI tests use the session's ``tiny_run``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from tfvae_cli.main import cli

from tfvae import export
from tfvae.errors import Interrupted, RunDirError
from tfvae.export import exporting, litert
from tfvae.export import manifest as manifest_lib

TINY = dict(input_dim=784, hidden=(16,))


def _model(latent: int):
    from tfvae._keras import keras
    from tfvae.runs.families import family

    keras.utils.set_random_seed(latent)
    return family("gaussian").cls()(latent_dim=latent, **TINY)


@pytest.fixture(scope="module")
def models():
    """Two tiny Gaussian VAEs, with 2 and 3 latent units."""
    return {2: _model(2), 3: _model(3)}


@pytest.fixture(scope="module")
def exported(models, tmp_path_factory):
    """``latent -> export folder`` (float32 LiteRT and a SavedModel), made once."""
    root = tmp_path_factory.mktemp("exports")
    return {k: _export(m, root / f"z{k}") for k, m in models.items()}


def _export(model, out, **kwargs):
    export.export(model, out, precisions="float32", **kwargs)
    return out


@pytest.fixture
def copy(exported, tmp_path):
    """``copy(latent=2, name="e")``: a copy of a module export, to change."""

    def make(latent: int = 2, name: str = "e") -> Path:
        return Path(shutil.copytree(exported[latent], tmp_path / name))

    return make


def snapshot(folder: Path) -> dict:
    """Every entry under ``folder`` with the digest of its content (None for folders)."""
    return {p.relative_to(folder).as_posix():
            None if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*"))}


def hidden(folder: Path) -> list[str]:
    """Names beside ``folder`` that a staging export could have left."""
    return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith("."))


def edit_manifest(folder: Path, change) -> None:
    data = json.loads((folder / "manifest.json").read_text())
    change(data)
    (folder / "manifest.json").write_text(json.dumps(data))


# ---------------------------------------------------------------- overwriting


def test_overwrite_refuses_files_that_are_not_the_exports_and_changes_nothing(
        copy, models):
    out = copy()
    (out / "saved_model" / "extra.bin").write_bytes(b"mine")
    (out / "notes.txt").write_text("mine too")
    before = snapshot(out)
    for _ in range(2):  # and a retry is refused the same way, changing nothing
        with pytest.raises(export.ExportError,
                           match="not part of the export: notes.txt, saved_model/extra.bin"):
            export.export(models[3], out, precisions="float32", overwrite=True)
        assert snapshot(out) == before and hidden(out) == []
    (out / "notes.txt").unlink()
    (out / "saved_model" / "extra.bin").unlink()
    export.ExportDir(out)  # the export itself is whole


def test_overwrite_replaces_the_whole_export(copy, models):
    out = copy()
    manifest = export.export(models[3], out, formats="savedmodel", overwrite=True)
    assert manifest["latent_dim"] == 3 and manifest["tflite"] == {}
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "saved_model"]
    assert hidden(out) == []
    assert export.ExportDir(out).sample(4, backend="savedmodel").shape == (4, 784)


def test_a_failed_overwrite_leaves_the_old_export_as_it_was(copy, models, monkeypatch):
    out = copy()
    before = snapshot(out)
    real = litert.convert
    calls = []

    def fails_on_the_second(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise export.ExportError("conversion failed")
        return real(*args, **kwargs)

    monkeypatch.setattr(litert, "convert", fails_on_the_second)
    with pytest.raises(export.ExportError, match="conversion failed"):
        export.export(models[3], out, precisions="float32", overwrite=True)
    assert snapshot(out) == before and hidden(out) == []


def test_a_swap_that_fails_midway_puts_the_old_export_back(copy, models, monkeypatch):
    out = copy()
    before = snapshot(out)
    real = os.rename

    def rename(src, dst):
        if Path(dst) == out and Path(src).name == "export":  # the new export's move in
            raise OSError(errno.EIO, "Input/output error", str(dst))
        real(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError, match="Input/output"):
        export.export(models[3], out, formats="savedmodel", overwrite=True)
    monkeypatch.undo()
    assert snapshot(out) == before and hidden(out) == []


def test_a_folder_made_by_someone_else_during_the_export_is_left_alone(tmp_path, models,
                                                                       monkeypatch):
    out = tmp_path / "e"
    real = exporting._write_files

    def and_someone_writes_out(*args, **kwargs):
        mode = real(*args, **kwargs)
        out.mkdir()
        (out / "theirs.txt").write_text("theirs")
        return mode

    monkeypatch.setattr(exporting, "_write_files", and_someone_writes_out)
    with pytest.raises(export.ExportError, match="filled by another program"):
        export.export(models[2], out, formats="savedmodel")
    assert os.listdir(out) == ["theirs.txt"] and (out / "theirs.txt").read_text() == "theirs"
    assert hidden(out) == []


def test_a_linked_out_is_refused(copy, tmp_path, models):
    real = copy()
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(export.ExportError, match="symbolic link"):
        export.export(models[3], link, formats="savedmodel", overwrite=True)
    assert export.read_manifest(real)["latent_dim"] == 2


# ---------------------------------------------------------------- one writer


HOLD_STAGING = textwrap.dedent("""
    import sys
    from tfvae.export.manifest import Staging
    staging = Staging(sys.argv[1]).open()
    (staging.folder / "saved_model").mkdir()
    print("staged", flush=True)
    sys.stdin.read()
""")


@contextlib.contextmanager
def another_export(out: Path):
    """Yields the pid of another process that is building an export into ``out``."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD_STAGING, str(out)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "staged"
        yield holder.pid
    finally:
        holder.kill()  # SIGKILL: its staging folder is left behind, stale
        holder.wait()
        holder.stdin.close()
        holder.stdout.close()


def test_a_second_export_into_the_same_out_is_refused_with_the_first_ones_pid(
        tmp_path, models):
    out = tmp_path / "e"
    with another_export(out) as pid:
        assert manifest_lib.writer(out) == f"tfvae export process {pid}"
        for overwrite in (False, True):
            with pytest.raises(export.ExportError,
                               match=f"being written by another export .tfvae export process "
                                     f"{pid}.; wait for it to finish"):
                export.export(models[2], out, formats="savedmodel", overwrite=overwrite)
        assert not out.exists() and len(hidden(out)) == 1  # the other one's, untouched
    # Killed: its staging folder is stale, and the next export removes it.
    assert manifest_lib.writer(out) is None
    _export(models[2], out)
    assert hidden(out) == [] and export.ExportDir(out).manifest["latent_dim"] == 2


def test_stale_staging_folders_are_removed_and_only_those(tmp_path, models):
    out = tmp_path / "e"
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead = int(done.stdout)
    locked_once = tmp_path / f".e.tfvae-staging-{dead}-abc123"  # a lock nobody holds
    (locked_once / "export" / "saved_model").mkdir(parents=True)
    (locked_once / "lock").write_text(f"tfvae export process {dead}\n")
    unlocked = tmp_path / f".e.tfvae-staging-{dead}-def456"  # its process died before the lock
    unlocked.mkdir()
    others = [tmp_path / ".e.tfvae-staging-x", tmp_path / ".other.tfvae-staging-1-abc",
              tmp_path / ".e.notes"]
    for folder in others:
        folder.mkdir()
    _export(models[2], out, formats="savedmodel")
    assert not locked_once.exists() and not unlocked.exists()
    assert all(folder.is_dir() for folder in others)


# ---------------------------------------------------------------- killed exports


KILLED = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from tfvae._keras import keras
    from tfvae.export import export, litert
    from tfvae.runs.families import family

    out, when = Path(sys.argv[1]), sys.argv[2]
    if when == "converting":
        litert.convert = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
    else:  # between the two renames of the swap
        rename = os.rename

        def killed_midway(src, dst):
            rename(src, dst)
            if Path(dst).name == "previous":
                os.kill(os.getpid(), signal.SIGKILL)

        os.rename = killed_midway
    keras.utils.set_random_seed(3)
    model = family("gaussian").cls()(input_dim=784, hidden=(16,), latent_dim=3)
    export(model, out, precisions="float32", overwrite=True)
""")


def _killed(out: Path, when: str) -> None:
    done = subprocess.run([sys.executable, "-c", KILLED, str(out), when], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]


@pytest.mark.slow
def test_an_export_killed_while_converting_leaves_the_old_one_and_its_staging_is_cleaned(
        copy, models):
    out = copy()
    before = snapshot(out)
    _killed(out, "converting")
    assert snapshot(out) == before
    (stale,) = hidden(out)
    assert manifest_lib.writer(out) is None  # the kernel dropped its lock
    _export(models[3], out, overwrite=True)
    assert hidden(out) == [] and export.ExportDir(out).manifest["latent_dim"] == 3


@pytest.mark.slow
def test_a_swap_cut_short_by_kill_is_undone_by_the_next_export(copy, models):
    out = copy()
    before = snapshot(out)
    _killed(out, "swapping")
    assert not out.exists()  # the old export is aside, in the staging folder
    (stale,) = hidden(out)
    assert snapshot(out.parent / stale / "previous") == before
    with pytest.raises(export.ExportError, match="--overwrite"):  # the old export is back
        export.export(models[3], out, formats="savedmodel")
    assert snapshot(out) == before and hidden(out) == []
    export.ExportDir(out)


# ---------------------------------------------------------------- Ctrl-C and SIGTERM


def _interrupting(monkeypatch, sig, swallowed: bool):
    """Makes the first LiteRT conversion deliver ``sig`` to this process; ``swallowed``
    drops the KeyboardInterrupt as a TensorFlow finalizer does."""
    real = litert.convert

    def convert(*args, **kwargs):
        content = real(*args, **kwargs)
        if swallowed:
            with contextlib.suppress(KeyboardInterrupt):
                signal.raise_signal(sig)
        else:
            signal.raise_signal(sig)
        return content

    monkeypatch.setattr(litert, "convert", convert)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("swallowed", [False, True])
def test_a_signal_stops_the_export_and_leaves_the_old_export(copy, models, monkeypatch, sig,
                                                             swallowed):
    out = copy()
    before = snapshot(out)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    _interrupting(monkeypatch, sig, swallowed)
    with pytest.raises(Interrupted, match=f"the export was stopped; {out} keeps the export"):
        export.export(models[3], out, precisions="float32", overwrite=True)
    assert snapshot(out) == before and hidden(out) == []
    assert {s: signal.getsignal(s) for s in handlers} == handlers  # put back


def test_a_signal_during_the_swap_finishes_it_and_says_so(tmp_path, models, monkeypatch):
    out = tmp_path / "e"
    real = manifest_lib.Staging.commit

    def commit(self):
        signal.raise_signal(signal.SIGINT)  # recorded only: the swap is not cut short
        real(self)

    monkeypatch.setattr(manifest_lib.Staging, "commit", commit)
    with pytest.raises(Interrupted, match=f"as the export finished: {out} holds the new export"):
        export.export(models[2], out, formats="savedmodel")
    assert hidden(out) == [] and export.ExportDir(out).manifest["latent_dim"] == 2


@pytest.mark.parametrize("swallowed", [False, True])
def test_cli_export_stopped_by_sigterm_exits_130_and_leaves_nothing(tiny_run, tmp_path,
                                                                    monkeypatch, swallowed):
    out = tmp_path / "e"
    _interrupting(monkeypatch, signal.SIGTERM, swallowed)
    result = CliRunner().invoke(cli, ["export", str(tiny_run), "--out", str(out),
                                      "--quantize", "none"])
    assert result.exit_code == 130, result.output
    assert f"nothing was written to {out}" in result.output
    assert not out.exists() and hidden(out) == []


# ---------------------------------------------------------------- the CLI


def test_cli_refuses_an_overwrite_that_would_delete_files_and_a_second_writer(
        tiny_run, copy):
    out = copy()
    (out / "saved_model" / "extra.bin").write_bytes(b"mine")
    before = snapshot(out)
    runner = CliRunner()
    result = runner.invoke(cli, ["export", str(tiny_run), "--out", str(out), "--overwrite",
                                 "--quantize", "none"])
    assert result.exit_code == 1, result.output
    assert "not part of the export: saved_model/extra.bin" in result.output
    assert snapshot(out) == before
    fresh = out.parent / "fresh"
    with another_export(fresh) as pid:
        result = runner.invoke(cli, ["export", str(tiny_run), "--out", str(fresh)])
    assert result.exit_code == 1 and f"tfvae export process {pid}" in result.output
    assert "Traceback" not in result.output and not fresh.exists()


# ---------------------------------------------------------------- what a manifest names


def test_a_litert_entry_outside_the_export_or_unlisted_is_refused_verified_or_not(copy):
    out = copy()
    other = copy(3, "other")
    sampler = "sampler.tflite"
    (out / "spare.tflite").write_bytes((other / sampler).read_bytes())
    cases = {
        "../other/sampler.tflite": "outside its directory",
        str(other / sampler): "outside its directory",
        "spare.tflite": "tfvae names the files",
        "decoder.tflite": "tfvae names the files",  # listed, but another signature's
    }
    original = (out / "manifest.json").read_text()
    for name, words in cases.items():
        edit_manifest(out, lambda m, name=name: m["tflite"]["sample"].update(float32=name))
        for verify in (True, False):
            with pytest.raises(RunDirError, match=words):
                export.ExportDir(out, verify=verify)
        (out / "manifest.json").write_text(original)
    # Listed under the right name, but unlisted in the files table.
    edit_manifest(out, lambda m: m["files"].pop(sampler))
    with pytest.raises(RunDirError, match="not listed with a digest"):
        export.ExportDir(out, verify=False)


def test_a_listed_file_that_is_a_link_out_of_the_export_is_refused(copy):
    out = copy()
    other = copy(3, "other")
    (out / "sampler.tflite").unlink()
    (out / "sampler.tflite").symlink_to(other / "sampler.tflite")
    for verify in (True, False):
        with pytest.raises(RunDirError, match="outside its directory"):
            export.ExportDir(out, verify=verify)


def test_files_entries_must_be_plain_paths_with_digests(copy):
    out = copy()
    original = (out / "manifest.json").read_text()
    for name in ("saved_model/../decoder.tflite", "/etc/passwd", "./decoder.tflite",
                 "saved_model//saved_model.pb"):
        edit_manifest(out, lambda m, name=name: m["files"].update({name: {
            "sha256": "0" * 64, "bytes": 1}}))
        with pytest.raises(RunDirError, match="outside its directory"):
            export.ExportDir(out, verify=False)
        (out / "manifest.json").write_text(original)
    edit_manifest(out, lambda m: m["files"]["decoder.tflite"].update(sha256="abc"))
    with pytest.raises(RunDirError, match="no valid sha256"):
        export.ExportDir(out, verify=False)


def test_a_savedmodel_with_unlisted_files_is_not_loaded(copy):
    out = copy()
    (out / "saved_model" / "variables" / "variables.data-00001-of-00002").write_bytes(b"x")
    for verify in (True, False):
        with pytest.raises(export.ExportError, match="does not list: saved_model/variables/"):
            export.ExportDir(out, verify=verify).sample(2, backend="savedmodel")


# ---------------------------------------------------------------- inputs and signatures


@pytest.mark.parametrize("backend", ["tflite", "savedmodel"])
def test_every_call_is_checked_against_the_signature(exported, backend):
    d = export.ExportDir(exported[2])
    z = np.zeros((8, 3), np.float32)
    with pytest.raises(export.ExportError,
                       match=r"input 'z' of 'decode' has shape \[8, 3\], but the model takes "
                             r"\[n, 2\] float32"):
        d.run("decode", {"z": z}, backend=backend)
    for bad, words in [({"z": np.zeros(8)}, r"shape \[8\]"),
                       ({"z": np.zeros((2, 2, 1))}, r"shape \[2, 2, 1\]"),
                       ({"z": np.array([["a", "b"]])}, "holds <U1 values"),
                       ({"z": np.zeros((0, 2))}, "at least 1"),
                       ({"eps": np.zeros((2, 2))}, "takes the inputs"),
                       ({"z": [[0.0, 1.0], [1.0]]}, "not an array")]:
        with pytest.raises(export.ExportError, match=words):
            d.run("decode", bad, backend=backend)
    assert d.run("decode", {"z": np.zeros((5, 2), np.float64)}, backend=backend)[
        "image"].shape == (5, 784)
    # Several inputs must agree on the batch size (checked before anything runs).
    d.manifest["signatures"]["sample"]["inputs"]["u"] = {"shape": [-1], "dtype": "float32"}
    with pytest.raises(export.ExportError, match="one batch size"):
        d.run("sample", {"eps": np.zeros((4, 2)), "u": np.zeros(3)}, backend=backend)


def test_a_litert_model_checks_each_new_input_shape_against_the_file(exported):
    lite = export.LiteRTModel(exported[2] / "decoder.tflite")
    assert lite.input_shapes == {"z": (-1, 2)}
    for shape in [(8, 3), (8,), (2, 2, 1)]:
        with pytest.raises(export.ExportError, match=r"the file takes \[-1, 2\]"):
            lite(z=np.zeros(shape, np.float32))
    assert lite(z=np.zeros((8, 2), np.float32))["image"].shape == (8, 784)


def test_a_manifest_noise_that_disagrees_with_the_sampler_is_refused(copy):
    out = copy()
    edit_manifest(out, lambda m: m["noise"][0].update(shape=[5]))
    with pytest.raises(RunDirError, match="noise .* disagrees with the inputs"):
        export.ExportDir(out, verify=False)
    with pytest.raises(RunDirError, match="noise"):
        export.draw_noise(out, 8)


@pytest.mark.parametrize("backend", ["tflite", "savedmodel"])
def test_a_consistent_manifest_that_does_not_describe_the_model_is_refused(copy, backend,
                                                                           tmp_path):
    out = copy()  # latent 2; the manifest says 3 everywhere (digests still match)

    def widen(m):
        m["latent_dim"] = 3
        m["noise"][0]["shape"] = [3]
        m["signatures"]["sample"]["inputs"]["eps"]["shape"] = [-1, 3]
        m["signatures"]["decode"]["inputs"]["z"]["shape"] = [-1, 3]
        for entry in m["signatures"]["encode"]["outputs"].values():
            entry["shape"] = [-1, 3]

    edit_manifest(out, widen)
    d = export.ExportDir(out)
    with pytest.raises(export.ExportError, match="does not describe these files"):
        d.sample(8, backend=backend)
    with pytest.raises(export.ExportError, match="does not describe these files"):
        d.run("decode", {"z": np.zeros((8, 3), np.float32)}, backend=backend)
    result = CliRunner().invoke(cli, ["sample", str(out), "--n", "8", "--backend", backend,
                                      "--out", str(tmp_path / "s.npy")])
    assert result.exit_code == 1 and "does not describe these files" in result.output
    assert not (tmp_path / "s.npy").exists()


def _relist(folder: Path, name: str) -> None:
    """Lists ``name`` in the manifest with the digest of what it holds now (a forged export)."""
    content = (folder / name).read_bytes()
    entry = {"sha256": hashlib.sha256(content).hexdigest(), "bytes": len(content)}
    edit_manifest(folder, lambda m: m["files"].update({name: entry}))


def test_files_that_are_not_models_are_refused_though_their_digests_match(copy):
    out = copy()
    for name in ("sampler.tflite", "saved_model/saved_model.pb"):
        (out / name).write_bytes(b"not a model " * 100)
        _relist(out, name)
    d = export.ExportDir(out)
    with pytest.raises(export.ExportError, match="sampler.tflite is not a LiteRT model"):
        d.sample(2)
    with pytest.raises(export.ExportError, match="saved_model cannot be loaded"):
        d.sample(2, backend="savedmodel")


def test_a_litert_file_is_checked_against_its_digest_when_it_is_loaded(copy):
    out = copy()
    other = copy(3, "other")
    d = export.ExportDir(out)  # verified now; the file is swapped after
    shutil.copyfile(other / "sampler.tflite", out / "sampler.tflite")
    with pytest.raises(export.ExportError, match="sampler.tflite does not match its sha256"):
        d.sample(2)
    # Unverified, the swapped file still meets the model check.
    with pytest.raises(export.ExportError, match="does not describe these files"):
        export.ExportDir(out, verify=False).sample(2)


# ---------------------------------------------------------------- JSON bombs


@pytest.mark.parametrize("content", ["[" * 100_000 + "]" * 100_000,
                                     '{"format": "tfvae-export", "latent_dim": '
                                     + "9" * 5000 + "}",
                                     "{\"format\": \"tfvae-export\", \"x\": " + "{\"a\": " * 50_000
                                     + "1" + "}" * 50_001])
def test_a_json_bomb_manifest_is_refused(copy, tmp_path, content):
    out = copy()
    (out / "manifest.json").write_text(content)
    assert not export.is_export_dir(out)
    with pytest.raises(RunDirError, match="is not a valid tfvae export manifest"):
        export.read_manifest(out)
    result = CliRunner().invoke(cli, ["sample", str(out), "--n", "2",
                                      "--out", str(tmp_path / "s.npy")])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    with pytest.raises(export.ExportError, match="not a tfvae export"):
        export.check_out(out, overwrite=True)
