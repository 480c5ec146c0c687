"""evaluate(): the quantities, their relations, and the IWAE bound."""

import numpy as np
import pytest

import tfvae
from tfvae import objectives
from tfvae._keras import keras, tf
from tfvae.errors import ConfigError


@pytest.fixture(scope="module")
def trained(tiny_run):
    """The session's trained Gaussian VAE (2 latent dimensions)."""
    return tfvae.load_run(tiny_run).model


def test_report_fields_and_relations(trained, binary_images):
    out = tfvae.evaluate(trained, binary_images[:100], k=20)
    assert set(out) >= {"elbo", "reconstruction", "kl", "log_likelihood", "k",
                        "active_units", "kl_per_dim", "n"}
    assert out["k"] == 20 and out["n"] == 100
    assert out["reconstruction"] > 0 and out["kl"] >= 0
    assert out["elbo"] == pytest.approx(-(out["reconstruction"] + out["kl"]), rel=1e-6)
    assert sum(out["kl_per_dim"]) == pytest.approx(out["kl"], rel=1e-3)
    assert len(out["kl_per_dim"]) == 2 and 0 <= out["active_units"] <= 2
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


def test_large_k_reaches_the_exact_log_likelihood_of_an_enumerable_model():
    """3 binary latents: log p(x) = logsumexp over the 8 codes of log p(z) + log p(x|z).

    With k = 5000 draws (in chunks of 1000) the IWAE bound is within 0.02 nats
    of it (its bias and noise at this k are a few thousandths); the ELBO is below it.
    """
    import itertools

    keras.utils.set_random_seed(0)
    model = tfvae.BernoulliVAE(input_dim=20, latent_dim=3, hidden=(8,))
    x = (np.random.default_rng(0).random((6, 20)) < 0.4).astype(np.float32)
    codes = tf.constant(list(itertools.product([0.0, 1.0], repeat=3)), tf.float32)  # [8, 3]
    log_joint = (model.log_likelihood(codes[:, None, :], tf.constant(x)[None])
                 + model.prior().log_prob(codes)[:, None])  # [8, n]
    exact = float(tf.reduce_mean(tf.reduce_logsumexp(log_joint, axis=0)))
    out = tfvae.evaluate(model, x, k=5000, max_elements=1000 * 20)
    assert out["log_likelihood"] == pytest.approx(exact, abs=0.02)
    assert out["elbo"] < exact


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
    with pytest.raises(tfvae.TfvaeError, match="784"):
        tfvae.evaluate(trained, np.zeros((3, 64), np.float32), k=2)
