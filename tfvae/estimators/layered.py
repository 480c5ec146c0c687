"""Gradient estimators for stacked binary latents: sigmoid belief networks.

The per-layer estimators of :class:`tfvae.StackedBernoulliVAE`, in their own
registry (:data:`LAYERED_ESTIMATORS`) beside the one-layer estimators of
:mod:`tfvae.estimators`, whose :class:`~tfvae.estimators.Estimate` and
helpers they share.

The model has ``L`` layers of binary units: inference ``q(z_1|x) q(z_2|z_1)
... q(z_L|z_{L-1})`` and generation ``p(z_L) p(z_{L-1}|z_L) ... p(x|z_1)``,
each conditional a factorised Bernoulli. With ``z_0 = x``, the bound is

    ELBO = E_q[ sum_l G_l - sum_{l<L} Q_l - KL_L ]

with ``G_l = log p(z_{l-1}|z_l)`` (``G_1 = log p(x|z_1)``), ``Q_l = log
q(z_l|z_{l-1})``, and the top layer's ``KL_L = KL(q(z_L|z_{L-1}) || p(z_L))``
analytic. Learning signals are local: layer ``l``'s score term uses only the
terms that depend on ``z_l`` or on what is sampled from it,

    S_l = sum_{j>=l} G_j - sum_{l<=j<L} Q_j - KL_L   (l < L),    S_L = G_L,

(the terms of lower layers have zero covariance with its score). With KL
warm-up weight ``beta`` every term but ``G_1`` is multiplied by ``beta``.

Each estimator here is one function ``fn(chain, state) -> Estimate``,
registered under the name of its one-layer counterpart in
:mod:`tfvae.estimators` (same :data:`tfvae.options.ESTIMATORS` line): per-layer
baselines for ``ema`` and ``nvil``, leave-one-out over whole chains for
``rloo``, per-layer antithetic pairs for ``disarm`` and ``arm`` (each pair's
downstream layers drawn with shared uniforms), ``vimco`` over whole chains,
and for the relaxations ``gumbel`` and ``straight-through`` Concrete samples
passed up the chain pathwise (no score terms, no local signals). ``relax``
gives each layer a learned control variate (:mod:`tfvae.estimators.relax`).

Shapes in comments: ``batch`` examples, ``K_l`` units of layer ``l``, ``k``
chains per example. A layer's tensors are lists indexed by layer (0 is ``z_1``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from tfvae import objectives, options
from tfvae._keras import tf, tfd, tfp
from tfvae.distribute import global_mean
from tfvae.errors import ConfigError
from tfvae.estimators import UNIFORM_ALG, Estimate, _running, _score_term, concrete_sample
from tfvae.estimators import relax as relax_lib


class Chain(NamedTuple):
    """What a layered estimator needs from the model for one batch.

    Attributes:
      x: ``[batch, D]`` data.
      encoders: per layer, ``z_{l-1} -> logits of q(z_l|z_{l-1})`` (``z_0 = x``).
      likelihood: ``z_1 [..., batch, K_1] -> log p(x|z_1) [..., batch]``.
      generators: per layer ``l >= 2``, ``z_l -> logits of p(z_{l-1}|z_l)``.
      prior_logits: ``[K_L]`` logits of ``p(z_L)``.
      kl_weight: scalar warm-up weight (1 for the ELBO).
      seed: stateless seed (``[2]`` int32) or None.
      num_samples: chains per example (``rloo``, ``vimco``).
      decay: decay of running averages (``ema``, ``nvil``).
      baselines: per layer, ``z_{l-1} -> c_l [batch]`` (``nvil``), or None.
      sizes: units per layer, bottom (``z_1``) first.
      temperature: temperature of the Concrete relaxation (``gumbel``,
        ``straight-through``).
      controls: per layer, ``relax``'s :class:`~tfvae.estimators.relax.RelaxControl`.
    """

    x: tf.Tensor
    encoders: tuple
    likelihood: Callable
    generators: tuple
    prior_logits: tf.Tensor
    kl_weight: tf.Tensor
    seed: tf.Tensor | None = None
    num_samples: int = 1
    decay: float = 0.9
    baselines: tuple | None = None
    sizes: tuple = ()
    temperature: float = 0.5
    controls: tuple | None = None


class LayerState(NamedTuple):
    """Per-layer estimator state: running means and variances ``[L]``, ``initialized``."""

    mean: tf.Tensor
    var: tf.Tensor
    initialized: tf.Tensor


#: name -> layered estimator; names and metadata are those of :data:`tfvae.options.ESTIMATORS`.
LAYERED_ESTIMATORS: dict[str, Callable[[Chain, LayerState], Estimate]] = {}


def register(name: str):
    """Registers a layered estimator under the name of its one-layer counterpart."""
    if name not in options.ESTIMATORS:
        raise ConfigError(f"{name!r} has no line in tfvae.options.ESTIMATORS")

    def wrap(fn):
        LAYERED_ESTIMATORS[name] = fn
        return fn

    return wrap


def get(name: str):
    try:
        return LAYERED_ESTIMATORS[name]
    except KeyError:
        raise ConfigError(f"unknown estimator {name!r}; choose one of: "
                          f"{', '.join(LAYERED_ESTIMATORS)}") from None


# ------------------------------------------------------------------ chains


def uniforms(chain: Chain, shapes, n=None):
    """One uniform tensor per layer, ``[batch, K_l]`` or ``[n, batch, K_l]``."""
    seeds = tfp.random.split_seed(tfp.random.sanitize_seed(chain.seed), n=len(shapes))
    lead = [] if n is None else [n]
    return [tf.random.stateless_uniform(lead + [tf.shape(chain.x)[0], size], seed=s,
                                        alg=UNIFORM_ALG)
            for s, size in zip(seeds, shapes, strict=True)]


def sample(chain: Chain, u, start: int = 0, below=None, first=None):
    """Ancestral draws ``z_l = 1[u_l < sigmoid(a_l)]`` from layer ``start`` up.

    ``below`` is the input of layer ``start`` (``x`` for 0) and ``first``, if
    given, replaces the draw of layer ``start`` (an antithetic code). Returns
    the codes and the logits of each layer from ``start`` on.
    """
    h = chain.x if below is None else below
    zs, logits = [], []
    for layer in range(start, len(chain.encoders)):
        a = chain.encoders[layer](h)  # [..., batch, K_l]
        z = first if (layer == start and first is not None) else \
            tf.cast(u[layer] < tf.sigmoid(tf.stop_gradient(a)), tf.float32)
        zs.append(tf.stop_gradient(z))
        logits.append(a)
        h = zs[-1]
    return zs, logits


def log_bernoulli(logits, z):
    """``sum log Bernoulli(z | logits)`` over the last axis (fused kernel).

    ``logits`` may lack ``z``'s leading (chain) axis: it is broadcast first,
    as the fused kernel's gradient is elementwise.
    """
    shape = tf.broadcast_dynamic_shape(tf.shape(logits), tf.shape(z))
    logits, z = tf.broadcast_to(logits, shape), tf.broadcast_to(z, shape)
    return tf.reduce_sum(objectives.bernoulli_log_prob(logits, z), axis=-1)


def terms(chain: Chain, zs, logits, start: int = 0, below=None):
    """``G_l`` (layers ``start..L``), ``Q_l`` (``start..L-1``) and the top KL, per example.

    ``zs``/``logits`` hold the codes and logits of layers ``start..L``;
    ``below`` is the code of layer ``start - 1`` (unused for ``start = 0``).
    """
    top = len(chain.encoders) - 1
    gen, inf = [], []
    for i, layer in enumerate(range(start, top + 1)):
        if layer == 0:
            gen.append(chain.likelihood(zs[i]))  # G_1 = log p(x|z_1)
        else:
            lower = below if i == 0 else zs[i - 1]
            gen.append(log_bernoulli(chain.generators[layer - 1](zs[i]), lower))
        if layer < top:
            inf.append(log_bernoulli(logits[i], zs[i]))
    kl = tf.reduce_sum(objectives.kl_bernoulli(logits[-1], chain.prior_logits), axis=-1)
    return gen, inf, kl


def _signals(chain: Chain, gen, inf, kl, start: int = 0):
    """Layer signals ``S_l`` (from ``start``; stopped) and the (weighted) ELBO value."""
    beta = chain.kl_weight
    top = len(chain.encoders) - 1
    weighted = [g if layer == 0 else beta * g for layer, g in enumerate(gen, start)]
    signals = []
    for layer in range(start, top + 1):
        if layer == top:
            signals.append(weighted[layer - start])
            continue
        later = tf.add_n(weighted[layer - start:]) - beta * tf.add_n(inf[layer - start:])
        signals.append(later - beta * kl)
    value = tf.add_n(weighted) - beta * (tf.add_n(inf) if inf else 0.0) - beta * kl
    return [tf.stop_gradient(s) for s in signals], value


def _surrogate(chain, gen, inf, kl, logits, zs, signals_minus_baselines):
    """Negative ELBO value with the estimator's gradient, averaged over the batch."""
    beta = chain.kl_weight
    direct = gen[0] + beta * (tf.add_n(gen[1:]) if len(gen) > 1 else 0.0) - beta * kl
    value = direct - beta * (tf.add_n([tf.stop_gradient(q) for q in inf]) if inf else 0.0)
    score = tf.add_n([_score_term(s, log_bernoulli(a, z))
                      for s, a, z in zip(signals_minus_baselines, logits, zs, strict=True)])
    return -tf.reduce_mean(value + score)


def _stack(values):
    return tf.stack(values)  # [L, ...]


# ------------------------------------------------------------------ estimators


def _draw(chain: Chain, n: int | None = None):
    """One chain per example (``n`` per example): samples, terms and local signals."""
    zs, logits = sample(chain, uniforms(chain, chain.sizes, n=n))
    gen, inf, kl = terms(chain, zs, logits)
    signals, value = _signals(chain, gen, inf, kl)
    return zs, logits, gen, inf, kl, signals, value


@register("reinforce")
def reinforce(chain: Chain, state: LayerState) -> Estimate:
    """Score function per layer with local signals, no baseline."""
    zs, logits, gen, inf, kl, signals, value = _draw(chain)
    loss = _surrogate(chain, gen, inf, kl, logits, zs, signals)
    return Estimate(loss, gen[0], _stack(signals), tf.zeros_like(_stack(signals)), {},
                    value - gen[0])


@register("ema")
def ema(chain: Chain, state: LayerState) -> Estimate:
    """Per-layer moving-average baselines of the local signals (from before the batch)."""
    zs, logits, gen, inf, kl, signals, value = _draw(chain)
    baselines = [_first_baseline(state, layer, s) for layer, s in enumerate(signals)]
    centred = [s - b for s, b in zip(signals, baselines, strict=True)]
    loss = _surrogate(chain, gen, inf, kl, logits, zs, centred)
    means = tf.stack([global_mean(s) for s in signals])  # [L]
    updates = {"mean": _running(state, means, chain.decay), "initialized": tf.constant(1.0)}
    return Estimate(loss, gen[0], _stack(centred), _stack(baselines), updates, value - gen[0])


def _first_baseline(state: LayerState, layer: int, signal):
    """Layer ``layer``'s running mean, or on the first batch the leave-one-out mean."""
    n = tf.cast(tf.size(signal), signal.dtype)
    loo = tf.math.divide_no_nan(tf.reduce_sum(signal) - signal, n - 1.0)
    return tf.where(state.initialized > 0, state.mean[layer], loo)


@register("nvil")
def nvil(chain: Chain, state: LayerState) -> Estimate:
    """NVIL with local signals: per-layer ``c_l(z_{l-1})`` and running centring."""
    if chain.baselines is None:
        raise ConfigError("nvil needs a model built with its baseline networks")
    zs, logits, gen, inf, kl, signals, value = _draw(chain)
    inputs = [chain.x] + zs[:-1]
    cs = [net(h) for net, h in zip(chain.baselines, inputs, strict=True)]  # [batch] each
    centred = [s - tf.stop_gradient(c) for s, c in zip(signals, cs, strict=True)]
    means = [_first_baseline(state, layer, c) for layer, c in enumerate(centred)]
    final = [c - m for c, m in zip(centred, means, strict=True)]
    regression = tf.add_n([tf.reduce_mean(tf.square(s - tf.stop_gradient(m) - c))
                           for s, m, c in zip(signals, means, cs, strict=True)])
    loss = _surrogate(chain, gen, inf, kl, logits, zs, final)
    loss += regression - tf.stop_gradient(regression)  # c_l's gradient, the value unchanged
    new_mean = _running(state, tf.stack([global_mean(c) for c in centred]), chain.decay)
    batch_var = tf.stack([global_mean(tf.square(c - new_mean[i])) for i, c in enumerate(centred)])
    new_var = tf.where(state.initialized > 0,
                       chain.decay * state.var + (1.0 - chain.decay) * batch_var, batch_var)
    updates = {"mean": new_mean, "var": new_var, "initialized": tf.constant(1.0)}
    return Estimate(loss, gen[0], _stack(final), _stack(means), updates, value - gen[0])


@register("rloo")
def rloo(chain: Chain, state: LayerState) -> Estimate:
    """``k`` whole chains per example; each layer's signal baselined by the other chains'."""
    k = chain.num_samples
    # q(z_1|x) once, broadcast over the k chains; terms each [k, batch].
    zs, logits, gen, inf, kl, signals, value = _draw(chain, n=k)
    centred = [s - (tf.reduce_sum(s, 0, keepdims=True) - s) / (k - 1.0) for s in signals]
    loss = _surrogate(chain, gen, inf, kl, logits, zs, centred)  # mean over chains and batch
    return Estimate(loss, gen[0][0], _stack(centred), _stack(signals) - _stack(centred), {},
                    value[0] - gen[0][0])


@register("disarm")
def disarm(chain: Chain, state: LayerState) -> Estimate:
    """DisARM per layer (Dong et al. 2020, hierarchical case).

    Layer ``l`` pairs its draw ``b = 1[u_l < sigma(a_l)]`` with the antithetic
    ``b~ = 1[1 - u_l < sigma(a_l)]`` (given the same ``z_{l-1}``); each is
    continued upward with the same uniforms, and the local signals of the two
    continuations give the gradient of ``a_l``:
    ``0.5 (S_l(b) - S_l(b~)) (-1)^{b~} 1[b != b~] sigma(|a_l|)``.
    """

    def grad_of(diff, u, a, b, anti):
        weight = (1.0 - 2.0 * anti) * tf.cast(tf.not_equal(b, anti), tf.float32) \
            * tf.sigmoid(tf.abs(a))
        return 0.5 * diff[:, None] * weight, 0.5 * diff

    return _antithetic(chain, grad_of)


def _antithetic(chain: Chain, grad_of) -> Estimate:
    """Per layer, an antithetic pair and its continuations' local signals.

    ``grad_of(diff, u_l, a_l, b, b~)`` maps ``diff = S_l(b) - S_l(b~)``
    (``[batch]``) to the gradient of the logits ``a_l`` (``[batch, K_l]``) and
    the signal shown in metrics.
    """
    u = uniforms(chain, chain.sizes)
    zs, logits = sample(chain, u)
    gen, inf, kl = terms(chain, zs, logits)
    signals, main_value = _signals(chain, gen, inf, kl)
    beta = chain.kl_weight
    direct = gen[0] + beta * (tf.add_n(gen[1:]) if len(gen) > 1 else 0.0) - beta * kl
    score = 0.0
    shown = []
    for layer, a in enumerate(logits):
        p = tf.sigmoid(tf.stop_gradient(a))
        anti = tf.stop_gradient(tf.cast(1.0 - u[layer] < p, tf.float32))
        below = chain.x if layer == 0 else zs[layer - 1]
        a_zs, a_logits = sample(chain, u, start=layer, below=below, first=anti)
        a_gen, a_inf, a_kl = terms(chain, a_zs, a_logits, start=layer, below=below)
        anti_signal = _signals(chain, a_gen, a_inf, a_kl, start=layer)[0][0]
        grad_a, signal = grad_of(signals[layer] - anti_signal, u[layer], tf.stop_gradient(a),
                                 zs[layer], anti)  # [batch, K_l], [batch]
        score += tf.reduce_sum(tf.stop_gradient(grad_a) * a, axis=-1)
        shown.append(signal)
    value = direct - beta * (tf.add_n([tf.stop_gradient(q) for q in inf]) if inf else 0.0)
    loss = -tf.reduce_mean(value + score - tf.stop_gradient(score))
    return Estimate(loss, gen[0], _stack(shown), tf.zeros_like(_stack(shown)), {},
                    main_value - gen[0])


@register("vimco")
def vimco(chain: Chain, state: LayerState) -> Estimate:
    """VIMCO over whole chains: the k-sample bound of the joint (no local signals)."""
    k = chain.num_samples
    u = uniforms(chain, chain.sizes, n=k)
    zs, logits = sample(chain, u)
    beta = chain.kl_weight
    gen, inf, _ = terms(chain, zs, logits)  # [k, batch] each
    top = log_bernoulli(logits[-1], zs[-1])
    prior = log_bernoulli(tf.broadcast_to(chain.prior_logits, tf.shape(zs[-1])), zs[-1])
    log_q = tf.add_n(inf + [top])
    log_w = gen[0] + beta * (tf.add_n(gen[1:] + [prior]) if len(gen) > 1 else prior) \
        - beta * log_q  # [k, batch]
    log_k = tf.math.log(tf.cast(k, log_w.dtype))
    bound = tf.reduce_logsumexp(log_w, axis=0) - log_k
    lw = tf.stop_gradient(log_w)
    others = (tf.reduce_sum(lw, 0, keepdims=True) - lw) / (k - 1.0)
    eye = tf.eye(k, dtype=lw.dtype)[:, :, None]
    swapped = lw[None] * (1.0 - eye) + others[:, None] * eye  # [k, k, batch]
    baseline = tf.reduce_logsumexp(swapped, axis=1) - log_k  # [k, batch]
    signal = tf.stop_gradient(bound)[None] - baseline
    log_q_all = tf.add_n([log_bernoulli(a, z) for a, z in zip(logits, zs, strict=True)])
    score = tf.reduce_sum(_score_term(signal, log_q_all), axis=0)
    loss = -tf.reduce_mean(bound + score)
    return Estimate(loss, gen[0][0], signal, baseline, {}, log_w[0] - gen[0][0])


@register("arm")
def arm(chain: Chain, state: LayerState) -> Estimate:
    """ARM per layer (Yin & Zhou 2019; the official DisARM code's multi-layer ``arm``).

    The same pairs as ``disarm``: layer ``l``'s ``b2 = 1[u_l < sigma(a_l)]``
    and ``b1 = 1[u_l > sigma(-a_l)]``, each continued upward with the same
    uniforms; the gradient of ``a_l`` is ``(S_l(b1) - S_l(b2)) (u_l - 1/2)``
    with the local signals ``S_l`` of the two continuations.
    """

    def grad_of(diff, u, a, b, anti):  # diff = S_l(b2) - S_l(b1)
        return diff[:, None] * (0.5 - u), diff

    return _antithetic(chain, grad_of)


# ------------------------------------------------------------------ relaxations


def _relaxed_sample(chain: Chain, seed, straight_through: bool):
    """Concrete samples up the chain, each layer's encoder reading the one below.

    ``z~_l = sigmoid((a_l(z~_{l-1}) + L_l) / temperature)`` (see
    :func:`tfvae.estimators.concrete_sample`), reparameterized, so gradients
    pass down the whole chain. With ``straight_through`` each
    layer carries the hard code ``1[z~_l > 1/2]`` forward (an exact ancestral
    draw of ``q``) with the gradient of ``z~_l``. Returns codes and logits per layer.
    """
    seeds = tfp.random.split_seed(seed, n=len(chain.encoders))
    h, zs, logits = chain.x, [], []
    for encoder, layer_seed in zip(chain.encoders, seeds, strict=True):
        a = encoder(h)  # [batch, K_l]
        z = concrete_sample(a, chain.temperature, layer_seed)  # [batch, K_l]
        if straight_through:
            z = tf.stop_gradient(tf.cast(z > 0.5, z.dtype)) + (z - tf.stop_gradient(z))
        zs.append(z)
        logits.append(a)
        h = z
    return zs, logits


def _relaxed_terms(chain: Chain, zs, logits):
    """``G_l`` at the given codes, each inner layer's entropy and the top KL, per example.

    The relaxed objective ``G_1 + beta (sum_{l>1} G_l + sum_{l<L} H_l - KL_L)``:
    the ELBO with each ``-Q_l`` replaced by its expectation given the layer
    below, the entropy ``H_l`` of ``q(z_l|z_{l-1})`` (analytic, as the top KL).
    """
    beta = chain.kl_weight
    gen = [chain.likelihood(zs[0])] + [
        log_bernoulli(chain.generators[layer - 1](zs[layer]), zs[layer - 1])
        for layer in range(1, len(zs))]
    entropy = [tf.reduce_sum(tfd.Bernoulli(logits=a).entropy(), axis=-1) for a in logits[:-1]]
    kl = tf.reduce_sum(objectives.kl_bernoulli(logits[-1], chain.prior_logits), axis=-1)
    inner = tf.add_n(gen[1:] + entropy) if len(gen) > 1 else 0.0
    return gen, gen[0] + beta * (inner - kl), kl


def _relaxed_estimate(chain: Chain, straight_through: bool) -> Estimate:
    """Negative single-sample ELBO as the value, the relaxed objective's gradient."""
    beta = chain.kl_weight
    seed, relax_seed = tfp.random.split_seed(tfp.random.sanitize_seed(chain.seed), n=2)
    zs, logits = _relaxed_sample(chain, relax_seed, straight_through)
    gen, relaxed, kl = _relaxed_terms(chain, zs, logits)  # [batch] each
    if straight_through:  # the forward codes are hard: the same terms give the ELBO's
        inf = [log_bernoulli(a, z) for a, z in zip(logits[:-1], zs[:-1], strict=True)]
        fit = gen[0]
        value = fit + beta * (tf.add_n(gen[1:]) - tf.add_n(inf) if inf else 0.0) - beta * kl
    else:  # the ELBO of an exact chain drawn beside the relaxed one
        hard = chain._replace(seed=seed)
        h_zs, h_logits = sample(hard, uniforms(hard, hard.sizes))
        h_gen, h_inf, h_kl = terms(hard, h_zs, h_logits)
        fit, value = h_gen[0], _signals(hard, h_gen, h_inf, h_kl)[1]
    value, fit = tf.stop_gradient(value), tf.stop_gradient(fit)
    loss = -tf.reduce_mean(value + relaxed - tf.stop_gradient(relaxed))
    signal = tf.stop_gradient(relaxed)[None]  # [1, batch]: the relaxed objective
    return Estimate(loss, fit, signal, tf.zeros_like(signal), {}, value - fit)


@register("gumbel")
def gumbel(chain: Chain, state: LayerState) -> Estimate:
    """Concrete relaxation per layer (Maddison et al. 2017; Jang et al. 2017): biased.

    Relaxed samples ``z~_l`` in ``(0, 1)`` are drawn up the chain, each
    encoder reading the relaxed sample below, and every generative term is
    evaluated at them (Bernoulli log-probabilities are linear in the value);
    the objective's gradient passes pathwise through all of them. The loss
    value is the negative ELBO of an exact chain drawn beside it.
    """
    return _relaxed_estimate(chain, straight_through=False)


@register("straight-through")
def straight_through(chain: Chain, state: LayerState) -> Estimate:
    """Straight-through Gumbel-Softmax per layer (Jang et al. 2017, section 2.2): biased.

    Each layer passes its hard code forward, so the encoders above and every
    generative term see an exact ancestral draw of ``q``; backward, each code's
    gradient is that of its Concrete sample at ``temperature``.
    """
    return _relaxed_estimate(chain, straight_through=True)


@register("relax")
def relax(chain: Chain, state: LayerState) -> Estimate:
    """RELAX per layer (Grathwohl et al. 2018): local signals, a learned control per layer.

    See :func:`tfvae.estimators.relax.layers`.
    """
    count = len(chain.sizes)
    noise = uniforms(chain, chain.sizes * 2)  # the chain's draws, then z~'s
    zs, logits = sample(chain, noise[:count])
    gen, inf, kl = terms(chain, zs, logits)
    signals, value = _signals(chain, gen, inf, kl)
    loss, shown, baselines = relax_lib.layers(chain, noise, zs, logits, signals, (gen, inf, kl))
    return Estimate(loss, gen[0], _stack(shown), _stack(baselines), {}, value - gen[0])
