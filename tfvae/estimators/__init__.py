"""Gradient estimators for binary latent variables, as small pure functions.

This package holds the estimators of tfvae's binary-latent models. This
module is the registry (:func:`register`, :func:`get`, :data:`ESTIMATORS`),
the types every estimator shares (:class:`Problem`, :class:`State`,
:class:`Estimate`) and the estimators for one layer of binary latents
(:class:`tfvae.BernoulliVAE`); :mod:`tfvae.estimators.layered` holds their
per-layer counterparts for stacked binary latents, sigmoid belief networks
(:class:`tfvae.StackedBernoulliVAE`), under the same names.

A Bernoulli latent cannot be reparameterized, so the gradient of
``E_q(z|x)[log p(x|z)]`` with respect to the encoder is estimated from samples.
Each estimator here is one function ``fn(problem, state) -> Estimate`` that
draws its own samples from the encoder logits and returns a *surrogate loss*:
a scalar whose gradient is the estimator (for the encoder: the score-function
or antithetic estimate; for the decoder and the prior: the usual Monte Carlo
gradient at the fixed samples). Adding an estimator is one function with a
:func:`register` decorator plus its line in :data:`tfvae.options.ESTIMATORS`
(its name, what it needs, what it estimates); :class:`tfvae.BernoulliVAE`
looks estimators up by name in :data:`ESTIMATORS` and never branches on names.

Shapes in comments: ``batch`` examples, ``latent`` binary units, ``k``
samples per example.

Surrogates use the "magic box" form ``stop(s) * (log q - stop(log q))``
(Foerster et al. 2018, DiCE): its value is 0 and its gradient is
``s * grad log q``, so the loss *value* stays the negative objective the model
optimises (``-log p(x|z) + KL`` for the ELBO estimators) and training curves
stay readable whatever the estimator.

Estimators of the ELBO gradient (the KL to the prior is analytic and added by
the caller through ``problem.kl``): ``reinforce``, ``ema``, ``nvil``,
``rloo``, ``disarm``, ``arm``, ``relax`` (:mod:`tfvae.estimators.relax`),
and the biased relaxations ``gumbel`` and
``straight-through`` (pathwise gradients through a Concrete sample: no score
term). ``vimco`` estimates the gradient of the k-sample importance-weighted
bound instead (Mnih & Rezende 2016).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

from tfvae import objectives, options
from tfvae._keras import tf, tfd, tfp
from tfvae.distribute import global_mean
from tfvae.errors import ConfigError
from tfvae.estimators import relax as relax_lib


class Problem(NamedTuple):
    """What an estimator needs from the model for one batch.

    Attributes:
      logits: ``[batch, latent]`` encoder logits of ``q(z|x)`` (differentiable).
      log_likelihood: callable ``z [..., batch, latent] -> log p(x|z) [..., batch]``
        (differentiable wrt the decoder, and wrt ``z``: ``z`` is a stopped sample
        except for the relaxations, ``gumbel`` and ``straight-through``).
      log_prior: callable ``z [..., batch, latent] -> log p(z) [..., batch]``.
      kl: ``[batch]`` analytic ``KL(q(z|x) || p(z))`` already multiplied by the
        KL weight (differentiable wrt encoder and prior).
      kl_weight: scalar KL weight (warm-up); 1 gives the ELBO.
      seed: a stateless seed (``[2]`` int32 tensor) or None for stateful draws.
      num_samples: samples per example for multi-sample estimators.
      decay: decay of running averages (``ema``, ``nvil``).
      input_baseline: ``[batch]`` learned baseline ``c(x)`` (differentiable wrt
        the baseline network only), or None when the model has none.
      normalize: ``nvil``: divide the signal by ``max(1, sqrt(running var))``.
      temperature: temperature of the Concrete relaxation (``gumbel``,
        ``straight-through``); the default is the floor of Jang et al.'s annealing.
      control: ``relax``'s learned control variate for this batch, ``z -> c(z)``
        (:meth:`tfvae.estimators.relax.RelaxControl.bind`), or None.
    """

    logits: tf.Tensor
    log_likelihood: Callable
    log_prior: Callable
    kl: tf.Tensor
    kl_weight: tf.Tensor
    seed: tf.Tensor | None = None
    num_samples: int = 1
    decay: float = 0.9
    input_baseline: tf.Tensor | None = None
    normalize: bool = True
    temperature: float = 0.5
    control: Callable | None = None


class State(NamedTuple):
    """Estimator state kept in non-trainable variables of the model.

    Attributes:
      mean: scalar running mean of the learning signal (``ema``, ``nvil``).
      var: scalar running variance of the centred signal (``nvil``).
      initialized: scalar float, 1 once the first batch has set ``mean``.
    """

    mean: tf.Tensor
    var: tf.Tensor
    initialized: tf.Tensor


class Estimate(NamedTuple):
    """What an estimator returns.

    Attributes:
      loss: scalar surrogate loss; its gradient is the (negated) estimator of
        the objective's gradient for every parameter.
      log_likelihood: ``[batch]`` ``log p(x|z)`` at one sample ``z ~ q`` (for
        the single-sample ELBO metric).
      signal: ``[..., batch]`` learning signal multiplying the score (after the
        baseline), for metrics.
      baseline: ``[..., batch]`` (or scalar) baseline subtracted, for metrics.
      updates: new values of :class:`State` fields (by field name).
      rest: ``[batch]`` the single-sample bound's other terms at the same sample
        (layered models, whose KL is not analytic); None for one layer.
    """

    loss: tf.Tensor
    log_likelihood: tf.Tensor
    signal: tf.Tensor
    baseline: tf.Tensor
    updates: dict
    rest: tf.Tensor | None = None


#: name -> estimator function; the names and metadata are those of
#: :data:`tfvae.options.ESTIMATORS`.
ESTIMATORS: dict[str, Callable[[Problem, State], Estimate]] = {}


def register(name: str):
    """Registers an estimator function under ``name`` (a decorator).

    ``name`` must have an entry in :data:`tfvae.options.ESTIMATORS`, which
    holds what the function needs (``min_samples``, ``input_baseline``,
    ``control_variate``) and
    what it estimates (``objective``); the function gets those as attributes.
    """
    info = options.ESTIMATORS[name]

    def wrap(fn):
        fn.min_samples = info.min_samples
        fn.input_baseline = info.input_baseline
        fn.objective = info.objective
        fn.control_variate = info.control_variate
        ESTIMATORS[name] = fn
        return fn

    return wrap


def get(name: str):
    """The estimator function called ``name``; ConfigError naming the choices otherwise."""
    try:
        return ESTIMATORS[name]
    except KeyError:
        raise ConfigError(
            f"unknown estimator {name!r}; choose one of: {', '.join(ESTIMATORS)}"
        ) from None


def check_temperature(value) -> float:
    """A Concrete temperature as a float; ConfigError unless a finite positive number."""
    try:
        temperature = float(value)
    except (TypeError, ValueError):
        temperature = math.nan
    if isinstance(value, bool) or not (math.isfinite(temperature) and temperature > 0):
        raise ConfigError(f"temperature must be a positive number (e.g. 0.5), got {value!r}")
    return temperature


# ------------------------------------------------------------------ helpers

#: The stateless generator of the estimators' uniforms: Philox, which TensorFlow's
#: kernels use on a CPU anyway ("auto_select"); under XLA "auto_select" picks another
#: generator, slower per number inside the compiled loop on a CPU.
UNIFORM_ALG = "philox"


def _posterior(logits):
    return tfd.Independent(tfd.Bernoulli(logits=logits, dtype=tf.float32), 1)


def _seeds(seed, n: int):
    # Stateless seeds for n independent draws; None draws a fresh seed each call.
    return tfp.random.split_seed(tfp.random.sanitize_seed(seed), n=n)


def _sample(logits, seed, n=None):
    """Stopped samples ``z ~ q(z|x)``: ``[batch, latent]`` or ``[n, batch, latent]``.

    ``uniform < sigmoid(logits)`` with a stateless uniform: TFP's Bernoulli
    sampler, draw for draw, without its seed and shape plumbing in the graph.
    """
    if seed is None:
        q = _posterior(logits)
        return tf.stop_gradient(q.sample() if n is None else q.sample(n))
    shape = tf.shape(logits) if n is None else tf.concat([[n], tf.shape(logits)], 0)
    u = tf.random.stateless_uniform(shape, seed=tfp.random.sanitize_seed(seed), alg=UNIFORM_ALG)
    return tf.stop_gradient(tf.cast(u < tf.sigmoid(logits), tf.float32))


def _score_term(signal, log_q):
    """``stop(signal) * (log q - stop(log q))``: value 0, gradient ``signal * grad log q``."""
    return tf.stop_gradient(signal) * (log_q - tf.stop_gradient(log_q))


def _elbo_loss(log_likelihood, score, kl):
    """Negative ELBO surrogate: ``-(log p(x|z) + score term) + KL``, averaged over the batch."""
    return tf.reduce_mean(-(log_likelihood + score) + kl)


def _running(state, value, decay):
    """Running mean update started at the first batch's value (not at 0)."""
    return tf.where(state.initialized > 0, decay * state.mean + (1.0 - decay) * value, value)


def _first_batch_baseline(state, f):
    """The baseline from before this batch: the running mean, or on the very first
    batch the leave-one-out batch mean (independent of each example's own sample,
    so the estimator stays unbiased; 0 for a batch of one)."""
    n = tf.cast(tf.size(f), f.dtype)
    loo = tf.math.divide_no_nan(tf.reduce_sum(f) - f, n - 1.0)  # [batch]
    return tf.where(state.initialized > 0, state.mean, tf.stop_gradient(loo))


# ------------------------------------------------------------------ estimators


@register("reinforce")
def reinforce(problem: Problem, state: State) -> Estimate:
    """Score function (REINFORCE, Williams 1992) without a baseline.

    ``grad E_q[f] = E_q[f(z) grad log q(z|x)]`` with ``f = log p(x|z)``: unbiased,
    high variance when ``f`` is far from 0 (it always is: a log-likelihood).
    """
    z = _sample(problem.logits, problem.seed)  # [batch, latent]
    f = problem.log_likelihood(z)  # [batch]
    log_q = objectives.log_likelihood(_posterior(problem.logits), z)  # [batch]
    loss = _elbo_loss(f, _score_term(f, log_q), problem.kl)
    return Estimate(loss, f, tf.stop_gradient(f), tf.zeros_like(f), {})


@register("ema")
def ema(problem: Problem, state: State) -> Estimate:
    """REINFORCE with a moving-average baseline ``c`` of ``log p(x|z)``.

    The learning signal is ``f(z) - c`` with ``c`` taken from *before* this
    batch's update (so it does not depend on this batch's samples and the
    estimator stays unbiased); then ``c <- decay * c + (1 - decay) * mean(f)``.
    The first batch starts ``c`` at its own mean and uses the leave-one-out
    mean as its baseline, avoiding a huge initial signal.
    """
    z = _sample(problem.logits, problem.seed)  # [batch, latent]
    f = problem.log_likelihood(z)  # [batch]
    log_q = objectives.log_likelihood(_posterior(problem.logits), z)  # [batch]
    baseline = _first_batch_baseline(state, f)  # [] or [batch]
    signal = tf.stop_gradient(f) - baseline  # [batch]
    loss = _elbo_loss(f, _score_term(signal, log_q), problem.kl)
    # Over the global batch, so every replica keeps the same baseline.
    f_mean = global_mean(tf.stop_gradient(f))
    updates = {"mean": _running(state, f_mean, problem.decay), "initialized": tf.constant(1.0)}
    return Estimate(loss, f, signal, baseline, updates)


@register("nvil")
def nvil(problem: Problem, state: State) -> Estimate:
    """Neural variational inference and learning (Mnih & Gregor 2014, section 3.3).

    Signal ``(f(z) - c(x) - m) / max(1, sqrt(v))``: ``c(x)`` is a learned,
    input-dependent baseline, ``m`` and ``v`` running mean and variance of
    ``f - c(x)`` (from before this batch, as in ``ema``). ``c`` is trained to
    regress ``f - m`` with squared error; that term reaches the baseline
    network only. Variance normalisation (``problem.normalize``) rescales the
    gradient by a positive factor, so only its direction stays unbiased.
    """
    z = _sample(problem.logits, problem.seed)  # [batch, latent]
    f = problem.log_likelihood(z)  # [batch]
    log_q = objectives.log_likelihood(_posterior(problem.logits), z)  # [batch]
    c = problem.input_baseline  # [batch]
    centred = tf.stop_gradient(f - c)  # [batch]
    mean = _first_batch_baseline(state, centred)  # [] or [batch]
    signal = centred - mean  # [batch]
    if problem.normalize:  # a Python option of the model, not a tensor
        signal = signal / tf.maximum(1.0, tf.sqrt(state.var))
    # Baseline regression (Mnih & Gregor eq. 9): gradient to c(x) only; magic box keeps
    # the loss value the negative ELBO.
    regression = tf.square(tf.stop_gradient(f) - tf.stop_gradient(mean) - c)  # [batch]
    regression = regression - tf.stop_gradient(regression)
    loss = _elbo_loss(f, _score_term(signal, log_q), problem.kl) + tf.reduce_mean(regression)
    # Global-batch moments, so every replica keeps the same running mean and variance.
    new_mean = _running(state, global_mean(centred), problem.decay)
    batch_var = global_mean(tf.square(centred - new_mean))
    new_var = tf.where(
        state.initialized > 0, problem.decay * state.var + (1.0 - problem.decay) * batch_var,
        batch_var,
    )
    updates = {"mean": new_mean, "var": new_var, "initialized": tf.constant(1.0)}
    return Estimate(loss, f, signal, tf.stop_gradient(c) + mean, updates)


@register("rloo")
def rloo(problem: Problem, state: State) -> Estimate:
    """REINFORCE leave-one-out (Kool, van Hoof & Welling 2019; Salimans & Knowles 2014).

    ``k`` samples per example; sample ``j``'s signal is ``f(z_j)`` minus the
    mean of the other ``k - 1``, which does not depend on ``z_j``: unbiased.
    The gradient is averaged over the ``k`` samples (decoder included).
    """
    k = problem.num_samples
    z = _sample(problem.logits, problem.seed, n=k)  # [k, batch, latent]
    f = problem.log_likelihood(z)  # [k, batch]
    log_q = objectives.log_likelihood(_posterior(problem.logits), z)  # [k, batch]
    f_stop = tf.stop_gradient(f)
    baseline = (tf.reduce_sum(f_stop, axis=0, keepdims=True) - f_stop) / (k - 1.0)  # [k, batch]
    signal = f_stop - baseline  # [k, batch]
    score = tf.reduce_mean(_score_term(signal, log_q), axis=0)  # [batch]
    loss = _elbo_loss(tf.reduce_mean(f, axis=0), score, problem.kl)
    return Estimate(loss, f[0], signal, baseline, {})


@register("disarm")
def disarm(problem: Problem, state: State) -> Estimate:
    """DisARM (Dong, Mnih & Tucker 2020, eq. 6 / Algorithm 1, factorised case).

    Antithetic pair from one uniform ``u``: ``b = 1[u < sigma(a)]``,
    ``b~ = 1[1 - u < sigma(a)]``. The gradient wrt the logits ``a`` is
    ``0.5 (f(b) - f(b~)) (-1)^{b~} 1[b != b~] sigma(|a|)`` per unit, with
    ``f = log p(x|b)`` (the KL is analytic and separate). The surrogate
    ``stop(g) * (a - stop(a))`` has exactly that gradient; the decoder gets the
    average of its gradients at ``b`` and ``b~``.
    """
    a = problem.logits  # [batch, latent]
    _, b, b_anti, f = _antithetic_pair(problem)
    diff = 0.5 * tf.stop_gradient(f[0] - f[1])  # [batch]
    sign = 1.0 - 2.0 * b_anti  # (-1)^{b~}
    weight = sign * tf.cast(tf.not_equal(b, b_anti), a.dtype) * tf.sigmoid(tf.abs(a))
    grad_a = diff[:, None] * tf.stop_gradient(weight)  # [batch, latent]
    return _pair_estimate(problem, f, grad_a, diff)


def _antithetic_pair(problem: Problem):
    """DisARM's and ARM's pair from one uniform per unit, and ``log p(x|.)`` at both.

    Returns ``u``, ``b = 1[u < sigma(a)]``, ``b~ = 1[1 - u < sigma(a)]`` (each
    ``[batch, latent]``, stopped) and ``f = log p(x|b), log p(x|b~)``, ``[2, batch]``.
    """
    a = problem.logits  # [batch, latent]
    u = tf.random.stateless_uniform(tf.shape(a), _seeds(problem.seed, 1)[0],
                                    alg=UNIFORM_ALG)  # [batch, latent]
    p = tf.sigmoid(tf.stop_gradient(a))
    b = tf.cast(u < p, a.dtype)  # [batch, latent]
    b_anti = tf.cast(1.0 - u < p, a.dtype)  # [batch, latent]
    return u, b, b_anti, problem.log_likelihood(tf.stack([b, b_anti]))  # f: [2, batch]


def _pair_estimate(problem: Problem, f, grad_a, diff) -> Estimate:
    """The surrogate ``stop(grad_a) * (a - stop(a))`` of a pair; the decoder gets both codes."""
    a = problem.logits
    score = tf.reduce_sum(grad_a * (a - tf.stop_gradient(a)), axis=-1)  # [batch]
    loss = _elbo_loss(tf.reduce_mean(f, axis=0), score, problem.kl)
    return Estimate(loss, f[0], diff, tf.stop_gradient(f[1]), {})


@register("vimco")
def vimco(problem: Problem, state: State) -> Estimate:
    """VIMCO (Mnih & Rezende 2016, eqs. 3, 8-10): gradient of the k-sample bound.

    ``L = log (1/k) sum_j w_j`` with ``log w_j = log p(x|z_j) + beta (log p(z_j)
    - log q(z_j|x))`` (``beta`` the KL weight, 1 for the bound itself). The
    score of sample ``j`` is multiplied by ``L - log (1/k)(sum_{i!=j} w_i + w^_j)``
    where ``w^_j`` is the geometric mean of the other weights; the other
    gradient is ``sum_j softmax(log w)_j grad log w_j`` at fixed samples. Not an
    ELBO estimator: ``problem.kl`` is unused.
    """
    k = problem.num_samples
    q = _posterior(problem.logits)
    z = _sample(problem.logits, problem.seed, n=k)  # [k, batch, latent]
    f = problem.log_likelihood(z)  # [k, batch]
    log_q = objectives.log_likelihood(q, z)  # [k, batch]
    log_w = f + problem.kl_weight * (problem.log_prior(z) - log_q)  # [k, batch]
    log_k = tf.math.log(tf.cast(k, log_w.dtype))
    bound = tf.reduce_logsumexp(log_w, axis=0) - log_k  # [batch]
    lw = tf.stop_gradient(log_w)
    # Replace each log w_j by the mean of the others (eq. 10); [k, k, batch]:
    # row j is the k log-weights with entry j swapped for that mean.
    others = (tf.reduce_sum(lw, axis=0, keepdims=True) - lw) / (k - 1.0)  # [k, batch]
    eye = tf.eye(k, dtype=lw.dtype)[:, :, None]  # [k, k, 1]
    swapped = lw[None] * (1.0 - eye) + others[:, None] * eye  # [k, k, batch]
    baseline = tf.reduce_logsumexp(swapped, axis=1) - log_k  # [k, batch]
    signal = tf.stop_gradient(bound)[None] - baseline  # [k, batch]
    score = tf.reduce_sum(_score_term(signal, log_q), axis=0)  # [batch]
    loss = -tf.reduce_mean(bound + score)
    return Estimate(loss, f[0], signal, baseline, {})


@register("arm")
def arm(problem: Problem, state: State) -> Estimate:
    """ARM, augment-REINFORCE-merge (Yin & Zhou 2019, ICLR), factorised case.

    From one uniform ``u`` per unit, ``b1 = 1[u > sigma(-a)]`` and ``b2 = 1[u <
    sigma(a)]`` (DisARM's ``b~`` and ``b``, both exact draws of ``q``); the
    gradient wrt the logits ``a`` is ``(f(b1) - f(b2)) (u - 1/2)`` per unit,
    with ``f = log p(x|b)`` (the KL is analytic and separate), as the
    official DisARM code's ``arm``. Unbiased; DisARM is its expectation over
    ``u`` given the pair, so DisARM's variance is never larger.
    """
    u, _, _, f = _antithetic_pair(problem)  # f[1] = f(b1), f[0] = f(b2)
    diff = tf.stop_gradient(f[1] - f[0])  # [batch]
    grad_a = diff[:, None] * (u - 0.5)  # [batch, latent]
    return _pair_estimate(problem, f, grad_a, diff)


def concrete_sample(logits, temperature, seed):
    """A binary Concrete sample (Maddison et al. 2017), reparameterized: ``[..., units]``.

    ``z~ = sigmoid((a + L) / temperature)`` with standard logistic noise ``L``:
    the sigmoid of a ``Logistic(a / temperature, 1 / temperature)`` draw, which
    is how TFP's ``RelaxedBernoulli`` samples (the same values for the same
    seed). That distribution is not used itself: its sigmoid bijector's
    gradient is NaN once ``(a + L) / temperature`` overflows ``exp`` in float32
    (a ``tf.where`` over an infinite branch; tensorflow/probability#1393, a
    saturated unit is enough), where ``tf.sigmoid``'s gradient goes to 0.
    """
    t = tf.cast(temperature, logits.dtype)
    return tf.sigmoid(tfd.Logistic(logits / t, 1.0 / t).sample(seed=seed))


def _relaxed(problem: Problem):
    """A Concrete sample ``z~`` and its hard code ``b = 1[z~ > 1/2]``, ``[batch, latent]``.

    ``z~ > 1/2`` exactly when ``a + L > 0``, so ``b`` is an exact draw of
    ``q(z|x)`` whatever the temperature.
    """
    z = concrete_sample(problem.logits, problem.temperature, _seeds(problem.seed, 1)[0])
    return z, tf.stop_gradient(tf.cast(z > 0.5, z.dtype))


@register("gumbel")
def gumbel(problem: Problem, state: State) -> Estimate:
    """Concrete / Gumbel-Softmax relaxation (Maddison et al. 2017; Jang et al. 2017): biased.

    The decoder is evaluated at the relaxed sample ``z~`` in ``(0, 1)`` and
    ``log p(x|z~)`` is differentiated pathwise, through ``z~``, to the logits;
    the KL stays analytic. Its mean is the gradient of the relaxed objective
    ``E[log p(x|z~)] - KL``, not of the ELBO: biased, the bias vanishing as the
    temperature goes to 0 while the variance grows. The loss value is the
    negative single-sample ELBO at the hard code ``b = 1[z~ > 1/2]`` (an exact
    draw, decoded beside ``z~``), so curves compare with the other estimators';
    ``signal`` holds the relaxed ``log p(x|z~)``.
    """
    z, b = _relaxed(problem)
    f = problem.log_likelihood(tf.stack([z, b]))  # [2, batch]: relaxed, hard
    relaxed = f[0] - tf.stop_gradient(f[0])  # value 0, gradient of log p(x|z~)
    loss = _elbo_loss(tf.stop_gradient(f[1]), relaxed, problem.kl)
    return Estimate(loss, tf.stop_gradient(f[1]), tf.stop_gradient(f[0]),
                    tf.zeros_like(f[0]), {})


@register("straight-through")
def straight_through(problem: Problem, state: State) -> Estimate:
    """Straight-through Gumbel-Softmax (Jang et al. 2017, section 2.2), binary case: biased.

    Forward, the decoder sees the hard code ``b = 1[z~ > 1/2]``, an exact draw
    of ``q``; backward, ``b`` is replaced by the Concrete sample ``z~`` at
    ``--temperature`` (the straight-through idea of Bengio et al. 2013, with
    the relaxed sample's gradient rather than that of ``sigmoid(a)``). The
    loss value is the single-sample negative ELBO; the gradient, of
    ``log p(x|b)`` as if it were ``log p(x|z~)``, is biased at every temperature.
    """
    z, b = _relaxed(problem)
    hard = b + (z - tf.stop_gradient(z))  # value exactly b, gradient dz~
    f = problem.log_likelihood(hard)  # [batch]
    loss = _elbo_loss(f, 0.0, problem.kl)
    return Estimate(loss, tf.stop_gradient(f), tf.stop_gradient(f), tf.zeros_like(f), {})


@register("relax")
def relax_estimator(problem: Problem, state: State) -> Estimate:
    """RELAX (Grathwohl et al. 2018, "Backpropagation through the Void"): unbiased.

    REBAR's relaxed control variate with a learned control network and
    temperature (``problem.control``): :func:`tfvae.estimators.relax.one_layer`.
    """
    u, v = (tf.random.stateless_uniform(tf.shape(problem.logits), s, alg=UNIFORM_ALG)
            for s in _seeds(problem.seed, 2))  # [batch, latent] each
    loss, f, part = relax_lib.one_layer(problem, u, v)
    return Estimate(loss, f, part.signal, part.baseline, {})
