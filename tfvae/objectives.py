"""Loss terms, named for what they mean (as in TFP's ``examples/vae.py``).

All functions work per example: they return one value per row of the batch,
in nats, and leave reduction over the batch to the caller.
"""

from __future__ import annotations

import math

from tfvae._keras import tf, tfd


def distortion(likelihood, x):
    """Reconstruction cost ``-log p(x|z)``, shape ``[..., batch]``."""
    return -likelihood.log_prob(x)


def rate(posterior, prior):
    """Analytic ``KL(q(z|x) || p(z))``, shape ``[batch]``."""
    return tfd.kl_divergence(posterior, prior)


def elbo(distortion_value, rate_value):
    """Single-sample evidence lower bound ``E_q[log p(x|z)] - KL(q || p)``."""
    return -distortion_value - rate_value


def iwae_bound(log_weights):
    """Importance-weighted bound ``log (1/k) sum_i w_i`` (Burda et al. 2016, eq. 8).

    Args:
      log_weights: ``[k, batch]`` values of ``log p(x, z_i) - log q(z_i | x)``.

    Returns:
      ``[batch]`` estimates of ``log p(x)``; a lower bound in expectation that
      tightens as k grows.
    """
    k = tf.cast(tf.shape(log_weights)[0], log_weights.dtype)
    return tf.reduce_logsumexp(log_weights, axis=0) - tf.math.log(k)


def active_units(posterior_means, threshold: float = 0.01):
    """Latent dimensions whose posterior mean varies across the data.

    A unit is active when ``Cov_x(E_q[z_u])`` exceeds ``threshold``
    (Burda et al. 2016, section 5.2).

    Args:
      posterior_means: ``[n, latent]`` numpy array of posterior means.

    Returns:
      ``(count, per-dimension variances)``.
    """
    variances = posterior_means.var(axis=0)
    return int((variances > threshold).sum()), variances


LOG_2 = math.log(2.0)
