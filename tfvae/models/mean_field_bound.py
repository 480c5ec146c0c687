"""Saul, Jaakkola and Jordan's mean-field bound for linear sigmoid belief networks.

Pure functions of tensors (no Keras), used by :class:`tfvae.models.mean_field.MeanFieldSBN`.
Saul, Jaakkola & Jordan (1996), "Mean field theory for sigmoid belief
networks", JAIR 4: the hidden units ``S`` of a sigmoid belief network get a
factorised posterior ``q(S) = prod_i mu_i^S_i (1 - mu_i)^(1 - S_i)`` with the
data clamped, and

    log p(x) >= E_q[log p(x, S)] + H(q),

where every unit ``i`` with parents contributes ``E_q[S_i z_i] -
E_q[log(1 + e^z_i)]``, ``z_i = sum_j W_ji S_j + b_i``. The second expectation
has no closed form; the paper's extra parameter ``xi_i`` bounds it (their
eq. 12, Jensen's inequality after ``log(1 + e^z) = xi z + log(e^-xi z +
e^(1-xi) z)``):

    E_q[log(1 + e^z_i)] <= xi_i E_q[z_i] + log E_q[e^(-xi_i z_i) + e^((1-xi_i) z_i)],

and under the factorised ``q`` the expectations of exponentials factorise
over the parents: ``E_q[e^(t z_i)] = e^(t b_i) prod_j (1 - mu_j + mu_j
e^(t W_ji))``. So the bound of a linear layer is closed form: no sampling.

Layers are lists indexed from the data up: ``lams[l]`` are the logits of
``mu`` for ``z_(l+1)`` (``[batch, K]``), ``nets.layers[c]`` the linear map
from ``z_(c+1)`` to the logits of its child (``x`` for ``c = 0``) and
``xis[c]`` that child's ``xi`` (``[batch, C]``). Logits rather than means are
kept, so means near 0 or 1 stay exact in float32.

The sums over parent-child pairs (each ``log E_q[e^(t z_i)]``, its derivatives and
the gradients) are :mod:`tfvae.models.mean_field_sweeps`' compiled loops: the same
quantities, summed in another order (one logarithm of a product of several factors
rather than one per factor).

Updates (:func:`refine`): a step moves every ``lam`` to the paper's
mean-field equations, ``mu_i = sigmoid(dE/dmu_i)`` with ``E`` the bound
without the entropy, and every ``xi`` by Newton's method on its own convex
one-dimensional term (exact first and second derivatives). Both are damped
by a step size per example, which doubles (up to 1) when the step raised
the example's bound and halves (the step undone) when it did not, so the
bound of every example never decreases.
"""

from __future__ import annotations

from typing import NamedTuple

from tfvae._keras import tf
from tfvae.models import mean_field_sweeps as mfs

#: Logits of the variational means are kept within +-LOGIT_LIMIT (means within 2e-9 of 0, 1).
LOGIT_LIMIT = 20.0
#: Starting ``xi`` of a unit (the paper's range is [0, 1]).
XI_START = 0.5
_CURVATURE_FLOOR = 1e-6
#: Above this, ``log(1 + e^u)`` is ``u`` in float32 (and ``e^u`` still finite).
_EXP_CAP = 80.0


class Linear(NamedTuple):
    """A linear conditional: the child's logits are ``parent @ kernel + bias``.

    Attributes:
      kernel: ``[P, C]``, parents by children.
      bias: ``[C]``.
    """

    kernel: tf.Tensor
    bias: tf.Tensor


class Network(NamedTuple):
    """The generative network: ``layers[c]`` maps ``z_(c+1)`` to its child's logits.

    Attributes:
      layers: one :class:`Linear` per conditional, data first.
      prior_logits: ``[K_L]`` logits of the top layer's factorised prior.
    """

    layers: tuple
    prior_logits: tf.Tensor


def linear(kernel, bias, signed: bool = False) -> Linear:
    """The :class:`Linear` map of a dense layer, float32.

    ``signed``: the layer reads its binary input ``z`` as ``2 z - 1`` (``--center-input``),
    so its logits are ``z @ (2 W) + (b - sum_j W_j)``.
    """
    kernel = tf.cast(tf.convert_to_tensor(kernel), tf.float32)
    bias = tf.cast(tf.convert_to_tensor(bias), tf.float32)
    if signed:
        return Linear(2.0 * kernel, bias - tf.reduce_sum(kernel, axis=0))
    return Linear(kernel, bias)


def start(batch, net: Network, input_dim: int) -> tuple[list, list]:
    """Starting parameters of ``batch`` examples: means 1/2 and ``xi`` = :data:`XI_START`."""
    lams = [tf.zeros(tf.stack([batch, layer.kernel.shape[0]])) for layer in net.layers]
    widths = [input_dim] + [layer.kernel.shape[0] for layer in net.layers[:-1]]
    xis = [tf.fill(tf.stack([batch, width]), XI_START) for width in widths]
    return lams, xis


def entropy(lam):
    """Entropy of Bernoulli(sigmoid(lam)) per unit: ``softplus(lam) - mu lam``."""
    return tf.nn.softplus(lam) - tf.sigmoid(lam) * lam


def log_mgf(lam, layer: Linear, t):
    """``log E_q[exp(t_i z_i)]`` per child ``i``, ``[batch, C]``, for ``t`` ``[batch, C]``.

    ``log(1 - mu_j + mu_j e^a) = softplus(lam_j + a) - softplus(lam_j)`` keeps it exact for
    means near 0 or 1.
    """
    u = lam[:, :, None] + t[:, None, :] * layer.kernel  # [batch, P, C]
    return t * layer.bias + tf.reduce_sum(tf.nn.softplus(u), axis=1) \
        - tf.reduce_sum(tf.nn.softplus(lam), axis=1, keepdims=True)


def conditional(target, lam, layer: Linear, xi):
    """Per child unit, the lower bound on ``E_q[log p(s_i | parents)]``, ``[batch, C]``.

    Args:
      target: ``E_q[s_i]``: the data (observed child) or the child's means.
      lam: the parents' logits ``[batch, P]``.
      layer: the conditional's :class:`Linear` map.
      xi: the child's ``xi`` ``[batch, C]``.
    """
    mean = tf.sigmoid(lam) @ layer.kernel + layer.bias  # E_q[z_i]
    both = tf.stack([log_mgf(lam, layer, -xi), log_mgf(lam, layer, 1.0 - xi)])
    return (target - xi) * mean - tf.reduce_logsumexp(both, axis=0)


def held_conditional(target, lam, layer: Linear, xi):
    """:func:`conditional` with ``target``, ``lam`` and ``xi`` held: a gradient for the weights.

    The gradient is the closed form ``d term_i / d W_ji = (target_i - xi_i) mu_j -
    sum_t w_t t s_j`` (``w_t`` each ``t``'s share of ``E[e^-xi z + e^(1-xi) z]``, ``s_j``
    the parent's mean tilted by ``e^(t z_i)``) and ``d term_i / d b_i = target_i - xi_i -
    sum_t w_t t``. Weights within :data:`tfvae.models.mean_field_sweeps.WEIGHT_LIMIT`
    take the loops, others ``[2, batch, P, C]`` tensors.
    """
    target, lam, xi = (tf.stop_gradient(v) for v in (target, lam, xi))
    mu, t = tf.sigmoid(lam), tf.stack([-xi, 1.0 - xi])
    looped = mfs.applies(layer.kernel)

    @tf.custom_gradient
    def term(kernel, bias):
        held = tf.stop_gradient(kernel)  # no tape records the loops: the gradient is below
        log_a = t * bias + tf.cond(
            looped, lambda: mfs.children_sums(lam, held, xi, derivatives=False)[0],
            lambda: tf.stack([log_mgf(lam, Linear(kernel, 0.0), -xi),
                              log_mgf(lam, Linear(kernel, 0.0), 1.0 - xi)]))
        value = (target - xi) * (mu @ kernel + bias) - tf.reduce_logsumexp(log_a, axis=0)

        def grad(upstream):
            share = upstream * tf.nn.softmax(log_a, axis=0) * t         # [2, batch, C]
            direct = upstream * (target - xi)
            tilted = tf.cond(
                looped, lambda: mfs.weight_sums(lam, held, xi, share),
                lambda: tf.reduce_sum(share[:, :, None, :] * tf.sigmoid(
                    lam[None, :, :, None] + t[:, :, None, :] * kernel), axis=[0, 1]))
            return (tf.transpose(mu) @ direct - tilted,
                    tf.reduce_sum(direct - tf.reduce_sum(share, axis=0), axis=0))

        return value, grad

    return term(layer.kernel, layer.bias)


def prior_term(lam, prior_logits):
    """``E_q[log p(z_L)]`` per unit, exact: ``mu h - softplus(h)``."""
    return tf.sigmoid(lam) * prior_logits - tf.nn.softplus(prior_logits)


def bound_terms(x, net: Network, lams, xis, held: bool = False) -> dict:
    """The bound's parts per example: ``fit`` (the data's conditional) and ``rest``.

    ``held``: the variational parameters are held (no gradient reaches them) and the
    conditionals are :func:`held_conditional`'s, computed by the loops (weights'
    gradients only; what a weight step needs).

    Returns:
      ``{"fit": [batch], "rest": [batch], "units": [batch, K_1]}``: the bound is
      ``fit + rest``; ``units`` is what ``z_1``'s units add to ``rest``, one
      each (its conditional's term and entropy; for one layer, the prior's).
    """
    targets = [x] + [tf.sigmoid(lam) for lam in lams[:-1]]
    if held:
        lams, xis = [tf.stop_gradient(v) for v in lams], [tf.stop_gradient(v) for v in xis]
    term_of = held_conditional if held else conditional
    terms = [term_of(t, lam, layer, xi)
             for t, lam, layer, xi in zip(targets, lams, net.layers, xis, strict=True)]
    top = prior_term(lams[-1], net.prior_logits)
    units = (terms[1] if len(terms) > 1 else top) + entropy(lams[0])
    rest = tf.add_n([tf.reduce_sum(t, axis=-1) for t in terms[1:]]
                    + [tf.reduce_sum(top, axis=-1)]
                    + [tf.reduce_sum(entropy(lam), axis=-1) for lam in lams])
    return {"fit": tf.reduce_sum(terms[0], axis=-1), "rest": rest, "units": units}


def bound(x, net: Network, lams, xis):
    """The mean-field lower bound on ``log p(x)`` per example, ``[batch]``."""
    terms = bound_terms(x, net, lams, xis)
    return terms["fit"] + terms["rest"]


def _newton(target, xi, mean, log_a, slope, curve):
    """The term, the Newton step of ``xi`` and the weights of ``t`` from the pair sums.

    ``log_a [2, batch, C]`` is ``log E_q[e^(t z_i)]`` at ``t = -xi, 1 - xi``, ``slope``
    and ``curve`` its first two ``t``-derivatives; the Newton step is on
    ``f(xi) = xi E[z] + log E[e^-xi z + e^(1-xi) z]``. Returns ``(term, xi_step, weights)``,
    ``weights [2, batch, C]`` each ``t``'s share of ``E[e^-xi z + e^(1-xi) z]``.
    """
    r = tf.sigmoid(log_a[1] - log_a[0])                       # share of t = 1 - xi
    weights = tf.stack([1.0 - r, r])
    term = (target - xi) * mean - tf.reduce_logsumexp(log_a, axis=0)
    first = mean - tf.reduce_sum(weights * slope, axis=0)
    second = tf.reduce_sum(weights * curve, axis=0) + r * (1.0 - r) * tf.square(
        slope[1] - slope[0])
    return term, -first / tf.maximum(second, _CURVATURE_FLOOR), weights


def _looped_steps(target, lam, layer: Linear, xi):
    """:func:`_steps_of` by :mod:`tfvae.models.mean_field_sweeps`' loops."""
    kernel, bias = layer
    mean = tf.sigmoid(lam) @ kernel + bias
    log_f, slope, curve = mfs.children_sums(lam, kernel, xi)
    log_a = tf.stack([-xi, 1.0 - xi]) * bias + log_f
    term, xi_step, weights = _newton(target, xi, mean, log_a, bias + slope, curve)
    parent_grad = (target - xi) @ tf.transpose(kernel) - mfs.parent_sums(lam, kernel, xi,
                                                                           weights)
    return term, mean, xi_step, parent_grad


def _broadcast_steps(target, lam, layer: Linear, xi):
    """:func:`_steps_of` on ``[2, batch, P, C]`` tensors, for any weights."""
    kernel, bias = layer
    mean = tf.sigmoid(lam) @ kernel + bias
    t = tf.stack([-xi, 1.0 - xi])                             # [2, batch, C]
    u = lam[None, :, :, None] + t[:, :, None, :] * kernel      # [2, batch, P, C]
    # e^u, capped where log(1 + e^u) = u to float precision anyway.
    eu = tf.exp(tf.minimum(u, _EXP_CAP))
    inv = 1.0 / (1.0 + eu)
    s = eu * inv                                               # mu_j tilted by e^(t W_ji)
    softplus = tf.where(u > _EXP_CAP, u, -tf.math.log(inv))
    log_a = t * bias + tf.reduce_sum(softplus, axis=2) \
        - tf.reduce_sum(tf.nn.softplus(lam), axis=1)[None, :, None]
    slope = bias + tf.reduce_sum(kernel * s, axis=2)         # d log E[e^(tz)] / dt
    curve = tf.reduce_sum(tf.square(kernel) * s * inv, axis=2)
    term, xi_step, weights = _newton(target, xi, mean, log_a, slope, curve)
    # d/dmu_j log(1 - mu_j + mu_j e^a) = (e^a - 1) / (1 - mu_j + mu_j e^a)
    #                                  = (e^u - e^lam_j) / (1 + e^u) * (1 + e^-lam_j)
    el = tf.exp(lam)[None, :, :, None]
    tilt = (eu - el) * inv * (1.0 + 1.0 / el)
    parent_grad = (target - xi) @ tf.transpose(kernel) - tf.reduce_sum(
        weights[:, :, None, :] * tilt, axis=[0, 3])
    return term, mean, xi_step, parent_grad


def _steps_of(target, lam, layer: Linear, xi):
    """One conditional's bound and the updates' derivatives, in one pass.

    Returns ``(term [batch, C], mean [batch, C], xi_step [batch, C], parent_grad [batch, P])``:
    ``mean = E_q[z_i]`` (the derivative of the term by the child's mean), the
    Newton step of each ``xi`` on ``f(xi) = xi E[z] + log E[e^-xi z + e^(1-xi) z]``,
    and the term's derivative by the parents' means. One exponential per parent,
    child and ``t``: this pass is the refinement's cost. Weights within
    :data:`tfvae.models.mean_field_sweeps.WEIGHT_LIMIT` take the loops, any others the
    same formulas broadcast.
    """
    return tf.cond(mfs.applies(layer.kernel),
                   lambda: _looped_steps(target, lam, layer, xi),
                   lambda: _broadcast_steps(target, lam, layer, xi))


def directions(x, net: Network, lams, xis):
    """The bound per example and the update directions at ``(lams, xis)``.

    Returns:
      ``(bound [batch], lam_steps, xi_steps)``: ``lam_steps[l] = dE/dmu_l -
      lam_l``, the move to the mean-field equations (``E``: the bound without
      the entropy), and ``xi_steps[c]``, the Newton steps.
    """
    targets = [x] + [tf.sigmoid(lam) for lam in lams[:-1]]
    grads = [tf.zeros_like(lam) for lam in lams]
    total, xi_steps = 0.0, []
    for c, (target, layer, xi) in enumerate(zip(targets, net.layers, xis, strict=True)):
        term, mean, xi_step, parent_grad = _steps_of(target, lams[c], layer, xi)
        total += tf.reduce_sum(term, axis=-1)
        xi_steps.append(xi_step)
        grads[c] += parent_grad
        if c > 0:  # a hidden child: its mean multiplies E[z]
            grads[c - 1] += mean
    top = lams[-1]
    grads[-1] += net.prior_logits
    total += tf.reduce_sum(prior_term(top, net.prior_logits), axis=-1)
    total += tf.add_n([tf.reduce_sum(entropy(lam), axis=-1) for lam in lams])
    return total, [g - lam for g, lam in zip(grads, lams, strict=True)], xi_steps


def _value(x, net: Network, lams, xis):
    """:func:`bound`'s value by the loops (where the weights allow)."""
    terms = bound_terms(x, net, lams, xis, held=True)
    return terms["fit"] + terms["rest"]


def _move(lams, xis, lam_steps, xi_steps, eta):
    size = eta[:, None]
    new_lams = [tf.clip_by_value(lam + size * step, -LOGIT_LIMIT, LOGIT_LIMIT)
                for lam, step in zip(lams, lam_steps, strict=True)]
    new_xis = [tf.clip_by_value(xi + size * step, 0.0, 1.0)
               for xi, step in zip(xis, xi_steps, strict=True)]
    return new_lams, new_xis


def refine(x, net: Network, lams, xis, steps: int):
    """``steps`` damped updates of every example's ``lam`` and ``xi`` (the module's docstring).

    Each step evaluates the bound and the directions once (the last, the bound alone).
    Returns ``(lams, xis, bound [batch])`` at the best point met, whose bound is at
    least the starting one for every example.
    """
    lams, xis = list(lams), list(xis)
    n = len(lams)

    def body(i, eta, best, *state):
        lams, xis = list(state[:n]), list(state[n:2 * n])
        dl, dx = list(state[2 * n:3 * n]), list(state[3 * n:])
        new_lams, new_xis = _move(lams, xis, dl, dx, eta)
        # The last pass's directions would go unused: it evaluates the bound alone.
        value, new_dl, new_dx = tf.cond(
            i < steps, lambda: directions(x, net, new_lams, new_xis),
            lambda: (_value(x, net, new_lams, new_xis), [tf.zeros_like(v) for v in new_lams],
                     [tf.zeros_like(v) for v in new_xis]))
        ok = value >= best
        keep = ok[:, None]

        def pick(new, old):
            return [tf.where(keep, a, b) for a, b in zip(new, old, strict=True)]

        eta = tf.where(ok, tf.minimum(2.0 * eta, 1.0), 0.5 * eta)
        best = tf.where(ok, value, best)
        return (i + 1, eta, best, *pick(new_lams, lams), *pick(new_xis, xis),
                *pick(new_dl, dl), *pick(new_dx, dx))

    # The first pass evaluates the start itself (no direction yet, so it is accepted and the
    # step size becomes 1): one copy of the pass in the compiled loop, not two.
    best = tf.fill(tf.shape(lams[0])[:1], -float("inf"))
    state = (tf.constant(0), 0.5 * tf.ones_like(best), best, *lams, *xis,
             *[tf.zeros_like(lam) for lam in lams], *[tf.zeros_like(xi) for xi in xis])
    out = tf.while_loop(lambda i, *_: i <= steps, body, state)
    return list(out[3:3 + n]), list(out[3 + n:3 + 2 * n]), out[2]
