"""Gaussian VAE: shapes, distributions, training steps, serialization."""

import numpy as np
import pytest

import tfvae
from tfvae._keras import keras, tf, tfd


@pytest.fixture
def model(make_model):
    return make_model("gaussian", latent_dim=3)


def test_parts_are_tfp_distributions(model, binary_images):
    from tfvae._keras import tfpl

    x = binary_images[:5]
    q = model.encode(x)
    assert q.batch_shape == (5,) and q.event_shape == (3,)
    # A tfp.layers distribution (wrapped to act as a tensor) over a diagonal Normal.
    assert isinstance(q.tensor_distribution, tfd.Independent)
    assert isinstance(q.distribution, tfd.Normal)
    assert isinstance(model.encoder.layers[-1], tfpl.IndependentNormal)
    assert isinstance(model.decoder.layers[-1], tfpl.IndependentBernoulli)
    # Reparameterized: gradients flow from a sample to the encoder.
    with tf.GradientTape() as tape:
        z = model.encode(x).sample()
        total = tf.reduce_sum(z)
    grads = tape.gradient(total, model.encoder.trainable_variables)
    assert all(g is not None for g in grads)
    p = model.decode(z)
    assert p.batch_shape == (5,) and p.event_shape == (784,)
    assert model.log_likelihood(tf.stack([z, z]), x).shape == (2, 5)


def test_elbo_terms_match_distributions(model, binary_images):
    x = binary_images[:4]
    seed = tf.constant([1, 2], tf.int32)
    terms = model.elbo_terms(x, seed=seed)
    q = model.encode(x)
    z = q.sample(seed=seed)
    expected_rec = -model.decode(z).log_prob(x)
    np.testing.assert_allclose(terms["reconstruction"], expected_rec, rtol=1e-5)
    np.testing.assert_allclose(terms["kl"], tfd.kl_divergence(q, model.prior()), rtol=1e-5)
    assert np.all(terms["kl"].numpy() >= 0)
    # Per-dimension KL sums to the total.
    np.testing.assert_allclose(model.kl_per_dim(x).numpy().sum(-1), terms["kl"], rtol=1e-4)


def test_train_step_moves_weights_and_lowers_loss(model, binary_images):
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    before = [w.numpy().copy() for w in model.trainable_weights]
    history = model.fit(binary_images, epochs=8, batch_size=64, verbose=0)
    after = model.trainable_weights
    assert any(not np.allclose(b, a.numpy()) for b, a in zip(before, after, strict=True))
    losses = history.history["loss"]
    assert losses[-1] < losses[0] - 20
    assert set(history.history) >= {"loss", "elbo", "reconstruction", "kl"}
    np.testing.assert_allclose(history.history["elbo"], [-v for v in losses], rtol=1e-5)
    result = model.evaluate(binary_images, batch_size=64, verbose=0, return_dict=True)
    assert result["loss"] == pytest.approx(result["reconstruction"] + result["kl"], rel=1e-4)


def test_callbacks_work_in_user_code(model, binary_images):
    seen = []

    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(dict(logs))

    model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=True)
    model.fit(binary_images, validation_data=(binary_images[:64],), epochs=2, batch_size=64,
              verbose=0, callbacks=[Record(), keras.callbacks.TerminateOnNaN()])
    assert len(seen) == 2 and "val_elbo" in seen[0]


def test_weights_and_keras_round_trip(model, binary_images, tmp_path):
    import warnings

    model.compile(optimizer=keras.optimizers.Adam(1e-3), run_eagerly=True)  # 4 steps: no trace
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        model.fit(binary_images, epochs=1, batch_size=64, verbose=0, callbacks=[
            keras.callbacks.ModelCheckpoint(str(tmp_path / "ck.keras")),
            keras.callbacks.ModelCheckpoint(str(tmp_path / "ck.weights.h5"),
                                            save_weights_only=True)])
        model.save(str(tmp_path / "again.keras"))
        keras.models.load_model(str(tmp_path / "again.keras"), safe_mode=True)
    # No layer serializes a lambda (tf_keras warns when one does).
    assert not [w for w in seen if "lambda" in str(w.message)], [str(w.message) for w in seen]
    x = binary_images[:8]
    path = tmp_path / "w.weights.h5"
    model.save_weights(str(path))
    clone = tfvae.GaussianVAE.from_config(model.get_config())
    clone.load_weights(str(path))
    np.testing.assert_allclose(clone.reconstruct(x), model.reconstruct(x), atol=1e-6)
    np.testing.assert_allclose(clone.sample(4, seed=3), model.sample(4, seed=3), atol=1e-6)
    model.save(str(tmp_path / "m.keras"))
    loaded = keras.models.load_model(str(tmp_path / "m.keras"), safe_mode=True)
    assert isinstance(loaded, tfvae.GaussianVAE)
    np.testing.assert_allclose(loaded.reconstruct(x), model.reconstruct(x), atol=1e-6)


def test_sample_is_seeded_and_in_range(model):
    a, b, c = model.sample(6, seed=1), model.sample(6, seed=1), model.sample(6, seed=2)
    assert a.shape == (6, 784)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert a.min() >= 0 and a.max() <= 1
    with pytest.raises(ValueError, match="positive"):
        model.sample(0)


def test_gaussian_likelihood_with_scale_floor(make_model):
    model = make_model("gaussian", input_dim=64, image_shape=(8, 8), latent_dim=2,
                       hidden=(16,), likelihood="gaussian", obs_scale="pixel", min_scale=0.05)
    head = model.decoder.layers[-1]
    head.raw_scale.assign(tf.fill([64], -50.0))  # softplus -> 0: only the floor is left
    p = model.decode(tf.zeros([1, 2]))
    np.testing.assert_allclose(p.stddev().numpy(), 0.05, rtol=1e-5)
    assert np.isfinite(model.elbo_terms(tf.zeros([2, 64]))["reconstruction"].numpy()).all()


def test_decoder_mirrors_encoder_unless_given(make_model):
    assert make_model("gaussian", hidden=(64, 32)).decoder_sizes == (32, 64)
    assert make_model("gaussian", hidden=(64, 32), decoder_hidden=(16,)).decoder_sizes == (16,)
    assert make_model("gaussian", decoder_hidden="").decoder_sizes == ()


def test_linear_decoder_and_conv_arch(binary_images):
    linear = tfvae.GaussianVAE(input_dim=784, latent_dim=2, hidden=(16,), decoder_hidden=())
    dense = [layer for layer in linear.decoder.layers if isinstance(layer, keras.layers.Dense)]
    assert len(dense) == 1  # z -> logits directly
    conv = tfvae.GaussianVAE(input_dim=784, image_shape=(28, 28), latent_dim=2, hidden=(16,),
                             arch="conv")
    assert conv.log_weights(binary_images[:3], 4).shape == (4, 3)
    assert conv.sample(2, seed=0).shape == (2, 784)
    with pytest.raises(ValueError, match="use arch='mlp'"):
        tfvae.GaussianVAE(input_dim=30, image_shape=(5, 6), arch="conv")


def test_kl_warmup_weight_scales_the_training_loss(model, binary_images):
    x = tf.constant(binary_images[:32])
    model.kl_weight.assign(0.0)
    loss0, values = model.objective(x)
    np.testing.assert_allclose(loss0, tf.reduce_mean(values["reconstruction"]), rtol=1e-5)


@pytest.mark.parametrize("blocks", [False, True])
def test_a_partial_last_batch_weighs_its_rows_in_the_epochs_loss(binary_images, blocks):
    """Keras weighs a batch's loss by its rows: over an epoch whose last batch is partial
    the loss is then -elbo (at kl_weight 1), in training and in validation alike."""
    model = tfvae.GaussianVAE(input_dim=784, latent_dim=2, hidden=(16,))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), steps_per_execution=1,
                  jit_compile=False)
    x = binary_images[:100]  # batches of 32: three full ones and one of 4 rows
    validation = (binary_images[100:150],)  # 32 and 18
    if blocks:
        feed = tfvae.data.blocks((x > 0.5).astype(np.uint8), 32, seed=0)
        history = model.fit(feed.dataset, epochs=1, steps_per_epoch=feed.steps_per_epoch,
                            validation_data=validation, validation_batch_size=32, verbose=0)
    else:
        history = model.fit(x, epochs=1, batch_size=32, validation_data=validation,
                            verbose=0)
    logs = {name: values[0] for name, values in history.history.items()}
    np.testing.assert_allclose(logs["loss"], -logs["elbo"], rtol=1e-6)
    np.testing.assert_allclose(logs["val_loss"], -logs["val_elbo"], rtol=1e-6)
