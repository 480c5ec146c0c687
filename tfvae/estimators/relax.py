"""RELAX (Grathwohl et al. 2018): REBAR's relaxed control variate, learned.

The machinery of the ``relax`` estimator, registered in
:mod:`tfvae.estimators` (one layer) and :mod:`tfvae.estimators.layered`
(sigmoid belief networks) as thin wrappers around :func:`score`. This
module imports nothing of the estimator registries, so both can import it.

For one layer of binary units with logits ``a``, draw ``u, v ~ U(0, 1)``:
the code ``b = 1[u < sigmoid(a)]``, its logistic sample ``z = a + logit(1 -
u)`` (``b = 1[z > 0]``) and a second logistic sample ``z~`` conditioned on
``b`` (:func:`conditional`, REBAR's, Tucker et al. 2017). With ``f`` the
learning signal at ``b`` and ``c`` a control variate differentiable in ``z``,
RELAX (Grathwohl et al. 2018, its estimator for discrete variables) estimates
the gradient of ``E_q[f]`` with respect to ``a`` by

    g = (f(b) - c(z~)) dlog q(b)/da + dc(z)/da - dc(z~)/da,

unbiased whatever ``c`` is, since ``E[c(z)] = E_b E[c(z~)|b]``.

The control variate is the official DisARM code's (google-research
``disarm/binary``, ``relax``): ``c(z) = s (F(sigmoid(z / T)) + r_phi([h,
z]))`` with ``F`` the learning signal evaluated at the relaxed code, ``h``
the layer's input (the data for one layer), ``r_phi`` a network of one
hidden layer of 137 leaky-ReLU units (:class:`RelaxControl`), and a
temperature ``T = exp(log_temperature)`` started at 0.1 and a scale ``s``
started at 1. ``phi``, ``log_temperature`` and ``s`` are trained, as there,
to minimise the single-sample variance of the encoder's gradient, i.e. the
summed square of the gradient the step applies to the inference networks
(RELAX's ``d g^2 / d phi``, which needs the gradient of a gradient; of the
batch mean's gradient here, of the batch sum's there: the same direction, and
Adam does not see the scale). The model lists them as ``control_variables``
and :class:`tfvae.models.steps.TrainingSteps` applies that update with its
``control_optimizer`` (by default Adam at the model's learning rate with
``beta_1 = 0.999``, the official code's ``theta_optimizer``). Two departures
from that code, both to keep the estimator what every tfvae estimator is:

- tfvae takes the KL analytically, so ``f = log p(x|b)`` and ``F`` is
  ``log p(x|.)`` at the relaxed code, where the official code uses the
  single-sample ELBO at both.
- In a sigmoid belief network layer ``l``'s ``F`` holds the terms of its
  local signal that take ``z_l`` directly (:func:`layers`); the official
  multi-layer code also continues the chain above the relaxed code with
  fresh binary draws, which makes ``c`` a discontinuous function of ``z``
  whose pathwise gradient misses those draws' dependence on it.

:func:`score` differentiates ``c(z) - c(z~)`` with respect to ``a`` alone
(an inner gradient tape), so the decoder's gradient stays the plain one at
``b``, as in the official code, and returns the gradient through the
logits un-stopped, so that an outer tape can differentiate the encoder's
gradient with respect to the control's variables.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

from tfvae import objectives
from tfvae._keras import keras, tf
from tfvae.errors import ConfigError

#: Hidden units of the control network ``r_phi`` (the official DisARM code's).
HIDDEN = 137
#: Starting temperature of the relaxation ``sigmoid(z / T)`` (the official code's).
TEMPERATURE = 0.1
#: Uniforms are kept in ``[EPS, 1 - EPS]`` where a logarithm takes them (as the
#: official code's ``safe_log_prob``), so logistic samples stay finite.
EPS = 1e-6


@keras.saving.register_keras_serializable(package="tfvae")
class RelaxControl(keras.layers.Layer):
    """RELAX's learned control variate for one layer of binary units.

    Owns the network ``r_phi`` (``[h, z] -> 137 leaky-ReLU units -> 1``), the
    log-temperature and the scale; :meth:`bind` makes ``c(z)`` for one batch.
    Always float32 (its second-order gradients included), whatever the
    mixed-precision policy.

    Args:
      below: width of the layer's input ``h`` (the data's ``D`` for the first layer).
      units: binary units of the layer (``K``).
      hidden: hidden units of ``r_phi``.

    Example:
      >>> control = RelaxControl(below=784, units=200)
      >>> c = control.bind(x, lambda soft: model.log_likelihood(soft, x))
      >>> c(z)  # [batch]: s * (log p(x|sigmoid(z / T)) + r([x, z]))
    """

    def __init__(self, below: int, units: int, hidden: int = HIDDEN, **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        self.below, self.units, self.hidden = int(below), int(units), int(hidden)
        if min(self.below, self.units, self.hidden) < 1:
            raise ValueError(f"RelaxControl sizes must be positive, got below={below!r}, "
                             f"units={units!r}, hidden={hidden!r}")
        self.net = keras.Sequential([
            keras.layers.InputLayer(input_shape=(self.below + self.units,)),
            keras.layers.Dense(self.hidden, dtype="float32"),
            keras.layers.LeakyReLU(alpha=0.3, dtype="float32"),
            keras.layers.Dense(1, dtype="float32"),
        ], name="net")
        self.log_temperature = self.add_weight(
            name="log_temperature", shape=(),
            initializer=keras.initializers.Constant(math.log(TEMPERATURE)))
        self.scale = self.add_weight(name="scale", shape=(), initializer="ones")
        self.built = True

    @property
    def temperature(self):
        """``T = exp(log_temperature)``, a scalar tensor."""
        return tf.exp(self.log_temperature)

    def bind(self, below, relaxed: Callable) -> Callable:
        """``c(z) = s (relaxed(sigmoid(z / T)) + r_phi([below, z]))`` for one batch.

        Args:
          below: ``[batch, below]`` the layer's input (stopped codes or data).
          relaxed: ``soft [batch, K] -> [batch]``: the learning signal at a relaxed code.

        Returns:
          ``z [batch, K] -> c(z) [batch]``.
        """
        below = tf.cast(below, tf.float32)

        def control(z):  # z: [batch, K] logistic samples
            soft = tf.sigmoid(z / self.temperature)
            learned = tf.squeeze(self.net(tf.concat([below, z], axis=-1)), -1)  # [batch]
            return self.scale * (tf.cast(relaxed(soft), tf.float32) + learned)

        return control

    def call(self, inputs):
        """``r_phi`` on ``[h, z]`` rows, ``[batch, 1]`` (the network alone)."""
        return self.net(inputs)

    def get_config(self):
        return {**super().get_config(), "below": self.below, "units": self.units,
                "hidden": self.hidden}


class Score(NamedTuple):
    """RELAX's surrogate for one layer (see :func:`score`).

    Attributes:
      term: ``[batch]``, value 0; its gradient with respect to the logits is
        the RELAX estimate (of the negated loss), and the gradient that reaches
        the inference network stays differentiable with respect to the control.
      signal: ``[batch]`` ``f(b) - c(z~)``, stopped (for metrics).
      baseline: ``[batch]`` ``c(z~)``, stopped (for metrics).
    """

    term: tf.Tensor
    signal: tf.Tensor
    baseline: tf.Tensor


def code(logits, u):
    """The binary draw ``b = 1[u < sigmoid(a)]``, stopped (every estimator's convention)."""
    return tf.stop_gradient(tf.cast(u < tf.sigmoid(tf.stop_gradient(logits)), tf.float32))


def logistic(logits, u):
    """``z = a + logit(1 - u)``: a logistic sample, ``z > 0`` exactly when ``u < sigmoid(a)``."""
    u = tf.clip_by_value(u, EPS, 1.0 - EPS)
    return logits + tf.math.log1p(-u) - tf.math.log(u)


def conditional(logits, b, v):
    """``z~ ~ p(z | b)``: the logistic sample of logits ``a`` given its sign ``b``.

    ``z~ = a + logit(v')`` with ``v' = b (1 - t + v t) + (1 - b) v (1 - t)``,
    ``t = sigmoid(a)`` (REBAR's conditional sample, the official code's form), written
    stably: ``softplus(a + log v) - log(1 - v)`` for ``b = 1`` (at least 0)
    and ``log v - softplus(log(1 - v) - a)`` for ``b = 0`` (at most 0).
    Reparameterized: differentiable in ``a`` for fixed ``b`` and ``v``.
    """
    v = tf.clip_by_value(v, EPS, 1.0 - EPS)
    log_v, log_rest = tf.math.log(v), tf.math.log1p(-v)
    on = tf.math.softplus(logits + log_v) - log_rest
    off = log_v - tf.math.softplus(log_rest - logits)
    return tf.where(b > 0.5, on, off)


def score(logits, u, v, signal, control: Callable) -> Score:
    """RELAX's surrogate term for one layer of binary units.

    Args:
      logits: ``[batch, K]`` logits ``a`` (differentiable wrt the inference network).
      u: ``[batch, K]`` uniforms of the draw ``b = 1[u < sigmoid(a)]`` (:func:`code`),
        the code the caller evaluated ``signal`` at.
      v: ``[batch, K]`` independent uniforms for ``z~ ~ p(z | b)``.
      signal: ``[batch]`` the learning signal ``f(b)`` (stopped).
      control: ``z [batch, K] -> c(z) [batch]`` (:meth:`RelaxControl.bind`).

    Returns:
      a :class:`Score`: ``loss - mean(term)`` has gradient ``-g`` through ``a``.
    """
    a = logits
    b = code(a, u)
    with tf.GradientTape() as tape:  # dc/da alone: no gradient of c reaches the decoder
        tape.watch(a)
        c_tilde = control(conditional(a, b, v))  # [batch]
        difference = control(logistic(a, u)) - c_tilde  # [batch]
    grad_a = tape.gradient(difference, a)  # [batch, K]; rows are independent
    log_q = tf.reduce_sum(objectives.bernoulli_log_prob(a, b), axis=-1)  # [batch]
    learning = signal - c_tilde  # [batch]; un-stopped: the outer tape differentiates it
    # Both factors (x - stop(x)) are 0 in value: the term adds nothing to the loss,
    # and its gradient is learning * dlog q + dc(z) - dc(z~) through a only.
    term = learning * (log_q - tf.stop_gradient(log_q)) \
        + tf.reduce_sum(grad_a * (a - tf.stop_gradient(a)), axis=-1)
    return Score(term, tf.stop_gradient(learning), tf.stop_gradient(c_tilde))


def one_layer(problem, u, v):
    """RELAX for one layer of binary latents (``tfvae.estimators``' ``relax``).

    ``f = log p(x|b)`` at the draw ``b`` of ``u`` (the KL is analytic and
    separate) and the control ``problem.control``, ``c(z) = s (log
    p(x|sigmoid(z / T)) + r_phi([x, z]))``; the decoder's and the prior's
    gradients are the plain ones at ``b``.

    Args:
      problem: a :class:`tfvae.estimators.Problem` with its ``control``.
      u: ``[batch, latent]`` uniforms of ``b``.
      v: ``[batch, latent]`` uniforms of ``z~``.

    Returns:
      ``(loss, f, score)``: the surrogate loss (its value the negative
      single-sample ELBO), ``f`` ``[batch]`` and the :class:`Score`.
    """
    if problem.control is None:
        raise ConfigError("relax needs the learned control variate of a model built with "
                          "estimator='relax'")
    f = problem.log_likelihood(code(problem.logits, u))  # [batch]
    part = score(problem.logits, u, v, tf.stop_gradient(f), problem.control)
    return tf.reduce_mean(-(f + part.term) + problem.kl), f, part


def layers(chain, noise, zs, logits, signals, terms):
    """RELAX per layer of a sigmoid belief network (``tfvae.estimators.layered``' ``relax``).

    Layer ``l``'s code ``z_l`` is the chain's own draw and ``f = S_l`` its
    local signal; its control ``c_l(z) = s_l (F_l(sigmoid(z / T_l)) +
    r_l([z_{l-1}, z]))`` relaxes the terms of ``S_l`` that take ``z_l``
    directly, ``F_l(h) = G_l(h) - Q_l(h)`` (weighted as in ``S_l``; no ``Q_L``
    at the top), so each ``c_l`` is smooth in ``z`` and the estimate unbiased.

    Args:
      chain: the :class:`tfvae.estimators.layered.Chain`, with its ``controls``.
      noise: ``2 L`` uniforms ``[batch, K_l]``: the chain's draws, then ``z~``'s.
      zs: the chain's codes per layer (from the first ``L`` uniforms).
      logits: the chain's logits per layer.
      signals: the local signals ``S_l`` ``[batch]`` (stopped).
      terms: ``(G, Q, KL)`` of the chain (:func:`tfvae.estimators.layered.terms`).

    Returns:
      ``(loss, signals, baselines)``: the surrogate loss (its value the negative
      single-sample ELBO) and per layer ``S_l - c_l(z~)`` and ``c_l(z~)``.
    """
    if chain.controls is None:
        raise ConfigError("relax needs the learned control variates of a model built with "
                          "estimator='relax'")
    count, beta = len(zs), chain.kl_weight
    gen, inf, kl = terms
    parts = []
    for layer, a in enumerate(logits):
        below = chain.x if layer == 0 else zs[layer - 1]

        def relaxed(h, layer=layer, a=a, below=below):  # F_l at a relaxed code, [batch]
            if layer == 0:
                fit = chain.likelihood(h)
            else:
                fit = beta * _log_bernoulli(chain.generators[layer - 1](h), below)
            return fit if layer == count - 1 else fit - beta * _log_bernoulli(a, h)

        control = chain.controls[layer].bind(below, relaxed)
        parts.append(score(a, noise[layer], noise[count + layer], signals[layer], control))
    direct = gen[0] + beta * (tf.add_n(gen[1:]) if len(gen) > 1 else 0.0) - beta * kl
    value = direct - beta * (tf.add_n([tf.stop_gradient(q) for q in inf]) if inf else 0.0)
    loss = -tf.reduce_mean(value + tf.add_n([p.term for p in parts]))
    return loss, [p.signal for p in parts], [p.baseline for p in parts]


def _log_bernoulli(logits, z):
    """``sum log Bernoulli(z | logits)`` over the last axis; ``z`` may be relaxed."""
    return tf.reduce_sum(objectives.bernoulli_log_prob(logits, z), axis=-1)
