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

from collections.abc import Callable

import numpy as np

from tfvae.errors import ConfigError
from tfvae.utils import stateless_seed

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


def check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
        raise ConfigError(f"k must be a positive integer (importance samples), got {k!r}")
    if k > MAX_K:
        raise ConfigError(f"k={k} is more than tfvae supports ({MAX_K}); use a smaller --k")
    return int(k)


def _elbo_pass(model, x, batch_size, seed, progress):
    """Per-example reconstruction and KL, posterior means and KL per dimension."""
    from tfvae._keras import tf

    spec = tf.TensorSpec([None, model.input_dim], tf.float32)

    @tf.function(input_signature=[spec, tf.TensorSpec([2], tf.int32)], reduce_retracing=True)
    def batch(xb, s):
        terms = model.elbo_terms(xb, seed=s)
        return terms["reconstruction"], terms["kl"], model.posterior_mean(xb), \
            model.kl_per_dim(xb)

    parts = []
    for i, start in enumerate(range(0, len(x), batch_size)):
        xb = x[start:start + batch_size].astype(np.float32, copy=False)
        parts.append([t.numpy() for t in batch(xb, stateless_seed(seed, 2 * i))])
        progress("elbo", min(start + batch_size, len(x)), len(x))
    return [np.concatenate(column) for column in zip(*parts, strict=True)]


def _iwae_pass(model, x, k, seed, max_elements, progress):
    """Per-example k-sample bounds, in chunks of about ``max_elements`` outputs."""
    from tfvae import objectives
    from tfvae._keras import tf

    spec = tf.TensorSpec([None, model.input_dim], tf.float32)

    @tf.function(input_signature=[spec, tf.TensorSpec([2], tf.int32)], reduce_retracing=True)
    def chunk_bound(xb, s):
        return objectives.iwae_bound(model.log_weights(xb, k, seed=s))

    chunk = max(1, min(len(x), max_elements // (k * model.input_dim)))
    bounds = []
    for i, start in enumerate(range(0, len(x), chunk)):
        xb = x[start:start + chunk].astype(np.float32, copy=False)
        bounds.append(chunk_bound(xb, stateless_seed(seed, 2 * i + 1)).numpy())
        progress("iwae", min(start + chunk, len(x)), len(x))
    return np.concatenate(bounds)


def evaluate(
    model,
    data,
    k: int = DEFAULT_K,
    batch_size: int = 500,
    seed: int = 0,
    max_elements: int = 1 << 21,
    progress: Callable[[str, int, int], None] | None = None,
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
      progress: called as ``progress(phase, done, total)`` after each batch,
        with phase ``"elbo"`` then ``"iwae"`` and ``done`` examples of ``total``.

    Returns:
      A dict with ``elbo``, ``reconstruction``, ``kl``, ``log_likelihood``,
      ``k``, ``active_units``, ``kl_per_dim`` (list), ``n``; nats per example.
    """
    k = check_k(k)
    if isinstance(batch_size, bool) or int(batch_size) <= 0:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    model.check_ready()  # eagerly: a clear error rather than one from inside a trace
    x = _as_matrix(data, model.input_dim)
    progress = progress or (lambda phase, done, total: None)
    rec, kl, means, kl_dims = _elbo_pass(model, x, int(batch_size), seed, progress)
    bounds = _iwae_pass(model, x, k, seed, max_elements, progress)
    from tfvae import objectives

    count, _ = objectives.active_units(means)
    return {
        "elbo": float(-(rec + kl).mean()),
        "reconstruction": float(rec.mean()),
        "kl": float(kl.mean()),
        "log_likelihood": float(bounds.mean()),
        "k": k,
        "active_units": count,
        "kl_per_dim": [float(v) for v in kl_dims.mean(axis=0)],
        "n": int(len(x)),
    }
