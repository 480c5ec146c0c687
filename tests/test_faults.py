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

import pytest
from click.testing import CliRunner
from conftest import SMALL_RUN, recorder_epoch
from tfvae_cli.main import cli

import tfvae
from tfvae import files
from tfvae.errors import Interrupted, RunDirError
from tfvae.runs import layout


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
        tfvae.train(out=out, epochs=1, **SMALL_RUN)
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
        tfvae.train(out=out, epochs=1, **SMALL_RUN)
    status, _ = _records_agree(out)
    assert status["status"] == "interrupted" and not (out / "evaluation.json").exists()
    monkeypatch.setattr(tfvae.evaluation, "evaluate", real)
    run = tfvae.train(resume=out, verbose=0, figures=False)
    assert run.status["status"] == "completed" and run.evaluation["k"] == 5
    assert [h["epoch"] for h in run.history] == [1]  # no epoch trained again


#: ``tfvae train --out OUT`` in which Ctrl-C comes as TensorFlow starts to load.
CTRL_C_AS_TENSORFLOW_LOADS = """
import importlib.abc, os, signal, sys

class CtrlC(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow":
            os.kill(os.getpid(), signal.SIGINT)
        return None

sys.meta_path.insert(0, CtrlC())
from tfvae_cli.main import main
sys.argv = ["tfvae", "train", "--out", sys.argv[1]]
main()
"""


def test_ctrl_c_while_tensorflow_loads_says_nothing_was_written(tmp_path):
    # The command names the run directory, then loads TensorFlow: a Ctrl-C then once
    # printed only "interrupted", for a directory that was never made.
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-c", CTRL_C_AS_TENSORFLOW_LOADS, str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 130, done.stderr[-2000:]
    assert f"run directory: {out}" in done.stderr.splitlines()[0], done.stderr[-2000:]
    assert "interrupted while TensorFlow loaded; nothing was written" in done.stderr
    assert "Traceback" not in done.stderr and not out.exists()


def _signal_mid_epoch(sig, at_epoch):
    """A callback that sends ``sig`` to this process once the first step of epoch
    ``at_epoch`` (from 1) has run."""

    class SignalMidEpoch(tfvae.keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch + 1

        def on_train_batch_end(self, batch, logs=None):
            if self.epoch == at_epoch and batch == 0:
                # tfvae.train handles it; without that handler SIGTERM would end pytest.
                assert signal.getsignal(sig) not in (signal.SIG_DFL, signal.default_int_handler)
                os.kill(os.getpid(), sig)

    return SignalMidEpoch()


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_mid_training_stops_cleanly_and_records_agree(tmp_path, monkeypatch, sig):
    import tfvae.training

    real = tfvae.training.train

    def with_signal(*args, **kwargs):
        return real(*args, callbacks=[_signal_mid_epoch(sig, 2)], **kwargs)

    monkeypatch.setattr(tfvae.training, "train", with_signal)
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["train", "--epochs", "60", "--hidden", "32",
                                      "--latent-dim", "2", "--out", str(out)])
    assert result.exit_code == 130, result.output[-2000:]
    assert f"interrupted after 1 of 60 epochs, all saved in {out}; continue with: tfvae " \
           f"train --resume {out}" in result.output and "Traceback" not in result.output
    status, record = _records_agree(out)
    assert status["status"] == "interrupted" and record["epoch"] == 1  # epoch 2 cut short
    monkeypatch.setattr(tfvae.training, "train", real)
    resumed = CliRunner().invoke(cli, ["train", "--resume", str(out), "--epochs", "2"])
    assert resumed.exit_code == 0, resumed.output[-2000:]
    status, after = _records_agree(out)
    assert status["status"] == "completed" and after["epoch"] == 2


# ------------------------------------------------------------------ the record


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda r, other: r.update(prefix=str(other)), "'prefix'"),
        (lambda r, other: r.update(epoch=3), "'prefix'"),
        (lambda r, other: r.pop("history"), "lacks ['history']"),
        (lambda r, other: r.update(epoch="1"), "'epoch' must be a positive integer"),
        (lambda r, other: r.update(history=r["history"] * 2), "one entry per completed epoch"),
        (lambda r, other: r.update(best_epoch=7), "'best_epoch'"),
        (lambda r, other: r["weights"][layout.LAST].update(sha256="0" * 63),
         "the digest of last.weights.h5"),
        (lambda r, other: r["weights"].update(other={}), "'weights' must map"),
    ],
)
def test_a_tampered_record_is_refused_and_nothing_is_written(tiny_run, copy_run, edit, words):
    out = copy_run()
    path = out / "checkpoints" / "resume.json"
    data = json.loads(path.read_text())
    edit(data, tiny_run.resolve() / "checkpoints" / "state" / "epoch-0002")
    path.write_text(json.dumps(data))

    def contents():
        return {p: p.read_bytes() for p in out.rglob("*")
                if p.is_file() and p.name != ".lock"}

    before = contents()
    with pytest.raises(RunDirError, match="not a valid training record") as info:
        tfvae.train(resume=out, epochs=3, verbose=0, figures=False)
    assert words in str(info.value)
    assert contents() == before


def test_resume_with_fewer_epochs_than_done_says_so(copy_run):
    out = copy_run()
    with pytest.raises(RunDirError, match="completed all 2 epochs"):
        tfvae.train(resume=out, verbose=0)


# ------------------------------------------------------------------ one writer


@pytest.mark.slow
def test_a_second_writer_is_refused_and_a_killed_one_leaves_no_lock(copy_run, hold_lock):
    out = copy_run()
    with hold_lock(out) as pid:
        with pytest.raises(RunDirError, match=f"in use by tfvae process {pid}"):
            tfvae.train(resume=out, epochs=3, verbose=0, figures=False)
    run_after = tfvae.train(resume=out, epochs=3, verbose=0, figures=False)
    assert run_after.status["epochs_completed"] == 3


def test_a_file_lock_has_one_holder_and_says_who(tmp_path):
    # flock locks belong to open files, so two FileLocks refuse each other even in one
    # process; the lock's note says who holds it.
    path = tmp_path / "x.lock"
    assert files.FileLock.holder(path) is None and not path.exists()  # a probe makes nothing
    first = files.FileLock(path, note="the first").acquire()
    assert first.held and files.FileLock.holder(path) == "the first"
    with pytest.raises(files.LockHeld, match="held by the first") as info:
        files.FileLock(path, note="the second").acquire()
    assert info.value.owner == "the first"
    first.release()
    assert not first.held and files.FileLock.holder(path) is None
    with files.FileLock(path, note="the second") as second:
        assert second.held and files.FileLock.holder(path) == "the second"
    with files.FileLock(path):
        assert files.FileLock.holder(path) == ""
    run = tmp_path / "run"
    run.mkdir()
    with layout.RunLock(run):
        with pytest.raises(RunDirError, match=f"in use by tfvae process {os.getpid()}"):
            layout.RunLock.check_free(run)
        assert layout.RunLock.is_held(run)
    layout.RunLock.check_free(run)
    assert not layout.RunLock.is_held(run)


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


def _full(path):
    """Writes a partial file at ``path``, then fails as a full disk does."""
    with open(path, "wb") as f:
        f.write(b"half")
    raise OSError(errno.ENOSPC, "No space left on device", str(path))


@pytest.mark.slow
def test_a_full_disk_keeps_the_last_good_epoch(tmp_path, monkeypatch):
    # The whole road: the failure, the statuses, and the resume once there is room.
    real, calls = tfvae.GaussianVAE.save_weights, []

    def full_after_epoch_one(self, path, *args, **kwargs):
        calls.append(path)
        if len(calls) > 1:  # epoch 1 wrote last (best is its copy); epoch 2 runs out of space
            _full(path)
        return real(self, path, *args, **kwargs)

    monkeypatch.setattr(tfvae.GaussianVAE, "save_weights", full_after_epoch_one)
    out = tmp_path / "run"
    with pytest.raises(files.StorageError) as info:
        tfvae.train(out=out, epochs=3, **SMALL_RUN)
    message = str(info.value)
    assert "is full" in message and str(out) in message and "epoch 1 is kept" in message
    assert f"tfvae train --resume {out}" in message
    status, record = _records_agree(out)
    assert status["status"] == "failed" and record["epoch"] == 1
    monkeypatch.setattr(tfvae.GaussianVAE, "save_weights", real)
    run = tfvae.train(resume=out, verbose=0, figures=False)
    assert run.status["status"] == "completed" and run.status["epochs_completed"] == 3


def test_a_full_disk_during_the_final_evaluation_says_to_resume(copy_run, monkeypatch):
    out = copy_run()
    # Each write of the end of a run says what to do, like training's: a new user saw
    # only "evaluation.json could not be written. Free some space".
    from pathlib import Path

    (out / layout.EVALUATION).unlink()  # a run whose final evaluation did not finish
    real = files.atomic_write_json

    def full(path, data, durable=True):
        if Path(path).name == layout.EVALUATION:
            raise files.storage_error(path, Path(path).name)
        return real(path, data, durable)

    monkeypatch.setattr(files, "atomic_write_json", full)
    with pytest.raises(files.StorageError) as info:
        tfvae.train(resume=out, verbose=0, figures=False)
    assert str(info.value).endswith(
        f"{layout.EVALUATION} could not be written. Free some space, then resume with "
        f"`tfvae train --resume {out}`")
    assert json.loads((out / "run.json").read_text())["status"] == "failed"
    monkeypatch.setattr(files, "atomic_write_json", real)
    run = tfvae.train(resume=out, verbose=0, figures=False)
    assert run.status["status"] == "completed" and (out / layout.EVALUATION).is_file()


def _fill_the_disk_at(where, monkeypatch, recorder):
    """Makes the next write of ``where`` (state, last or best weights) hit a full disk."""
    import tfvae.runs.recorder
    from tfvae._keras import tf

    def state(self, file_prefix, options=None):  # TensorFlow's shards go to PREFIX_temp/
        os.makedirs(f"{file_prefix}_temp")
        _full(f"{file_prefix}_temp/part-00000-of-00001")

    if where == "state":
        monkeypatch.setattr(tf.train.Checkpoint, "write", state)
    elif where == "last":
        monkeypatch.setattr(type(recorder.model), "save_weights",
                            lambda self, path, *a, **k: _full(path))
    else:
        monkeypatch.setattr(tfvae.runs.recorder, "_copy", lambda src, dst: _full(dst))


@pytest.mark.parametrize("where", ["state", "last", "best"])
def test_a_full_disk_in_an_epoch_keeps_the_one_before(recorder, tmp_path, monkeypatch, where):
    # Whatever write of an epoch meets the full disk, the previous epoch's files stay as
    # its record names them (weights matching their digests), with no partial file
    # beside them; once there is room, the next try records the epoch.
    from tfvae.runs import record, store

    checkpoints = tmp_path / layout.CHECKPOINTS

    def on_disk():
        return sorted(str(p.relative_to(checkpoints)) for p in checkpoints.rglob("*"))

    with monkeypatch.context() as patch:
        _fill_the_disk_at(where, patch, recorder)
        with pytest.raises(files.StorageError, match="is full.*no completed epoch is kept"):
            recorder_epoch(recorder, 0, 2.0)
    assert on_disk() == ["state"] and record.read(tmp_path) is None

    recorder_epoch(recorder, 0, 2.0)
    first = on_disk()
    assert first == ["best.weights.h5", "last.weights.h5", "resume.json", "state",
                     "state/epoch-0001.data-00000-of-00001", "state/epoch-0001.index"]
    with monkeypatch.context() as patch:
        _fill_the_disk_at(where, patch, recorder)
        with pytest.raises(files.StorageError) as info:
            recorder_epoch(recorder, 1, 1.0)  # improves: state, last and best are all written
    message = str(info.value)
    assert "is full" in message and "epoch 1 is kept" in message
    assert f"tfvae train --resume {tmp_path}" in message
    assert on_disk() == first
    state = record.read(tmp_path)
    assert state.epoch == 1 and recorder.record == state
    for name in (layout.LAST, layout.BEST):
        assert store.weights_digest(checkpoints / name) == state.weights[name]

    recorder_epoch(recorder, 1, 1.0)
    assert record.read(tmp_path).epoch == 2 and on_disk() == [
        name.replace("epoch-0001", "epoch-0002") for name in first]


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
