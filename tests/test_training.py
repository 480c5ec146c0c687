"""tfvae.train and run directories, from Python."""

import json

import numpy as np
import pytest

import tfvae
from tfvae.errors import RunDirError
from tfvae.runs.recorder import RunRecorder


def test_run_directory_contents(tiny_run):
    config = json.loads((tiny_run / "config.json").read_text())
    assert config["latent_dim"] == 2 and config["input_dim"] == 784
    assert config["likelihood"] == "bernoulli" and config["binarize"] == "dynamic"
    status = json.loads((tiny_run / "run.json").read_text())
    assert status["status"] == "completed" and status["epochs_completed"] == 2
    assert status["data"]["train"] + status["data"]["val"] == 9000
    assert status["data"]["test"] == 1000
    history = json.loads((tiny_run / "metrics.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert {"loss", "elbo", "val_loss", "val_elbo", "kl"} <= set(history[0])
    csv = (tiny_run / "metrics.csv").read_text().splitlines()
    assert csv[0].startswith("epoch,") and len(csv) == 3
    for name in ("evaluation.json", "checkpoints/last.weights.h5", "checkpoints/best.weights.h5",
                 "figures/samples.png", "figures/reconstructions.png", "figures/manifold.png",
                 "figures/latent.png", "figures/curves.png"):
        assert (tiny_run / name).is_file(), name
    assert (tiny_run / "figures" / "samples.png").read_bytes()[:4] == b"\x89PNG"
    assert any((tiny_run / "tensorboard").rglob("events.out.tfevents.*"))


def test_load_run_gives_a_working_model(tiny_run):
    run = tfvae.load_run(tiny_run)
    assert isinstance(run.model, tfvae.GaussianVAE)
    assert run.config.latent_dim == 2
    assert run.evaluation["k"] == 5
    images = run.model.sample(3, seed=0)
    assert images.shape == (3, 784)
    recon = run.model.reconstruct(np.zeros((2, 784), np.float32))
    assert recon.shape == (2, 784)
    last = tfvae.load_run(tiny_run, which="last")
    assert last.model.count_params() == run.model.count_params()


def test_load_run_errors(tmp_path):
    with pytest.raises(RunDirError, match="does not exist"):
        tfvae.load_run(tmp_path / "missing")
    with pytest.raises(RunDirError, match="not a tfvae run"):
        tfvae.load_run(tmp_path)


def test_an_mlp_run_trains_on_fused_blocks_traced_once(trained_run, tiny_run):
    # One Keras step runs several batches; the optimizer's slots exist before fit, so
    # the training function is traced once (a tf.function that creates variables on
    # its first call is traced twice).
    status = json.loads((tiny_run / "run.json").read_text())
    config = json.loads((tiny_run / "config.json").read_text())
    batches = -(-status["data"]["train"] // config["batch_size"])
    seen = trained_run.fit_seen("gaussian")
    assert seen["steps"] < batches and seen["traced"] == 1, (seen, batches)


def test_non_finite_loss_stops_with_a_clear_message(tmp_path):
    data = np.random.default_rng(0).random((300, 16)).astype(np.float32) * 1e30
    path = tmp_path / "huge.npy"
    np.save(path, data)
    with pytest.raises(tfvae.TfvaeError) as info:
        tfvae.train(out=tmp_path / "nan", data_dir=str(path), likelihood="gaussian",
                    epochs=2, hidden=(8,), latent_dim=2, batch_size=32, verbose=0)
    assert "non-finite" in str(info.value) and "epoch 1" in str(info.value)


def test_a_strategy_or_data_read_file_by_file_take_keras_loop_whatever_the_arch():
    """The fused blocks need the training rows as one tensor and no tf.distribute
    strategy (the optimizer's cross-replica update does not fit in their loop)."""
    from tfvae.config import Config
    from tfvae.training import choose_path

    for arch, hidden in (("mlp", (8,)), ("conv", ())):
        assert choose_path(Config(arch=arch, hidden=hidden, strategy="mirrored")) == "keras"
        assert choose_path(Config(arch=arch, hidden=hidden), streamed=True) == "keras"


def test_digits_train_a_conv_model_in_keras_loop_with_gaussian_likelihood(tmp_path,
                                                                          monkeypatch):
    import gc
    import weakref

    import tfvae.training as training

    rows, alive, seen = [], [], {}
    load = training.load_data

    def load_and_watch(config):
        dataset, splits = load(config)
        rows.append(weakref.ref(splits.train))
        return dataset, splits

    class Probe(tfvae.keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            gc.collect()
            alive.append(rows[0]() is not None)
            seen.update(steps=self.params["steps"], jit=self.model.jit_compile)

    monkeypatch.setattr(training, "load_data", load_and_watch)
    run = tfvae.train(out=tmp_path / "conv", dataset="digits", arch="conv", hidden=(),
                      latent_dim=2, epochs=1, batch_size=64, iwae_k=2, verbose=0,
                      figures=False, callbacks=[Probe()])
    # The pipeline holds its own copy of the rows; the numpy ones are freed before fit.
    assert len(rows) == 1 and alive == [False]
    # Convolutions train in Keras' loop, batch by batch, without XLA.
    assert seen == {"steps": -(-run.status["data"]["train"] // 64), "jit": False}
    assert run.model.train_function.experimental_get_tracing_count() == 1
    assert run.config.likelihood == "gaussian" and run.config.image_shape == (8, 8, 1)
    ev = run.evaluation
    assert ev["log_likelihood"] >= ev["elbo"] - 1.0  # the k-sample bound, above the ELBO
    assert run.model.sample(4, seed=0).shape == (4, 64)


@pytest.mark.parametrize("at_batch, recorded", [(4, 1), (1, None)])
def test_a_stop_request_records_an_epoch_only_if_all_its_steps_ran(tmp_path, at_batch, recorded):
    """Ctrl-C during an epoch's last step (or its validation) keeps that epoch; earlier, not,
    and the progress line says the epoch was cut short instead of printing its figures."""
    import io

    from tfvae import callbacks as cb
    from tfvae import keras
    from tfvae.runs import record

    x = (np.random.default_rng(0).random((100, 784)) < 0.3).astype(np.float32)
    model = tfvae.GaussianVAE(latent_dim=2, hidden=[8])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), steps_per_execution=1,
                  jit_compile=False)
    stop = cb.StopOnRequest()

    class Press(keras.callbacks.Callback):  # Ctrl-C as the step of batch `at_batch` starts
        def on_train_batch_begin(self, batch, logs=None):
            if batch + 1 == at_batch:
                stop.request()

    out = io.StringIO()
    progress = cb.Progress(4, 25, 100, live=False, stream=out, skip=(stop,))
    recorder = RunRecorder(tmp_path, "loss", skip=(stop,))
    history = model.fit(x, batch_size=25, epochs=3, verbose=0,
                        callbacks=[Press(), stop, recorder, progress])
    assert len(history.epoch) == 1  # training stopped in the first epoch
    state = record.read(tmp_path)
    assert (None if state is None else state.epoch) == recorded
    line = out.getvalue()
    if recorded:
        assert line.startswith("epoch 1/3: 100 images in") and "loss" in line
    else:
        assert line == "epoch 1/3: stopped after 1 of 4 batches; this epoch is not recorded\n"


@pytest.mark.parametrize("arch, sizes", [("mlp", [4096, 904]), ("conv", [2048] * 2 + [904])])
def test_validation_batches_are_the_fixed_rows_in_order(arch, sizes):
    # One tensor sliced into batches (a cheap iterator for Keras to make every epoch):
    # every row once, in order, float32.
    from types import SimpleNamespace

    from tfvae import training

    val = np.random.default_rng(0).random((5000, 12)).astype(np.float32)
    session = SimpleNamespace(config=SimpleNamespace(batch_size=2048, arch=arch),
                              splits=SimpleNamespace(val=val, streamed=False))
    dataset = training._validation(session)
    batches = [b.numpy() for b in dataset]
    assert [len(b) for b in batches] == sizes
    assert all(b.dtype == np.float32 for b in batches)
    np.testing.assert_array_equal(np.concatenate(batches), val)
    again = np.concatenate([b.numpy() for b in dataset])  # the next epoch's iterator
    np.testing.assert_array_equal(again, val)
