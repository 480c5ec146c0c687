"""Checkpoints every epoch, --resume, surviving a SIGKILL mid-epoch, and the weights'
digests that the training record keeps."""

import json
import os
import signal
import subprocess
import sys

import pytest
from conftest import SMALL_RUN, recorder_epoch

import tfvae
from tfvae import runs, training
from tfvae.errors import RunDirError
from tfvae.runs import layout, record, store


@pytest.mark.slow
def test_resume_continues_from_the_last_epoch(tmp_path):
    out = tmp_path / "run"
    tfvae.train(out=out, epochs=2, **SMALL_RUN)
    state = json.loads((out / "checkpoints" / "resume.json").read_text())
    assert state["epoch"] == 2 and len(state["history"]) == 2
    saved = sorted(p.name for p in (out / "checkpoints" / "state").iterdir())
    assert all(name.startswith("epoch-0002.") for name in saved)  # older states pruned

    # The full state (optimizer included) comes back.
    config = runs.load_config(out)
    model = runs.build_model(config)
    model.compile(optimizer=tfvae.keras.optimizers.Adam(config.lr))
    training._restore_state(model, out / "checkpoints" / state["prefix"], out)
    data = json.loads((out / "run.json").read_text())["data"]
    steps_per_epoch = -(-data["train"] // config.batch_size)
    assert int(model.optimizer.iterations.numpy()) == 2 * steps_per_epoch

    with pytest.raises(RunDirError, match="completed all 2 epochs"):
        tfvae.train(resume=out, verbose=0)
    with pytest.raises(RunDirError, match="--epochs 1 is fewer"):
        tfvae.train(resume=out, epochs=1, verbose=0)
    run = tfvae.train(resume=out, epochs=3, verbose=0, figures=False)
    assert [h["epoch"] for h in run.history] == [1, 2, 3]
    assert run.status["status"] == "completed" and run.status["epochs_completed"] == 3
    assert run.config.epochs == 3
    with pytest.raises(tfvae.ConfigError, match="only epochs"):
        tfvae.train(resume=out, epochs=4, lr=0.1)


@pytest.mark.slow
def test_a_run_with_no_completed_epoch_starts_again_on_resume(tmp_path):
    out = tmp_path / "fresh"
    (out / "checkpoints" / "state").mkdir(parents=True)
    (out / "config.json").write_text(tfvae.Config(hidden=(32,), latent_dim=2).to_json())
    (out / "checkpoints" / "state" / "epoch-0001.index").write_bytes(b"partial")
    run = tfvae.train(resume=out, epochs=1, verbose=0, figures=False)
    assert [h["epoch"] for h in run.history] == [1]
    assert run.status["status"] == "completed"


def test_a_training_state_cut_short_is_refused_as_such(copy_run):
    run = copy_run()
    # TensorFlow's reader raises IndexError ("Read less bytes than requested") on a data
    # file cut short, which the command once took for a damaged compile cache.
    (data,) = (run / "checkpoints" / "state").glob("epoch-0002.data-*")
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(RunDirError, match="training state .* cannot be restored .*Read less "
                                          "bytes than requested.*start a new run"):
        tfvae.train(resume=run, epochs=3, verbose=0, figures=False)


#: ``SCRIPT OUT EPOCH``: trains a run into OUT and SIGKILLs itself once the first step
#: of EPOCH (counted from 1) has run, before that epoch is recorded: mid-epoch, every time.
KILL_MID_EPOCH = """
import os, signal, sys
import tfvae

out, kill_epoch = sys.argv[1], int(sys.argv[2])

class KillMidEpoch(tfvae.keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch + 1

    def on_train_batch_end(self, batch, logs=None):
        if self.epoch == kill_epoch:
            os.kill(os.getpid(), signal.SIGKILL)

tfvae.train(out=out, epochs=4, hidden=(64,), latent_dim=2, iwae_k=20, seed=3, verbose=0,
            callbacks=[KillMidEpoch()])
"""


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    killed = tmp_path / "killed"
    proc = subprocess.run([sys.executable, "-c", KILL_MID_EPOCH, str(killed), "3"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    pointer = killed / "checkpoints" / "resume.json"
    assert json.loads(pointer.read_text())["epoch"] == 2  # epoch 3 was cut short

    resumed = subprocess.run([sys.executable, "-m", "tfvae_cli.main", "train", "--resume",
                              str(killed)], env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    history = json.loads((killed / "metrics.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]  # no completed epoch lost

    straight = tfvae.train(out=tmp_path / "straight", epochs=4, hidden=(64,), latent_dim=2,
                           iwae_k=20, seed=3, verbose=0, figures=False)
    a = json.loads((killed / "evaluation.json").read_text())
    # Different noise after the restart, same training: within a few nats.
    assert abs(a["elbo"] - straight.evaluation["elbo"]) < 6.0, (a, straight.evaluation)


def test_best_weights_are_those_of_the_best_epoch_and_last_those_of_the_last(
        recorder, tmp_path, make_model):
    # best.weights.h5 is a copy of last.weights.h5 when an epoch improves, and stays as it
    # was when one does not; both are Keras' own files, which a fresh model loads with
    # load_weights, and the record keeps the SHA-256 of each as written.
    import numpy as np

    model = recorder.model
    recorder_epoch(recorder, 0, 2.0)  # improves: best = these weights
    first = [w.copy() for w in model.get_weights()]
    digests = record.read(tmp_path).weights
    assert digests[runs.LAST] == digests[runs.BEST]
    model.set_weights([w + 1.0 for w in first])
    recorder_epoch(recorder, 1, 3.0)  # worse: best stays

    def weights_of(name):
        other = make_model("gaussian")
        other.load_weights(str(tmp_path / runs.CHECKPOINTS / name))
        return other.get_weights()

    for got, want in zip(weights_of(runs.BEST), first, strict=True):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(weights_of(runs.LAST), first, strict=True):
        np.testing.assert_array_equal(got, want + 1.0)
    state = record.read(tmp_path)
    assert state.best_epoch == 1 and state.epoch == 2 and recorder.record == state
    assert state.weights[runs.BEST] == digests[runs.BEST] != state.weights[runs.LAST]
    for name in (runs.LAST, runs.BEST):
        path = tmp_path / runs.CHECKPOINTS / name
        assert state.weights[name] == {"sha256": tfvae.files.sha256(path),
                                       "bytes": path.stat().st_size}


def _flip_a_kernel(path):
    """Inverts a quarter of a kernel's bytes in place: the same size, other weights."""
    import h5py

    with h5py.File(path, "r") as f:
        kernels = []
        f.visititems(lambda name, obj: kernels.append(obj) if isinstance(obj, h5py.Dataset)
                     and obj.ndim == 2 else None)
        offset, size = kernels[0].id.get_offset(), kernels[0].id.get_storage_size()
    data = bytearray(path.read_bytes())
    data[offset:offset + size // 4] = bytes(b ^ 0xFF for b in data[offset:offset + size // 4])
    path.write_bytes(bytes(data))


def _no_wait(seconds):
    raise AssertionError("waited for a writer, yet nobody holds the run's lock")


def test_weights_edited_in_place_are_refused_by_their_digest(copy_run, monkeypatch):
    run = copy_run()
    # HDF5 keeps no checksums of its data: a same-size edit read without a word, and a
    # new user's evaluation gave an ELBO of -98,667. The record keeps each file's SHA-256.
    monkeypatch.setattr(store, "_pause", _no_wait)  # nobody writes this run: refused at once
    best = run / "checkpoints" / "best.weights.h5"
    store.load_model(run, "best")  # intact: loads
    _flip_a_kernel(best)
    edited = best.read_bytes()
    with pytest.raises(store.WeightsChanged, match=(
            f"checkpoint {best} was changed after tfvae wrote it.*--checkpoint last.*"
            f"tfvae train --resume {run}")) as info:
        store.load_model(run, "best")
    assert isinstance(info.value, RunDirError)
    assert best.read_bytes() == edited  # refused, never removed or repaired
    store.load_model(run, "last")  # the other checkpoint is untouched
    digest = record.read(run).weights[runs.BEST]
    with pytest.raises(store.WeightsChanged, match="best.weights.h5 does not have the SHA-256"):
        store.load_weights(store.build_model(runs.load_config(run)), best, digest)


def test_weights_without_a_recorded_digest_load_as_they_are(copy_run):
    run = copy_run()
    # Records of earlier versions (their digest was inside the file) and Keras' own files
    # in a folder with no record have nothing to check against.
    import numpy as np

    path = run / "checkpoints" / "resume.json"
    data = json.loads(path.read_text())
    del data["weights"]
    path.write_text(json.dumps(data))
    _flip_a_kernel(run / "checkpoints" / "best.weights.h5")
    store.load_model(run, "best")
    path.unlink()
    model, _ = store.load_model(run, "last")
    model.set_weights([w * 2.0 for w in model.get_weights()])
    model.save_weights(str(run / "checkpoints" / "last.weights.h5"))
    loaded, _ = store.load_model(run, "last")
    for got, want in zip(loaded.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)


def _new_last(run):
    """Writes other weights as the run's last.weights.h5, as training does; returns
    them and their digest (not yet in the record)."""
    model, _ = store.load_model(run, "last")
    model.set_weights([w + 0.5 for w in model.get_weights()])
    digest = store.save_weights(model, run / "checkpoints" / "last.weights.h5")
    return model.get_weights(), digest


def _commit(run, digest):
    """Writes the record with ``digest`` for last.weights.h5, as training does next."""
    state = record.read(run)
    record.write(run, record.Record(**{**state.to_dict(),
                                       "weights": {**state.weights, runs.LAST: digest}}))


def test_a_reader_waits_for_the_record_of_weights_a_writer_just_replaced(copy_run, monkeypatch):
    run = copy_run()
    # Training replaces the weights files, then writes the record with their digests: a
    # reader between the two meets new weights and the previous record. While a process
    # holds the run's lock, the reader waits for the record to be written again.
    import numpy as np

    want, digest = _new_last(run)
    waits = []

    def writer_commits(seconds):  # the writer finishes its epoch while the reader waits
        waits.append(seconds)
        if len(waits) == 3:
            _commit(run, digest)

    monkeypatch.setattr(store, "_pause", writer_commits)
    with layout.RunLock(run):  # the writer
        model, _ = store.load_model(run, "last")
    assert len(waits) == 3
    for got, expected in zip(model.get_weights(), want, strict=True):
        np.testing.assert_array_equal(got, expected)


def test_a_reader_refuses_weights_that_never_match_the_record_of_a_writer(copy_run, monkeypatch):
    run = copy_run()
    # ... and refuses them when the record does not come within RECORD_WAIT.
    clock = [0.0]

    def pause(seconds):
        clock[0] += seconds

    monkeypatch.setattr(store, "_pause", pause)
    monkeypatch.setattr(store, "_clock", lambda: clock[0])
    _new_last(run)
    with layout.RunLock(run), pytest.raises(store.WeightsChanged, match="was changed"):
        store.load_model(run, "last")
    assert store.RECORD_WAIT <= clock[0] < store.RECORD_WAIT + 1.0


def test_weights_replaced_while_they_load_are_checked_again(copy_run, monkeypatch):
    run = copy_run()
    # What is loaded is what was digested: a file renamed onto the name during the load
    # (here an unrecorded one) is checked, and refused, rather than trusted.
    monkeypatch.setattr(store, "_pause", _no_wait)
    model = store.build_model(runs.load_config(run))
    real, calls = model.load_weights, []

    def replaced_meanwhile(path):
        calls.append(path)
        if len(calls) == 1:
            _new_last(run)
        return real(path)

    model.load_weights = replaced_meanwhile
    with pytest.raises(store.WeightsChanged, match="was changed"):
        store.load_model(run, "last", into=model)
    assert len(calls) == 1


def test_replaced_files_get_the_mode_open_would_give(tmp_path):
    # A temporary file and a rename, yet not mkstemp's 0600: what the umask allows.
    import os
    import stat

    from tfvae import files

    mask = os.umask(0o022)
    os.umask(mask)
    for durable in (True, False):
        path = tmp_path / f"f{durable}.json"
        files.atomic_write_json(path, {"a": 1}, durable=durable)
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask


def test_the_commit_point_is_flushed_to_disk_and_its_copies_are_not(tmp_path, monkeypatch):
    """resume.json is fsynced before its rename; metrics and the training status, rewritten
    from it every epoch (and on resuming), skip the flush; final statuses do not."""

    flushed = []
    real_fsync = os.fsync

    def fsync(fd):
        name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))  # .NAME.random.tmp
        flushed.append(name[1:].rsplit(".", 2)[0])
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    (tmp_path / layout.CHECKPOINTS).mkdir()
    state = record.Record(1, record.Record.prefix_for(1), [{"epoch": 1, "loss": 2.0}], 2.0, 1,
                          "loss")
    record.write(tmp_path, state)
    record.write_metrics(tmp_path, state.history)
    record.write_status(tmp_path, tfvae.Config(), "training", state, durable=False)  # per epoch
    assert flushed == [layout.RESUME]
    record.write_status(tmp_path, tfvae.Config(), "completed", state)
    assert flushed == [layout.RESUME, layout.STATUS]
    assert json.loads((tmp_path / layout.CHECKPOINTS / layout.RESUME).read_text())["epoch"] == 1
    assert json.loads((tmp_path / layout.METRICS_JSON).read_text()) == state.history
    assert json.loads((tmp_path / layout.STATUS).read_text())["status"] == "completed"



def test_best_is_a_copy_so_an_edit_of_one_checkpoint_leaves_the_other(tmp_path):
    """``best`` is written as a copy of ``last``: editing one in place leaves the other."""
    import os

    from tfvae.runs.recorder import _copy

    last, best = tmp_path / "last", tmp_path / "best"
    last.write_bytes(b"epoch 1")
    best.write_bytes(b"stale")
    _copy(last, best)
    assert best.read_bytes() == b"epoch 1" and not os.path.samefile(last, best)
    with open(best, "ab") as edit:
        edit.write(b"!")
    assert last.read_bytes() == b"epoch 1"
    user = tmp_path / "user"
    user.write_bytes(b"mine")
    best.unlink()
    best.symlink_to(user)
    with pytest.raises(OSError):  # a link planted at the target is never written through
        _copy(last, best)
    assert user.read_bytes() == b"mine"
