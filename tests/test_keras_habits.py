"""tfvae models used as a Keras user uses any model: build, compile, fit, save, load, predict.

Each test is written as the user's script would be. Errors a user can cause
must come back as tfvae's own message (a :class:`tfvae.TfvaeError` or a
``TypeError``), raised before Keras traces a step: never AutoGraph's
"in user code" wrapper.
"""

import logging
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import tfvae
from tfvae._keras import keras, tf

#: A tiny grey-level image set: 8x8 one-channel images, as rows and as images.
SIDE = 8
D = SIDE * SIDE


#: compile options of the quick tests: Keras' own loop without XLA, whose
#: compilation would take most of a tiny test's time.
FAST = {"jit_compile": False}


def tiny(cls=tfvae.GaussianVAE, **kwargs):
    keras.utils.set_random_seed(0)
    return cls(**{"input_dim": D, "latent_dim": 2, "hidden": (16,), **kwargs})


def bits(n=64, seed=0):
    return (np.random.default_rng(seed).random((n, D)) < 0.3).astype(np.float32)


def not_wrapped(exc) -> None:
    """The message is tfvae's own, not AutoGraph's wrapper around it."""
    assert "in user code" not in str(exc) and "Graph execution error" not in str(exc)


def assert_serves(model, folder, x, expected) -> None:
    """``model.export`` (tf_keras' inference-only SavedModel) serves what ``predict`` gave."""
    model.export(folder)
    served = tf.saved_model.load(str(folder))
    np.testing.assert_allclose(served.serve(tf.constant(x)).numpy(), expected, atol=1e-5)


# ------------------------------------------------------------------ 1. SavedModel


def test_model_export_serves_predict(tmp_path):
    x = bits()
    model = tiny()
    expected = model.predict(x[:8], verbose=0)
    assert_serves(model, tmp_path / "serving", x[:8], expected)


@pytest.mark.slow
def test_saved_model_directory_saves_loads_and_predicts(tmp_path):
    x = bits()
    model = tiny()
    model.compile()
    model.fit(x, epochs=1, verbose=0)
    expected = model.predict(x[:8], verbose=0)

    model.save(tmp_path / "saved")  # a directory: Keras 2's SavedModel format
    loaded = keras.models.load_model(tmp_path / "saved")
    assert isinstance(loaded, tfvae.GaussianVAE)
    np.testing.assert_allclose(loaded.predict(x[:8], verbose=0), expected, atol=1e-6)
    np.testing.assert_allclose(loaded.sample(4, seed=1), model.sample(4, seed=1), atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("cls, kwargs", [
    (tfvae.GaussianVAE, {"likelihood": "gaussian"}),
    (tfvae.GaussianVAE, {"likelihood": "logistic", "arch": "conv", "center_input": True}),
    (tfvae.BernoulliVAE, {"estimator": "nvil", "learn_prior": True}),
    (tfvae.StackedBernoulliVAE, {"hidden": ()}),
    (tfvae.Autoencoder, {"components": 2}),
])
def test_every_family_saves_as_saved_model_and_checkpoints(cls, kwargs, tmp_path):
    x = bits()
    model = tiny(cls, **kwargs)
    model.compile()
    checkpoint = keras.callbacks.ModelCheckpoint(str(tmp_path / "ckpt"), save_weights_only=False)
    model.fit(x, epochs=1, verbose=0, callbacks=[checkpoint])
    expected = model.predict(x[:8], verbose=0)
    model.save(tmp_path / "saved", save_format="tf")
    for folder in ("saved", "ckpt"):
        loaded = keras.models.load_model(tmp_path / folder)
        assert type(loaded) is cls
        np.testing.assert_allclose(loaded.predict(x[:8], verbose=0), expected, atol=1e-5)
    loaded.fit(x, epochs=1, verbose=0)  # the checkpoint comes back compiled
    assert_serves(model, tmp_path / "serving", x[:8], expected)


@pytest.mark.slow
def test_saved_model_loads_without_tfvae_and_serves_predict(tmp_path):
    x = bits()
    model = tiny()
    model.save(tmp_path / "saved")
    np.save(tmp_path / "x.npy", x[:4])
    np.save(tmp_path / "expected.npy", model.predict(x[:4], verbose=0))
    script = textwrap.dedent(f"""
        import sys, numpy as np, tf_keras as keras
        model = keras.models.load_model({str(tmp_path / "saved")!r})
        assert "tfvae" not in sys.modules
        got = model.predict(np.load({str(tmp_path / "x.npy")!r}), verbose=0)
        np.testing.assert_allclose(got, np.load({str(tmp_path / "expected.npy")!r}), atol=1e-6)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


# ------------------------------------------------------- 4. images and uint8 pixels


def test_uint8_images_fit_evaluate_and_predict_as_the_cli_scales_them():
    pixels = np.random.default_rng(0).integers(0, 256, (64, 8, 8, 3), dtype=np.uint8)
    model = tiny(input_dim=8 * 8 * 3, image_shape=(8, 8, 3), likelihood="gaussian")
    model.compile(**FAST)
    model.fit(pixels, epochs=1, batch_size=32, verbose=0)
    scaled = pixels.reshape(64, -1).astype(np.float32) / 255.0  # the CLI's x / 255
    assert tfvae.evaluate(model, pixels, k=2) == tfvae.evaluate(model, scaled, k=2)
    np.testing.assert_allclose(model.predict(pixels, verbose=0),
                               model.predict(scaled, verbose=0), atol=1e-6)
    np.testing.assert_allclose(model.reconstruct(pixels[:4]), model.predict(scaled[:4], verbose=0),
                               atol=1e-6)
    with pytest.raises(tfvae.DataError, match="channels-first") as caught:
        model.fit(np.moveaxis(pixels, -1, 1), epochs=1, verbose=0)
    not_wrapped(caught.value)


def test_uint8_on_a_bernoulli_likelihood_bits_pass_grey_levels_are_refused():
    pixels = np.random.default_rng(0).integers(0, 256, (64, SIDE, SIDE), dtype=np.uint8)
    model = tiny(tfvae.BernoulliVAE)
    model.compile(**FAST)
    with pytest.raises(tfvae.DataError, match="binarize_static"):
        model.fit(pixels, epochs=1, verbose=0)
    binary = tfvae.data.binarize_static(pixels, seed=0)  # uint8 bits, as images: fine
    assert binary.dtype == np.uint8
    model.fit(binary, epochs=1, verbose=0)


def test_logistic_likelihood_takes_uint8_as_k_over_levels_minus_one():
    pixels = np.random.default_rng(0).integers(0, 256, (32, D), dtype=np.uint8)
    model = tiny(likelihood="logistic")
    grid = pixels.astype(np.float32) / 255.0
    a = tfvae.evaluate(model, pixels, k=2)
    assert a == tfvae.evaluate(model, grid, k=2)
    with pytest.raises(tfvae.DataError, match="k / \\(levels - 1\\)"):
        tfvae.evaluate(model, pixels.astype(np.float32), k=2)  # 0..255 as floats


# ----------------------------------------------------------- 5. self-contained .keras


def test_autoencoder_keras_file_keeps_its_mixture(tmp_path):
    x = bits(128)
    model = tiny(tfvae.Autoencoder, components=3)
    model.compile(**FAST)
    model.fit(x, epochs=1, verbose=0)
    model.post_fit(x, seed=0)
    model.save(tmp_path / "ae.keras")

    loaded = keras.models.load_model(tmp_path / "ae.keras")
    assert loaded.fitted
    np.testing.assert_array_equal(loaded.sample(16, seed=5), model.sample(16, seed=5))
    assert tfvae.evaluate(loaded, x[:32], k=4) == tfvae.evaluate(model, x[:32], k=4)
    assert loaded.proposal_info == model.proposal_info


# ------------------------------------------------------ 6. fused blocks and strategies


def test_fused_blocks_are_refused_at_once_under_a_one_device_mirrored_strategy():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        model = tiny()
        model.compile()
    blocks = tfvae.data.blocks(bits(), batch_size=32)
    with pytest.raises(tfvae.ConfigError, match="fused training blocks run outside") as caught:
        model.fit(blocks.dataset, steps_per_epoch=blocks.steps_per_epoch, verbose=0)
    not_wrapped(caught.value)


@pytest.mark.slow
def test_fused_blocks_are_refused_at_once_on_two_devices():
    script = textwrap.dedent("""
        import numpy as np, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        two = [tf.config.LogicalDeviceConfiguration()] * 2
        tf.config.set_logical_device_configuration(cpu, two)
        import tfvae
        strategy = tf.distribute.MirroredStrategy()
        assert strategy.num_replicas_in_sync == 2
        with strategy.scope():
            model = tfvae.GaussianVAE(input_dim=64, latent_dim=2, hidden=(16,))
            model.compile()
        blocks = tfvae.data.blocks(np.zeros((64, 64), np.float32), batch_size=32)
        try:
            model.fit(blocks.dataset, steps_per_epoch=blocks.steps_per_epoch, verbose=0)
        except tfvae.ConfigError as exc:
            assert "fused training blocks run outside" in str(exc), exc
            print("refused")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=300)
    assert done.returncode == 0 and "refused" in done.stdout, done.stderr[-3000:]


# ------------------------------------------------- 7. loss, metrics and value ranges


@pytest.mark.parametrize("given", [{"loss": "mse"}, {"metrics": ["mae"]}])
def test_compile_refuses_a_loss_or_metrics(given):
    model = tiny()
    with pytest.raises(tfvae.ConfigError, match="its own objective"):
        model.compile(optimizer="adam", **given)


def test_bernoulli_likelihood_refuses_data_outside_0_1_before_training():
    digits = np.random.default_rng(0).integers(0, 17, (64, D)).astype(np.float32)  # 0..16
    model = tiny(tfvae.BernoulliVAE)
    model.compile(**FAST)
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(tfvae.DataError, match="range from 0 to 16") as caught:
        model.fit(digits, epochs=1, verbose=0)
    not_wrapped(caught.value)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))
    with pytest.raises(tfvae.DataError, match="takes values in \\[0, 1\\]"):
        model.evaluate(digits, verbose=0)
    dataset = tf.data.Dataset.from_tensor_slices(digits).batch(32)
    with pytest.raises(tfvae.DataError, match="range from 0 to 16") as caught:
        model.fit(dataset, epochs=1, verbose=0)
    not_wrapped(caught.value)
    model.fit(digits / 16.0, epochs=1, verbose=0)  # grey levels as probabilities: fine


def test_a_shape_error_from_the_data_is_tfvae_s_message_not_autograph_s():
    model = tiny()
    model.compile(**FAST)
    wrong = tf.data.Dataset.from_tensor_slices(np.zeros((32, D + 1), np.float32)).batch(8)
    with pytest.raises(tfvae.DataError, match=f"rows \\(N, {D}\\)") as caught:
        model.fit(wrong, epochs=1, verbose=0)
    not_wrapped(caught.value)


# --------------------------------------------------------- 8. predict is deterministic


def test_predict_is_the_decoder_mean_at_the_posterior_code():
    x = bits(16)
    for model in (tiny(), tiny(tfvae.BernoulliVAE)):
        first = model.predict(x, verbose=0)
        np.testing.assert_array_equal(first, model.predict(x, verbose=0))
        np.testing.assert_allclose(first, model.reconstruct(x), atol=1e-6)
        np.testing.assert_allclose(model(x).numpy(), first, atol=1e-6)
    # Sampling has its own calls.
    model = tiny()
    a, b = model.reconstruct_sample(x, seed=1), model.reconstruct_sample(x, seed=2)
    np.testing.assert_array_equal(a, model.reconstruct_sample(x, seed=1))
    assert not np.array_equal(a, b)


# -------------------------------------------------------------- 9. Python habits


def test_repeated_evaluate_does_not_retrace():
    warnings = []

    class Catch(logging.Handler):
        def emit(self, record):
            warnings.append(record.getMessage())

    model = tiny()
    # The first call traces (once per model and k: TensorFlow counts the traces
    # of every model's functions together, so it may warn after several models).
    tfvae.evaluate(model, bits(8), k=2)
    handler = Catch()
    logging.getLogger("tensorflow").addHandler(handler)
    try:
        for n in (8, 9, 10, 11, 12, 13):
            tfvae.evaluate(model, bits(n), k=2, batch_size=5)
    finally:
        logging.getLogger("tensorflow").removeHandler(handler)
    assert not [w for w in warnings if "retracing" in w], warnings


def test_keras_3_callbacks_and_optimizers_are_refused_with_what_to_use():
    keras3 = pytest.importorskip("keras")
    if not keras3.__version__.startswith("3"):
        pytest.skip("the keras package here is not Keras 3")
    model = tiny()
    with pytest.raises(TypeError, match="tfvae.keras"):
        model.compile(optimizer=keras3.optimizers.Adam())
    model.compile(**FAST)
    with pytest.raises(TypeError, match="tfvae.keras"):
        model.fit(bits(), epochs=1, verbose=0, callbacks=[keras3.callbacks.EarlyStopping()])


@pytest.mark.slow
def test_python_export_is_quiet_and_names_the_python_argument(tmp_path, capfd):
    import tfvae.export

    x = bits()
    model = tiny()
    capfd.readouterr()
    tfvae.export.export(model, tmp_path / "out", precisions=("float32", "int8"),
                        representative=x)
    out, err = capfd.readouterr()
    assert "reader.cc" not in out + err and "fully_quantize" not in out + err, out + err
    assert "deprecated" not in out + err
    with pytest.raises(tfvae.TfvaeError, match="overwrite=True"):
        tfvae.export.export(model, tmp_path / "out", precisions=("float32",))


def test_calling_the_model_on_images_gives_what_predict_gives(make_model):
    """``model(images)`` takes what ``predict`` takes: images and uint8 pixels."""
    import numpy as np

    model = make_model("gaussian", likelihood="gaussian")
    side = int(round(model.input_dim ** 0.5))
    pixels = np.random.default_rng(0).integers(0, 256, (4, side, side, 1), dtype=np.uint8)
    called = model(pixels).numpy()
    assert called.shape == (4, model.input_dim)
    np.testing.assert_allclose(called, model.predict(pixels, verbose=0), atol=1e-6)
    np.testing.assert_allclose(called, model(pixels.reshape(4, -1) / 255.0).numpy(), atol=1e-6)
