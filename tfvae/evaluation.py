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
* ``active_units`` and ``kl_per_dim``;
* for discrete data, ``bits_per_dim`` and ``bits_per_dim_iwae``: the ELBO and
  the IWAE estimate as bits per value. A discrete observation model
  (Bernoulli, discretized logistic) gives probabilities of the data, so
  ``bpd = -log P / (D ln 2)``; a density over data dequantized as
  ``(k + u) / L`` (``dequantized_levels=L``) gives ``log p`` on ``[0, 1]^D``,
  and the probability of the discrete data is at least ``p / L^D``, so
  ``bpd = (D ln L - log p) / (D ln 2)`` (Theis et al. 2016).

IWAE work is chunked so that one chunk holds about ``max_elements`` decoder
outputs (2^23 by default), which keeps memory bounded for k up to 5000 and
beyond. Larger chunks make larger matrix products, which run faster, at the
price of a higher peak memory; the default weighs the two.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable

import numpy as np

from tfvae import budget
from tfvae.config import MAX_K, check_seed
from tfvae.errors import ConfigError
from tfvae.runtime import stateless_seed

DEFAULT_K = 1000


def _source(data, model):
    """``(batches(size) -> iterator of arrays, n)`` for an array, Splits or a file split."""
    input_dim = model.input_dim
    if hasattr(data, "test"):  # a tfvae.data.Splits or StreamSplits: its test split
        data = data.test
    if hasattr(data, "batches"):  # a tfvae.data.streams.FileSplit, read file by file
        if data.dim != input_dim:
            raise ConfigError(f"data have {data.dim} values per example but the model expects "
                              f"{input_dim}; evaluate on data of the kind it was trained on")
        return data.batches, len(data)
    from tfvae.models import inputs

    x = data.numpy() if hasattr(data, "numpy") else np.asarray(data)
    if x.ndim < 2:
        raise ConfigError(f"data of shape {x.shape}: pass examples first, [n, D] or images")
    x = x.reshape(len(x), inputs.example_width(model, x.shape[1:], "tfvae.evaluate"))

    def batches(size):  # converted as fit converts, a batch at a time (uint8 stays compact)
        for start in range(0, len(x), size):
            yield inputs.rows(model, x[start:start + size], "tfvae.evaluate")

    return batches, len(x)


def check_k(k, model=None, max_elements: int = budget.IWAE_CHUNK_VALUES) -> int:
    """``k`` as an int if it is a valid number of importance samples (for ``model``:
    if one chunk of its k-sample evaluation fits in memory); ConfigError otherwise."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
        raise ConfigError(f"k must be a positive integer (importance samples), got {k!r}")
    if k > MAX_K:
        raise ConfigError(f"k={k} is more than tfvae supports ({MAX_K}); use a smaller k")
    if model is not None:  # before any work, not in the last chunk
        budget.check_model_iwae(model, int(k), max_elements)
    return int(k)


#: Per model (held weakly), its compiled evaluation functions by ``(k, traced state)``:
#: repeated calls reuse them instead of tracing new ones.
_COMPILED = weakref.WeakKeyDictionary()


def _functions(model, k: int):
    """The compiled per-batch ELBO terms and per-chunk k-sample bound, cached per model.

    The key holds the model's ``traced_state()``: Python values (a fitted
    mixture, a proposal scale) the traces hold as constants, so refitting
    them gives new functions. Any batch or chunk size reuses one trace.
    """
    cache = _COMPILED.setdefault(model, {})
    key = (k, model.traced_state())
    if key not in cache:
        cache[key] = _compile(weakref.ref(model), model.input_dim, k)
    return cache[key]


def _compile(ref, input_dim: int, k: int):
    # The functions reach the model through a weak reference: the cache's
    # values must not keep its keys alive.
    from tfvae import objectives
    from tfvae._keras import tf

    spec = tf.TensorSpec([None, input_dim], tf.float32)
    seed = tf.TensorSpec([2], tf.int32)

    @tf.function(input_signature=[spec, seed], reduce_retracing=True, autograph=False)
    def elbo(xb, s):
        model = ref()
        terms = model.elbo_terms(xb, seed=s)
        return terms["reconstruction"], terms["kl"], model.posterior_mean(xb), \
            model.kl_per_dim(xb)

    @tf.function(input_signature=[spec, seed], reduce_retracing=True, autograph=False)
    def bound(xb, s):
        return objectives.iwae_bound(ref().log_weights(xb, k, seed=s))

    return elbo, bound


def _passes(model, batches, n, k, batch_size, seed, max_elements, progress):
    """Per-example ELBO terms and k-sample bounds, batch by batch, IWAE in chunks."""
    elbo, bound = _functions(model, k)
    chunk = max(1, min(n, max_elements // (k * model.input_dim)))
    parts, bounds, done, chunks = [], [], 0, 0
    for i, xb in enumerate(batches(batch_size)):
        parts.append([t.numpy() for t in elbo(xb, stateless_seed(seed, 2 * i))])
        for start in range(0, len(xb), chunk):
            bounds.append(bound(xb[start:start + chunk], stateless_seed(seed, 2 * chunks + 1))
                          .numpy())
            chunks += 1
        done += len(xb)
        progress("evaluate", done, n)
    return [np.concatenate(column) for column in zip(*parts, strict=True)], \
        np.concatenate(bounds)


def evaluate(
    model,
    data,
    k: int = DEFAULT_K,
    batch_size: int = 500,
    seed: int = 0,
    max_elements: int = 1 << 23,
    progress: Callable[[str, int, int], None] | None = None,
    dequantized_levels: int | None = None,
) -> dict:
    """Evaluates a trained model on data.

    Args:
      model: a tfvae model (``GaussianVAE``, ``BernoulliVAE``, ``Autoencoder``
        with its mixture) or anything with the same hooks.
      data: ``[n, D]`` array of processed examples (binary for a Bernoulli
        likelihood; any numeric dtype, cast to float32 a batch at a time), a
        :class:`tfvae.data.Splits` (its test split), or a split of image files
        (:class:`tfvae.data.streams.FileSplit`, read batch by batch).
      k: importance samples for the log-likelihood estimate (>= 1).
      batch_size: examples per ELBO batch.
      seed: seed of the evaluation's random draws (same seed, same figures).
      max_elements: bound on ``examples x k x D`` per IWAE chunk.
      progress: called as ``progress("evaluate", done, total)`` after each
        batch, ``done`` examples of ``total``.
      dequantized_levels: for a continuous density, the ``L`` of data
        dequantized as ``(k + u) / L``: bits per dimension of the discrete data
        are then reported too.

    Returns:
      A dict with ``elbo``, ``reconstruction``, ``kl``, ``log_likelihood``,
      ``k``, ``active_units``, ``kl_per_dim`` (list), ``n``; nats per example;
      with discrete (or dequantized) data also ``bits_per_dim``,
      ``bits_per_dim_iwae`` and ``bits_per_dim_of`` (what the bits are of).
    """
    k, seed = check_k(k, model, max_elements), check_seed(seed, "seed")
    if isinstance(batch_size, bool) or int(batch_size) <= 0:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    model.check_ready()  # eagerly: a clear error rather than one from inside a trace
    batches, n = _source(data, model)
    if n == 0:
        raise ConfigError("no examples to evaluate")
    progress = progress or (lambda phase, done, total: None)
    (rec, kl, means, kl_dims), bounds = _passes(model, batches, n, k, int(batch_size), seed,
                                                max_elements, progress)
    from tfvae import objectives

    count, _ = objectives.active_units(means)
    results = {
        "elbo": float(-(rec + kl).mean()),
        "reconstruction": float(rec.mean()),
        "kl": float(kl.mean()),
        "log_likelihood": float(bounds.mean()),
        "k": k,
        "active_units": count,
        "kl_per_dim": [float(v) for v in kl_dims.mean(axis=0)],
        "n": int(n),
    }
    results.update(bits_per_dim(model, results, dequantized_levels))
    return results


def bits_per_dim(model, results: dict, dequantized_levels: int | None = None) -> dict:
    """``bits_per_dim`` (ELBO), ``bits_per_dim_iwae`` and what they are of; {} for floats."""
    dim = model.input_dim
    if model.discrete_likelihood:
        offset = 0.0
        levels = model.likelihood_levels
        of = "binary pixels" if levels == 2 else f"{levels}-level pixels"
    elif dequantized_levels:
        offset = dim * math.log(dequantized_levels)
        of = f"{dequantized_levels}-level pixels (dequantized density)"
    else:
        return {}
    scale = dim * math.log(2.0)
    return {
        "bits_per_dim": (offset - results["elbo"]) / scale,
        "bits_per_dim_iwae": (offset - results["log_likelihood"]) / scale,
        "bits_per_dim_of": of,
    }
