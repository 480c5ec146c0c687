"""The general options the DisARM protocol needs (issue 17), each checked on its own.

LeakyReLU(0.3) hidden layers, a prior on its own optimizer, an exact
validation split at the end of the training file, the data-dependent start
(input centring, binary codes read as 2z - 1, output bias at the logit of the
mean) and the k-sample bound logged during training.
"""

from __future__ import annotations

import numpy as np
import pytest

import tfvae
from tfvae._keras import tf
from tfvae.data.splits import validation_rows

keras = tfvae.keras


def test_an_exact_validation_split_at_the_end_of_the_file():
    train, val = validation_rows(60_000, 0.05, seed=0, size=10_000, order="end")
    np.testing.assert_array_equal(train, np.arange(50_000))
    np.testing.assert_array_equal(val, np.arange(50_000, 60_000))
    _, random_val = validation_rows(60_000, 0.05, seed=0, size=10_000)
    assert len(random_val) == 10_000 and random_val.max() < 60_000
    assert not np.array_equal(random_val, val)
    with pytest.raises(tfvae.ConfigError, match="leaves no training example"):
        validation_rows(100, 0.05, seed=0, size=100, order="end")


def test_leaky_relu_hidden_layers_have_the_disarm_slope():
    model = tfvae.BernoulliVAE(input_dim=16, latent_dim=4, hidden=(8, 8),
                               activation="leaky_relu")
    leaky = [layer for net in (model.encoder, model.decoder) for layer in net.layers
             if isinstance(layer, keras.layers.LeakyReLU)]
    assert len(leaky) == 4
    np.testing.assert_allclose(leaky[0](tf.constant([[-1.0, 2.0]])), [[-0.3, 2.0]])


def test_the_data_dependent_start_centres_inputs_and_codes():
    model = tfvae.BernoulliVAE(input_dim=16, latent_dim=4, hidden=(8,), center_input=True)
    mean = np.linspace(0.0, 1.0, 16, dtype=np.float32)
    model.init_from_data(mean)
    np.testing.assert_allclose(model.encoder.get_layer("center").mean.numpy(), mean)
    clipped = np.clip(mean, 0.001, 0.999)
    np.testing.assert_allclose(model.decoder.layers[-2].bias.numpy(),
                               np.log(clipped / (1 - clipped)), rtol=1e-5)
    # The decoder reads the binary code as 2z - 1: the same map as a plain
    # decoder whose first layer has weights 2W and bias b - W 1.
    z = tf.constant([[0.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    np.testing.assert_allclose(model.decoder.get_layer("signed")(z), 2 * z.numpy() - 1)
    first = next(layer for layer in model.decoder.layers
                 if isinstance(layer, keras.layers.Dense))
    w, b = first.get_weights()
    plain_first = np.maximum(z.numpy() @ (2 * w) + (b - w.sum(0)), 0.0)  # relu hidden layer
    np.testing.assert_allclose(first(2 * z - 1), plain_first, rtol=1e-5, atol=1e-5)
    plain = tfvae.BernoulliVAE(input_dim=16, latent_dim=4, hidden=(8,))
    assert "signed" not in [layer.name for layer in plain.decoder.layers]
    gaussian = tfvae.GaussianVAE(input_dim=16, latent_dim=4, hidden=(8,), center_input=True)
    assert "signed" not in [layer.name for layer in gaussian.decoder.layers]


@pytest.mark.parametrize("likelihood, obs_scale", [
    ("gaussian", "decoder"), ("gaussian", "pixel"), ("gaussian", "shared"), ("logistic", "decoder"),
])
def test_the_data_dependent_start_puts_the_observation_scales_at_the_data_spread(
        likelihood, obs_scale):
    model = tfvae.GaussianVAE(input_dim=6, latent_dim=2, hidden=(4,), likelihood=likelihood,
                              obs_scale=obs_scale, min_scale=1e-3)
    mean = np.linspace(0.1, 0.9, 6, dtype=np.float32)
    std = np.array([0.0, 0.0005, 0.01, 0.05, 0.2, 0.3], np.float32)
    model.init_from_data(mean, center=False, std=std)
    last = model.decoder.layers[-2]
    last.kernel.assign(tf.zeros_like(last.kernel))  # the output is the bias alone
    p = model.decoder(tf.zeros([1, 2]))
    if likelihood == "logistic":
        scale = p._scale.numpy()[0]
        wanted = std * np.sqrt(3) / np.pi  # a logistic's standard deviation is s pi / sqrt(3)
    else:
        scale = p.stddev().numpy()[0]
        wanted = std if obs_scale != "shared" else np.full(6, np.sqrt(np.mean(std ** 2)))
    # At or below the floor a scale starts just above it (floor + a tenth of it).
    np.testing.assert_allclose(scale, np.maximum(wanted, 1.1e-3), rtol=1e-4)
    np.testing.assert_allclose(last.bias.numpy()[:6], mean, rtol=1e-6)
    untouched = tfvae.GaussianVAE(input_dim=6, latent_dim=2, hidden=(4,), likelihood=likelihood,
                                  obs_scale=obs_scale)
    untouched.init_from_data(mean, center=False)  # no std: the scales keep their start
    if obs_scale == "decoder":
        np.testing.assert_array_equal(untouched.decoder.layers[-2].bias.numpy()[6:], 0.0)


def test_the_data_dependent_start_is_refused_for_conv_decoders_before_anything_runs(tmp_path):
    with pytest.raises(tfvae.ConfigError, match="--arch mlp"):
        tfvae.Config(arch="conv", hidden=(), output_bias_from_data=True)
    out = tmp_path / "run"
    with pytest.raises(tfvae.ConfigError, match="--arch mlp"):
        tfvae.train(dataset="digits", arch="conv", hidden=(), epochs=1, out=out,
                    output_bias_from_data=True, verbose=0)
    assert not out.exists()  # refused before the run directory is made


def test_the_prior_trains_with_its_own_optimizer():
    """One SGD step on the prior logits: the analytic KL's gradient, mean over the batch."""
    model = tfvae.BernoulliVAE(input_dim=16, latent_dim=4, hidden=(8,), learn_prior=True,
                               estimator="disarm")
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  prior_optimizer=keras.optimizers.SGD(0.5), run_eagerly=True)  # one step
    x = (np.random.default_rng(0).random((10, 16)) < 0.5).astype(np.float32)
    before = model.prior_logits().numpy()
    q = model.encoder(x).mean().numpy()  # q(z_k = 1 | x), [batch, latent]
    model.train_on_batch(x)
    expected = before - 0.5 * (tf.sigmoid(before).numpy() - q.mean(0))
    np.testing.assert_allclose(model.prior_logits().numpy(), expected, rtol=1e-4, atol=1e-6)
    owned = {id(v) for v in model.optimizer.variables}
    assert not any(id(v) in owned for v in model.prior_variables)


def test_the_k_sample_bound_is_logged_during_training(tmp_path):
    rng = np.random.default_rng(0)
    images = (rng.random((160, 8, 8)) < 0.3).astype(np.uint8) * 255
    np.savez(tmp_path / "d.npz", x_train=images[:120], x_test=images[120:])
    run = tfvae.train(
        data_dir=str(tmp_path / "d.npz"), model="bernoulli", latent_dim=6, hidden=(16,),
        activation="leaky_relu", estimator="disarm", learn_prior=True, prior_lr=0.01,
        center_input=True, output_bias_from_data=True, val_size=20, val_order="end",
        eval_k=3, eval_every=2, epochs=3, batch_size=20, iwae_k=3, figures=False,
        out=tmp_path / "run", verbose=0)
    history = run.history
    assert "val_iwae_k3" not in history[0]
    for row in history[1:]:  # epoch 2 (every 2) and epoch 3 (the last)
        assert row["val_iwae_k3"] > row["val_elbo"] - 3.0  # a k-sample bound, above the ELBO
        assert np.isfinite(row["test_iwae_k3"])
    assert run.status["data"]["val"] == 20
