"""Checkpoints every epoch, --resume, and surviving a SIGKILL mid-epoch."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

import tfvae
from tfvae import runs, training
from tfvae.errors import RunDirError
from tfvae.runs.recorder import RunRecorder

SMALL = dict(hidden=(32,), latent_dim=2, iwae_k=5, verbose=0, figures=False)


@pytest.mark.slow
def test_resume_continues_from_the_last_epoch(tmp_path):
    out = tmp_path / "run"
    tfvae.train(out=out, epochs=2, **SMALL)
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


def test_a_training_state_cut_short_is_refused_as_such(tmp_path):
    # TensorFlow's reader raises IndexError ("Read less bytes than requested") on a data
    # file cut short, which the command once took for a damaged compile cache.
    out = tmp_path / "run"
    tfvae.train(out=out, epochs=1, hidden=(32,), latent_dim=2, iwae_k=2, verbose=0,
                figures=False)
    (data,) = (out / "checkpoints" / "state").glob("epoch-0001.data-*")
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(RunDirError, match="training state .* cannot be restored .*Read less "
                                          "bytes than requested.*start a new run"):
        tfvae.train(resume=out, epochs=2, verbose=0, figures=False)


def _cli(*args):
    return [sys.executable, "-m", "tfvae_cli.main", *args]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path):
    options = ["--epochs", "4", "--hidden", "64", "--latent-dim", "2", "--iwae-k", "20",
               "--seed", "3"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cli("train", *options, "--out", str(killed)), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pointer = killed / "checkpoints" / "resume.json"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if pointer.exists() and json.loads(pointer.read_text())["epoch"] >= 1:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "training ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    done = json.loads(pointer.read_text())["epoch"]
    assert 1 <= done < 4

    resumed = subprocess.run(_cli("train", "--resume", str(killed)), env=env,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    history = json.loads((killed / "metrics.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]  # no completed epoch lost

    straight = tmp_path / "straight"
    full = subprocess.run(_cli("train", *options, "--out", str(straight)), env=env,
                          capture_output=True, text=True, timeout=600)
    assert full.returncode == 0, full.stderr[-2000:]
    a = json.loads((killed / "evaluation.json").read_text())
    b = json.loads((straight / "evaluation.json").read_text())
    # Different noise after the restart, same training: within a few nats.
    assert abs(a["elbo"] - b["elbo"]) < 6.0, (a["elbo"], b["elbo"])


@pytest.mark.slow
def test_ctrl_c_leaves_a_resumable_run_and_says_how(tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = tmp_path / "interrupted"
    proc = subprocess.Popen(
        _cli("train", "--epochs", "50", "--hidden", "32", "--latent-dim", "2", "--out", str(out)),
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pointer = out / "checkpoints" / "resume.json"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not pointer.exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert f"tfvae train --resume {out}" in stderr
    assert "Traceback" not in stderr
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"
    assert json.loads(pointer.read_text())["epoch"] >= 1


def test_best_weights_are_those_of_the_best_epoch_and_last_those_of_the_last(tmp_path, make_model,
                                                                              binary_images):
    # best.weights.h5 is a copy of last.weights.h5 when an epoch improves, and
    # stays as it was when one does not.
    import numpy as np

    from tfvae._keras import keras

    model = make_model("gaussian")
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.fit(binary_images[:64], epochs=1, batch_size=32, verbose=0)
    recorder = RunRecorder(tmp_path, monitor="loss")
    recorder.set_model(model)
    recorder.on_train_begin()
    recorder.on_epoch_begin(0)
    recorder.on_epoch_end(0, {"loss": 2.0})  # improves: best = these weights
    first = [w.copy() for w in model.get_weights()]
    model.set_weights([w + 1.0 for w in first])
    recorder.on_epoch_begin(1)
    recorder.on_epoch_end(1, {"loss": 3.0})  # worse: best stays

    def weights_of(name):
        other = make_model("gaussian")
        other.load_weights(str(tmp_path / runs.CHECKPOINTS / name))
        return other.get_weights()

    for got, want in zip(weights_of(runs.BEST), first, strict=True):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(weights_of(runs.LAST), first, strict=True):
        np.testing.assert_array_equal(got, want + 1.0)
    assert recorder.record.best_epoch == 1 and recorder.record.epoch == 2


def test_weights_files_hold_the_weights_alone_and_load_into_any_model(tmp_path, make_model,
                                                                      binary_images, caplog):
    # The optimizer's slots live in the training state; the weights files leave them
    # out (a third of the bytes with Adam) and still load with Keras' own method.
    import h5py
    import numpy as np

    from tfvae._keras import keras
    from tfvae.runs.store import load_weights, save_weights

    model = make_model("bernoulli")
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.fit(binary_images[:64], epochs=1, batch_size=32, verbose=0)
    ours, keras_own = tmp_path / "ours.weights.h5", tmp_path / "keras.weights.h5"
    save_weights(model, ours)
    model.save_weights(str(keras_own))
    with h5py.File(ours) as f, h5py.File(keras_own) as g:
        assert "optimizer" not in f and "optimizer" in g
    assert ours.stat().st_size < 0.5 * keras_own.stat().st_size
    want = model.get_weights()  # the estimator's baseline state included
    for path in (ours, keras_own):
        fresh = make_model("bernoulli")
        fresh.load_weights(str(path))  # a user's model: Keras' own method
        for got, expected in zip(fresh.get_weights(), want, strict=True):
            np.testing.assert_array_equal(got, expected)
        trained = make_model("bernoulli")
        trained.compile(optimizer=keras.optimizers.Adam(1e-3))
        trained.fit(binary_images[:64], epochs=1, batch_size=32, verbose=0)
        slots = [v.numpy() for v in trained.optimizer.variables]
        with caplog.at_level("WARNING"):
            load_weights(trained, path)  # into a model with slots: they stay
        assert "Skipping variable loading" not in caplog.text
        for got, expected in zip(trained.get_weights(), want, strict=True):
            np.testing.assert_array_equal(got, expected)
        for var, before in zip(trained.optimizer.variables, slots, strict=True):
            np.testing.assert_array_equal(var.numpy(), before)


@pytest.mark.parametrize("name", ["gaussian", "bernoulli", "sbn", "ae-gmm"])
def test_weights_writer_writes_what_keras_walk_writes(tmp_path, make_model, binary_images,
                                                      name):
    # The writer walks the model once, as Keras' saving does each time (optimizers
    # left out), then only writes: the same groups, names and values as that walk,
    # and after an update the new values.
    import h5py
    import numpy as np
    from tf_keras.src.saving import saving_lib

    from tfvae._keras import keras
    from tfvae.runs.store import WeightsWriter

    model = make_model(name)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.fit(binary_images[:64], epochs=1, batch_size=32, verbose=0)

    def keras_walk(path):
        store = saving_lib.H5IOStore(str(path), mode="w")
        saving_lib._save_state(model, weights_store=store, assets_store=None, inner_path="",
                               visited_trackables={id(model.optimizer)})
        store.close()

    def contents(path):
        found = {}
        with h5py.File(path) as f:
            f.visititems(lambda key, obj: found.__setitem__(
                key, obj[()] if isinstance(obj, h5py.Dataset) else None))
        return found

    writer = WeightsWriter(model)
    for step in range(2):
        ours, theirs = tmp_path / f"ours{step}.weights.h5", tmp_path / f"keras{step}.h5"
        writer(ours)
        keras_walk(theirs)
        got, want = contents(ours), contents(theirs)
        assert sorted(got) == sorted(want) and any("vars/0" in key for key in got)
        for key, value in want.items():
            if value is not None:
                np.testing.assert_array_equal(got[key], value)
        model.fit(binary_images[:64], epochs=1, batch_size=32, verbose=0)  # new values
    before, after = contents(tmp_path / "ours0.weights.h5"), contents(tmp_path / "ours1.weights.h5")
    assert any(not np.array_equal(before[key], after[key])
               for key in before if before[key] is not None)


def test_weights_edited_in_place_are_refused_by_their_digest(tmp_path):
    # HDF5 keeps no checksums of its data: a same-size edit read without a word, and a
    # new user's evaluation gave an ELBO of -98,667. tfvae's files carry a digest.
    import h5py
    import numpy as np

    from tfvae.runs.store import WeightsChanged, check_digest, load_model

    out = tmp_path / "run"
    tfvae.train(out=out, epochs=1, hidden=(32,), latent_dim=2, iwae_k=2, verbose=0,
                figures=False)
    best = out / "checkpoints" / "best.weights.h5"
    assert check_digest(best) is True
    load_model(out, "best")  # intact: loads
    with h5py.File(best, "r") as f:
        kernels = []
        f.visititems(lambda name, obj: kernels.append(obj) if isinstance(obj, h5py.Dataset)
                     and obj.ndim == 2 else None)
        offset, size = kernels[0].id.get_offset(), kernels[0].id.get_storage_size()
    data = bytearray(best.read_bytes())
    data[offset:offset + size // 4] = bytes(b ^ 0xFF for b in data[offset:offset + size // 4])
    best.write_bytes(bytes(data))  # the same size, 1/4 of a kernel inverted
    with pytest.raises(WeightsChanged):
        check_digest(best)
    with pytest.raises(RunDirError, match="was changed after tfvae wrote it.*--checkpoint last"):
        load_model(out, "best")
    load_model(out, "last")  # the other checkpoint is untouched
    # Keras' own files have no digest: read as they are.
    model, _ = load_model(out, "last")
    model.save_weights(str(tmp_path / "keras.weights.h5"))
    assert check_digest(tmp_path / "keras.weights.h5") is False
    assert np.isfinite(model.get_weights()[0]).all()


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
    from it every epoch (and on resuming), skip the 5-10 ms flush; final statuses do not."""
    from tfvae.runs import layout, record

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
