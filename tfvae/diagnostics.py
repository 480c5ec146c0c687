"""Gradient-estimator diagnostics for Bernoulli-latent models (Bernoulli VAEs and SBNs).

:func:`gradient_variance` measures, at a model's current parameters and on a
fixed batch, how noisy each estimator's gradient of the encoder is: draw the
gradient ``num_draws`` times with different seeds and summarise the spread.
This is the quantity baselines, leave-one-out and antithetic samples reduce
(Mnih & Gregor 2014; Kool et al. 2019; Dong et al. 2020), measured rather
than argued.
"""

from __future__ import annotations

import numpy as np

from tfvae import estimators as estimators_lib
from tfvae import options
from tfvae.errors import ConfigError


def available_estimators(model) -> tuple[str, ...]:
    """Registered estimators that ``model`` can run (``nvil`` needs its ``c(x)`` network,
    ``relax`` its learned control variate: models trained with them)."""
    return tuple(
        name
        for name, fn in estimators_lib.ESTIMATORS.items()
        if (not fn.input_baseline or getattr(model, "baseline_net", None) is not None)
        and (not fn.control_variate or getattr(model, "control_variables", ()))
    )


def gradient_variance(model, x, estimators=None, num_draws: int = 50, seed: int = 0) -> dict:
    """Spread of each estimator's encoder gradient on a fixed batch.

    Each draw is the gradient of the estimator's surrogate loss (batch mean)
    with respect to the encoder's trainable parameters, with fresh samples;
    the model's state is used as is and never changed (``ema`` uses the run's
    baseline value, ``nvil`` its trained ``c(x)`` and running statistics).

    Args:
      model: a :class:`tfvae.BernoulliVAE` or :class:`tfvae.StackedBernoulliVAE`.
      x: ``[n, D]`` float data (the fixed batch).
      estimators: names from :data:`tfvae.estimators.ESTIMATORS`; default all
        that the model can run (``nvil`` only for a model trained with it).
      num_draws: gradients drawn per estimator (at least 2).
      seed: seed of the draws (same seed, same figures).

    Returns:
      ``{name: stats}`` with, per estimator: ``objective`` (``"elbo"`` or
      ``"k-sample bound"``: what the gradient is of), ``biased`` (a relaxation,
      whose mean is not that gradient: a low variance is not the whole story),
      ``num_samples`` (samples
      per example for ``rloo``/``vimco``; 1 otherwise, DisARM's being one
      antithetic pair), ``variance`` (trace of the gradient's covariance over
      encoder parameters, summed per-parameter variances), ``mean_sq_norm``
      (mean of ``||g||^2``), ``mean_norm`` (``||mean g||`` of the draws),
      ``snr`` (median over parameters of ``|mean| / std``) and ``norm_snr``
      (``||E g|| / sqrt(variance)``, ``||E g||`` estimated without the draws'
      noise): see :func:`_spread`.
    """
    from tfvae._keras import tf

    if not hasattr(model, "estimate"):
        raise ConfigError(
            f"gradient diagnostics are for Bernoulli-latent models; got {type(model).__name__}"
        )
    if isinstance(num_draws, bool) or int(num_draws) < 2:
        raise ConfigError(f"num_draws must be an integer >= 2, got {num_draws!r}")
    usable = available_estimators(model)
    names = usable if estimators is None else tuple(estimators)
    for name in names:
        estimators_lib.get(name)  # unknown names: ValueError listing the choices
        if name not in usable:
            raise ConfigError(
                f"estimator {name!r} needs a model trained with it (its baseline network or "
                f"control variate); "
                f"this model can use: {', '.join(usable)}"
            )
    x = tf.convert_to_tensor(np.asarray(x, np.float32).reshape(-1, model.input_dim))
    results = {}
    for name in names:
        fn = estimators_lib.get(name)
        k = max(model.num_samples, fn.min_samples)
        draws = _draws(model, x, name, k, int(num_draws), seed)  # [draws, params]
        results[name] = {
            "objective": fn.objective,
            "biased": options.ESTIMATORS[name].biased,
            "num_samples": k if fn.min_samples > 1 else 1,
            **_spread(draws),
        }
    return results


def _draws(model, x, name: str, k: int, num_draws: int, seed: int) -> np.ndarray:
    """``num_draws`` encoder gradients of one estimator's surrogate, ``[draws, params]``."""
    from tfvae._keras import tf
    from tfvae.runtime import stateless_seed

    variables = model.inference_variables

    @tf.function(input_signature=[tf.TensorSpec([2], tf.int32)])
    def draw(s):
        with tf.GradientTape() as tape:
            est, _ = model.estimate(x, estimator=name, seed=s, training=False, num_samples=k)
        grads = tape.gradient(est.loss, variables)
        return tf.concat([tf.reshape(g, [-1]) for g in grads], axis=0)

    return np.stack([draw(stateless_seed(seed, i)).numpy().astype(np.float64)
                     for i in range(num_draws)])


#: A spread below this fraction of a parameter's mean gradient is float32 rounding.
ROUNDING = 128 * float(np.finfo(np.float32).eps)


def _spread(draws: np.ndarray) -> dict:
    """Variance, norms and signal-to-noise ratios of gradient draws ``[draws, params]``.

    ``norm_snr`` is ``||E g|| / sqrt(variance)`` with ``||E g||^2`` estimated
    without the draws' own noise: ``||mean||^2 - variance / draws`` (0 if
    negative). The plain ``||mean|| / sqrt(variance)`` is at least about
    ``1 / sqrt(draws)`` whatever the estimator: for the estimators with the
    least signal it would rank the draws, not the estimators.

    ``snr`` is the median over parameters of ``|mean| / std``: robust to the
    few parameters a deterministic term (the KL's, for a unit whose
    probability is nearly saturated) moves far more than the noise, whose
    ratios in the hundreds would swamp a mean. It leaves out the parameters
    whose draws agree to within float32 rounding (:data:`ROUNDING` of their
    mean). A parameter whose gradient has mean zero shows about
    ``0.67 / sqrt(draws)`` here from 20 draws on (``0.74 / sqrt(draws)`` at 5):
    unlike ``norm_snr``, compare it only at equal draws.

    Draws that never vary give ``inf`` (``nan`` if they are all zero).
    """
    mean = draws.mean(axis=0)
    var = draws.var(axis=0, ddof=1)  # unbiased, per parameter
    std = np.sqrt(var)
    spread = std > ROUNDING * np.abs(mean)
    trace = float(var.sum())
    mean_norm = float(np.linalg.norm(mean))
    signal = max(mean_norm ** 2 - trace / len(draws), 0.0)  # unclipped: unbiased, ||E g||^2
    still = float("inf") if mean_norm > 0 else float("nan")  # no spread: all signal, or none
    return {
        "variance": trace,
        "mean_sq_norm": float(np.mean(np.sum(draws * draws, axis=1))),
        "mean_norm": mean_norm,
        "snr": float(np.median(np.abs(mean[spread]) / std[spread])) if spread.any() else still,
        "norm_snr": float(np.sqrt(signal / trace)) if trace > 0 else still,
    }
