"""Runs survive what happens to users: interrupts, tampered records, two writers, full disks.

Each test reproduces a fault a user met (issue 13) and checks what a careful
user expects: a message that says what was kept and what to do, records that
agree with each other, and a run that continues as the message says.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

import tfvae
from tfvae import files
from tfvae.errors import Interrupted, RunDirError
from tfvae.runs import layout

SMALL = dict(hidden=(32,), latent_dim=2, iwae_k=5, verbose=0, figures=False)


def _cli(*args):
    return [sys.executable, "-m", "tfvae_cli.main", *args]


def _records_agree(out):
    """run.json, resume.json and the metrics files tell the same epoch count."""
    status = json.loads((out / "run.json").read_text())
    record = json.loads((out / "checkpoints" / "resume.json").read_text())
    history = json.loads((out / "metrics.json").read_text())
    rows = (out / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,seconds,")
    assert status["epochs_completed"] == record["epoch"] == len(history) == len(rows) - 1
    return status, record


# ------------------------------------------------------------------ interrupts


def test_interrupt_while_loading_data_writes_nothing(tmp_path, monkeypatch):
    import tfvae.training

    def interrupted(config):
        raise KeyboardInterrupt

    monkeypatch.setattr(tfvae.training, "load_data", interrupted)
    out = tmp_path / "run"
    with pytest.raises(Interrupted, match="before the run started; nothing was written"):
        tfvae.train(out=out, epochs=1, **SMALL)
    assert not out.exists()


@pytest.mark.slow
def test_interrupt_during_final_evaluation_then_resume_finishes_it(tmp_path, monkeypatch):
    import tfvae.evaluation

    real = tfvae.evaluation.evaluate

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tfvae.evaluation, "evaluate", interrupted)
    out = tmp_path / "run"
    with pytest.raises(Interrupted, match=f"during the final evaluation.*--resume {out}"):
        tfvae.train(out=out, epochs=1, **SMALL)
    status, _ = _records_agree(out)
    assert status["status"] == "interrupted" and not (out / "evaluation.json").exists()
    monkeypatch.setattr(tfvae.evaluation, "evaluate", real)
    run = tfvae.train(resume=out, verbose=0, figures=False)
    assert run.status["status"] == "completed" and run.evaluation["k"] == 5
    assert [h["epoch"] for h in run.history] == [1]  # no epoch trained again


def test_ctrl_c_while_tensorflow_loads_says_nothing_was_written(tmp_path):
    # The command names the run directory, then loads TensorFlow (about 2 s): a Ctrl-C
    # then once printed only "interrupted", for a directory that was never made.
    out = tmp_path / "run"
    proc = subprocess.Popen(_cli("train", "--out", str(out)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()
    assert "run directory" in line, line
    time.sleep(0.3)  # into the import (not the microseconds left of that line's echo)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr[-2000:]
    assert "interrupted while TensorFlow loaded; nothing was written" in stderr, stderr[-2000:]
    assert "Traceback" not in stderr and not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_mid_training_stops_cleanly_and_records_agree(tmp_path, sig):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = tmp_path / "run"
    proc = subprocess.Popen(
        _cli("train", "--epochs", "60", "--hidden", "32", "--latent-dim", "2", "--out",
             str(out)), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pointer = out / "checkpoints" / "resume.json"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not pointer.exists():
        time.sleep(0.05)
    time.sleep(0.3)  # somewhere in the next epoch
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    assert f"continue with: tfvae train --resume {out}" in stderr and "Traceback" not in stderr
    status, record = _records_agree(out)
    assert status["status"] == "interrupted" and 1 <= record["epoch"] < 60
    resumed = subprocess.run(_cli("train", "--resume", str(out), "--epochs",
                                  str(record["epoch"] + 1)), env=env, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    status, after = _records_agree(out)
    assert status["status"] == "completed" and after["epoch"] == record["epoch"] + 1


# ------------------------------------------------------------------ the record


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "one"
    tfvae.train(out=out, epochs=1, **SMALL)
    return out


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda r, other: r.update(prefix=str(other)), "'prefix'"),
        (lambda r, other: r.update(epoch=3), "'prefix'"),
        (lambda r, other: r.pop("history"), "lacks ['history']"),
        (lambda r, other: r.update(epoch="1"), "'epoch' must be a positive integer"),
        (lambda r, other: r.update(history=r["history"] * 2), "one entry per completed epoch"),
        (lambda r, other: r.update(best_epoch=7), "'best_epoch'"),
    ],
)
def test_a_tampered_record_is_refused_and_nothing_is_written(one_epoch, tmp_path, edit, words):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(one_epoch, run)
    path = run / "checkpoints" / "resume.json"
    data = json.loads(path.read_text())
    edit(data, one_epoch.resolve() / "checkpoints" / "state" / "epoch-0001")
    path.write_text(json.dumps(data))
    def contents():
        return {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"}

    before = contents()
    with pytest.raises(RunDirError, match="not a valid training record") as info:
        tfvae.train(resume=run, epochs=2, verbose=0, figures=False)
    assert words in str(info.value)
    assert contents() == before


def test_resume_with_fewer_epochs_than_done_says_so(one_epoch):
    with pytest.raises(RunDirError, match="completed all 1 epochs"):
        tfvae.train(resume=one_epoch, verbose=0)


# ------------------------------------------------------------------ one writer


@pytest.mark.slow
def test_a_second_writer_is_refused_and_a_killed_one_leaves_no_lock(one_epoch, tmp_path,
                                                                   hold_lock):
    import shutil

    run = tmp_path / "locked"
    shutil.copytree(one_epoch, run)
    with hold_lock(run) as pid:
        with pytest.raises(RunDirError, match=f"in use by tfvae process {pid}"):
            tfvae.train(resume=run, epochs=2, verbose=0, figures=False)
    run_after = tfvae.train(resume=run, epochs=2, verbose=0, figures=False)
    assert run_after.status["epochs_completed"] == 2


def test_two_new_runs_into_one_folder_exactly_one_proceeds(tmp_path):
    out = tmp_path / "race"
    results = []
    barrier = threading.Barrier(4)

    def start():
        barrier.wait()
        try:
            results.append(layout.create_run_dir(out))
        except RunDirError as exc:
            results.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    locks = [r for r in results if isinstance(r, layout.RunLock)]
    assert len(locks) == 1, results
    assert all("in use" in str(r) or "already holds" in str(r) for r in results
               if not isinstance(r, layout.RunLock))
    locks[0].release()


# ------------------------------------------------------------------ full disk


@pytest.mark.slow
def test_a_full_disk_keeps_the_last_good_epoch(tmp_path, monkeypatch):
    from tfvae.runs.store import WeightsWriter

    real = WeightsWriter.__call__
    calls = []

    def full_after_epoch_one(self, path):
        calls.append(path)
        if len(calls) > 1:  # epoch 1 wrote last (best is its copy); epoch 2 runs out of space
            with open(path.with_name(".tmp-partial-" + path.name), "wb") as f:
                f.write(b"half")
            os.unlink(path.with_name(".tmp-partial-" + path.name))
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(self, path)

    monkeypatch.setattr(WeightsWriter, "__call__", full_after_epoch_one)
    out = tmp_path / "run"
    with pytest.raises(files.StorageError) as info:
        tfvae.train(out=out, epochs=3, **SMALL)
    message = str(info.value)
    assert "is full" in message and str(out) in message and "epoch 1 is kept" in message
    assert f"tfvae train --resume {out}" in message
    status, record = _records_agree(out)
    assert status["status"] == "failed" and record["epoch"] == 1
    leftovers = sorted(p.name for p in (out / "checkpoints").rglob("*") if p.is_file())
    assert leftovers == ["best.weights.h5", "epoch-0001.data-00000-of-00001",
                         "epoch-0001.index", "last.weights.h5", "resume.json"]
    monkeypatch.setattr(WeightsWriter, "__call__", real)
    run = tfvae.train(resume=out, verbose=0, figures=False)
    assert run.status["status"] == "completed" and run.status["epochs_completed"] == 3


def test_a_full_disk_during_the_final_evaluation_says_to_resume(tmp_path, monkeypatch):
    # Each write of the end of a run says what to do, like training's: a new user saw
    # only "evaluation.json could not be written. Free some space".
    from pathlib import Path

    real = files.atomic_write_json

    def full(path, data, durable=True):
        if Path(path).name == layout.EVALUATION:
            raise files.storage_error(path, Path(path).name)
        return real(path, data, durable)

    monkeypatch.setattr(files, "atomic_write_json", full)
    out = tmp_path / "run"
    with pytest.raises(files.StorageError) as info:
        tfvae.train(out=out, epochs=1, **SMALL)
    assert str(info.value).endswith(
        f"{layout.EVALUATION} could not be written. Free some space, then resume with "
        f"`tfvae train --resume {out}`")
    assert json.loads((out / "run.json").read_text())["status"] == "failed"
    monkeypatch.setattr(files, "atomic_write_json", real)
    run = tfvae.train(resume=out, verbose=0, figures=False)
    assert run.status["status"] == "completed" and (out / layout.EVALUATION).is_file()


@pytest.mark.slow
def test_a_full_disk_while_writing_the_state_leaves_no_partial_state(tmp_path, monkeypatch):
    # Measured on a full 30 MiB tmpfs: TensorFlow had made PREFIX_temp/ for its shards.
    from tfvae._keras import tf

    def full(self, file_prefix, options=None):
        os.makedirs(f"{file_prefix}_temp")
        with open(f"{file_prefix}_temp/part-00000-of-00001", "wb") as f:
            f.write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device", file_prefix)

    monkeypatch.setattr(tf.train.Checkpoint, "write", full)
    out = tmp_path / "run"
    with pytest.raises(files.StorageError, match="is full.*no completed epoch is kept"):
        tfvae.train(out=out, epochs=2, **SMALL)
    assert not [p for p in (out / "checkpoints").rglob("*") if p.name.startswith("epoch-")]


def test_a_full_disk_while_copying_the_best_weights_is_a_storage_error(tmp_path, monkeypatch):
    # The first epoch always improves, so its best weights are copied from
    # its last ones: a full disk there leaves no partial file and no epoch.
    import tfvae.callbacks

    def full(src, dst):
        with open(dst, "wb") as f:
            f.write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))

    monkeypatch.setattr(tfvae.callbacks.shutil, "copyfile", full)
    out = tmp_path / "run"
    with pytest.raises(files.StorageError) as info:
        tfvae.train(out=out, epochs=2, **SMALL)
    assert "is full" in str(info.value) and "no completed epoch is kept" in str(info.value)
    names = sorted(p.name for p in (out / "checkpoints").rglob("*") if p.is_file())
    assert not any(n.startswith((".tmp", "epoch-")) or n == "best.weights.h5" for n in names)


def test_an_export_onto_a_full_disk_leaves_nothing_behind(tmp_path, monkeypatch, make_model):
    from tfvae.export import exporting

    def full(stage, *args, **kwargs):
        (stage / "decoder.tflite").write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(exporting, "_write_files", full)
    out = tmp_path / "export"
    with pytest.raises(files.StorageError, match="is full"):
        exporting.export(make_model("gaussian"), out)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# ------------------------------------------------------------------ data warnings


def test_data_that_look_wrong_give_a_warning(tmp_path):
    import numpy as np

    from tfvae import data
    from tfvae.errors import DataWarning

    x = np.random.default_rng(0).normal(size=(40, 16)).astype(np.float32)
    ds = data.from_arrays("negative", x, x[:5])
    with pytest.warns(DataWarning, match="outside \\[0, 1\\]"):
        data.prepare(ds, likelihood="gaussian", val_fraction=0)
    blank = np.zeros((40, 16), np.uint8)
    blank[:5] = np.random.default_rng(1).integers(0, 256, (5, 16))
    with pytest.warns(DataWarning, match="35 of 40 training images are blank"):
        data.prepare(data.from_arrays("blank", blank, blank[:5]), val_fraction=0)
    with pytest.warns(DataWarning, match="every value is 0"):
        data.prepare(data.from_arrays("zeros", blank * 0, blank[:5] * 0), val_fraction=0)
