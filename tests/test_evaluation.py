"""evaluate(): the quantities, their relations, and the IWAE bound."""

import numpy as np
import pytest

import tfvae
from tfvae import objectives
from tfvae._keras import keras, tf
from tfvae.errors import ConfigError


@pytest.fixture(scope="module")
def trained(binary_images):
    keras.utils.set_random_seed(1)
    model = tfvae.GaussianVAE(input_dim=784, latent_dim=4, hidden=(64,))
    model.compile(optimizer=keras.optimizers.Adam(2e-3))
    model.fit(binary_images, epochs=5, batch_size=64, verbose=0)
    return model


def test_report_fields_and_relations(trained, binary_images):
    out = tfvae.evaluate(trained, binary_images[:100], k=20)
    assert set(out) >= {"elbo", "reconstruction", "kl", "log_likelihood", "k",
                        "active_units", "kl_per_dim", "n"}
    assert out["k"] == 20 and out["n"] == 100
    assert out["reconstruction"] > 0 and out["kl"] >= 0
    assert out["elbo"] == pytest.approx(-(out["reconstruction"] + out["kl"]), rel=1e-6)
    assert sum(out["kl_per_dim"]) == pytest.approx(out["kl"], rel=1e-3)
    assert len(out["kl_per_dim"]) == 4 and 0 <= out["active_units"] <= 4
    # Same seed, same figures.
    assert tfvae.evaluate(trained, binary_images[:100], k=20) == out


def test_iwae_is_above_elbo_and_tightens_with_k(trained, binary_images):
    x = binary_images[:200]
    ll = {k: tfvae.evaluate(trained, x, k=k)["log_likelihood"] for k in (1, 10, 200)}
    elbo = tfvae.evaluate(trained, x, k=1)["elbo"]
    assert ll[1] == pytest.approx(elbo, abs=3.0)  # k=1 is the ELBO, up to sampling noise
    assert ll[10] > ll[1] + 0.5
    assert ll[200] > ll[10]


def test_chunking_does_not_change_the_estimate(trained, binary_images):
    x = binary_images[:30]
    big = tfvae.evaluate(trained, x, k=50, max_elements=1 << 26)["log_likelihood"]
    small = tfvae.evaluate(trained, x, k=50, max_elements=50 * 784 * 3)["log_likelihood"]
    assert small == pytest.approx(big, abs=1.0)


def test_large_k_stays_bounded(trained, binary_images):
    out = tfvae.evaluate(trained, binary_images[:4], k=5000)
    assert np.isfinite(out["log_likelihood"])


def test_iwae_bound_exact_on_constant_weights():
    log_w = tf.fill([7, 3], -2.0)
    np.testing.assert_allclose(objectives.iwae_bound(log_w), [-2.0] * 3, rtol=1e-6)


def test_active_units_counts_varying_dimensions():
    means = np.stack([np.linspace(-1, 1, 50), np.zeros(50), np.full(50, 3.0)], axis=1)
    count, variances = objectives.active_units(means)
    assert count == 1 and variances[0] > 0.01


@pytest.mark.parametrize("k", [0, -1, 2.5, True])
def test_bad_k_is_refused(trained, binary_images, k):
    with pytest.raises(ConfigError, match="k must be a positive integer"):
        tfvae.evaluate(trained, binary_images[:4], k=k)


def test_wrong_width_is_refused(trained):
    with pytest.raises(ConfigError, match="expects 784"):
        tfvae.evaluate(trained, np.zeros((3, 64), np.float32), k=2)
