"""Honest evaluation: single-sample ELBO, its terms, and an IWAE log-likelihood.

Every figure is in nats per example and computed the same way for every
model, whatever objective trained it, so models can be compared:

* ``elbo``: the single-sample ELBO ``log p(x|z) + log p(z) - log q(z|x)``
  averaged over examples, with ``z ~ q(z|x)`` once per example and the KL
  term analytic;
* ``reconstruction``: mean of ``-log p(x|z)`` at that sample (positive);
* ``kl``: mean of ``KL(q(z|x) || p(z))``;
* ``log_likelihood``: the importance-weighted bound with ``k`` samples
  (Burda et al. 2016), an estimate of ``log p(x)`` that tightens with k;
* ``active_units`` and ``kl_per_dim``.

IWAE work is chunked so that one chunk holds about ``max_elements`` decoder
outputs, which keeps memory bounded for k up to 5000 and beyond.
"""

from __future__ import annotations

import numpy as np

from tfvae import objectives
from tfvae.errors import ConfigError

DEFAULT_K = 1000
MAX_K = 100_000


def _as_matrix(x, input_dim: int) -> np.ndarray:
    if hasattr(x, "test"):  # a tfvae.data.Splits
        x = x.test
    x = np.asarray(x)
    if x.ndim != 2:
        x = x.reshape(len(x), -1)
    if x.shape[1] != input_dim:
        raise ConfigError(
            f"data have {x.shape[1]} values per example but the model expects {input_dim}; "
            "evaluate on data of the kind the model was trained on"
        )
    if len(x) == 0:
        raise ConfigError("no examples to evaluate")
    return x  # cast to float32 a batch at a time (uint8 bits stay compact)


def evaluate(
    model,
    data,
    k: int = DEFAULT_K,
    batch_size: int = 500,
    seed: int = 0,
    max_elements: int = 1 << 21,
) -> dict:
    """Evaluates a trained model on data.

    Args:
      model: a tfvae model (``GaussianVAE``, ``BernoulliVAE``, ``Autoencoder``
        with its mixture) or anything with the same hooks.
      data: ``[n, D]`` array of processed examples (binary for a Bernoulli
        likelihood; any numeric dtype, cast to float32 a batch at a time), or a
        :class:`tfvae.data.Splits` (its test split).
      k: importance samples for the log-likelihood estimate (>= 1).
      batch_size: examples per ELBO batch.
      seed: seed of the evaluation's random draws (same seed, same figures).
      max_elements: bound on ``examples x k x D`` per IWAE chunk.

    Returns:
      A dict with ``elbo``, ``reconstruction``, ``kl``, ``log_likelihood``,
      ``k``, ``active_units``, ``kl_per_dim`` (list), ``n``; nats per example.
    """
    from tfvae._keras import tf
    from tfvae.models.base import stateless_seed

    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
        raise ConfigError(f"k must be a positive integer (importance samples), got {k!r}")
    if k > MAX_K:
        raise ConfigError(f"k={k} is more than tfvae supports ({MAX_K}); use a smaller --k")
    if isinstance(batch_size, bool) or int(batch_size) <= 0:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    k = int(k)
    model.check_ready()  # eagerly: a clear error rather than one from inside a trace
    x = _as_matrix(data, model.input_dim)
    n = len(x)

    spec = tf.TensorSpec([None, model.input_dim], tf.float32)
    seed_spec = tf.TensorSpec([2], tf.int32)

    @tf.function(input_signature=[spec, seed_spec], reduce_retracing=True)
    def elbo_batch(xb, s):
        terms = model.elbo_terms(xb, seed=s)
        return (
            terms["reconstruction"],
            terms["kl"],
            model.posterior_mean(xb),
            model.kl_per_dim(xb),
        )

    @tf.function(input_signature=[spec, seed_spec], reduce_retracing=True)
    def iwae_batch(xb, s):
        return objectives.iwae_bound(model.log_weights(xb, k, seed=s))

    rec, kl, means, kl_dims = [], [], [], []
    for i, start in enumerate(range(0, n, batch_size)):
        xb = x[start:start + batch_size].astype(np.float32, copy=False)
        r, kk, m, kd = elbo_batch(xb, stateless_seed(seed, 2 * i))
        rec.append(r.numpy())
        kl.append(kk.numpy())
        means.append(m.numpy())
        kl_dims.append(kd.numpy())
    rec, kl = np.concatenate(rec), np.concatenate(kl)
    means, kl_dims = np.concatenate(means), np.concatenate(kl_dims)

    chunk = max(1, min(n, max_elements // (k * model.input_dim)))
    bounds = []
    for i, start in enumerate(range(0, n, chunk)):
        xb = x[start:start + chunk].astype(np.float32, copy=False)
        b = iwae_batch(xb, stateless_seed(seed, 2 * i + 1))
        bounds.append(b.numpy())
    bounds = np.concatenate(bounds)

    count, _ = objectives.active_units(means)
    return {
        "elbo": float(-(rec + kl).mean()),
        "reconstruction": float(rec.mean()),
        "kl": float(kl.mean()),
        "log_likelihood": float(bounds.mean()),
        "k": k,
        "active_units": count,
        "kl_per_dim": [float(v) for v in kl_dims.mean(axis=0)],
        "n": int(n),
    }
