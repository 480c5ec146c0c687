"""The pair sums of the mean-field bound, as compiled loops over one side of each pair.

Pure functions of tensors, used by :mod:`tfvae.models.mean_field_bound`. Every part of
Saul, Jaakkola and Jordan's bound that is not a matrix product is a sum, over a
unit's parents or over its children, of a function of one parent-child pair
``(j, i)`` at the two exponents ``t = -xi_i`` and ``t = 1 - xi_i``:

* per child ``i``, ``log E_q[e^(t z_i)] - t b_i = sum_j log f_j``,
  ``f_j = 1 - mu_j + mu_j e^(t W_ji)``, and its first two derivatives in ``t``
  (:func:`children_sums`);
* per parent ``j``, ``sum_i sum_t w_ti d log f_j / d mu_j`` (:func:`parent_sums`);
* per weight ``W_ji``, ``sum_rows sum_t c_ti d log f_j / d (t W_ji)``
  (:func:`weight_sums`, for the gradient of the weight step).

Broadcast as ``[2, rows, parents, children]`` tensors they are bound by memory
traffic; here each is a loop over the parents (or children) that holds
``[2, rows, children]`` (or ``[2, rows, parents]``) slabs, with one exponential
per pair (``e^((1 - xi) W) = e^(-xi W) e^W``).

Exactness: ``1 - mu`` is ``sigmoid(-lam)``, exact for means near 1, and each
``f_j`` lies between 1 and ``e^(t W_ji)``, so ``|log f_j| <= |W_ji|``: the logarithm
of the running product of the ``f_j`` is taken every :func:`_group` parents,
before it can leave float32's range, one logarithm per several pairs instead of
one per pair. This needs ``e^|W|`` finite: :func:`applies` says whether a
kernel's weights are within :data:`WEIGHT_LIMIT` (callers use the broadcast
formulas otherwise).
"""

from __future__ import annotations

from tfvae._keras import tf

#: The loops are XLA-compiled functions of their own (inlined in a caller's XLA program).
_compiled = tf.function(jit_compile=True, autograph=False, reduce_retracing=True)
#: Largest ``|W_ji|`` the loops take (``e^|W|`` and running products stay finite).
WEIGHT_LIMIT = 80.0


def applies(kernel):
    """Whether the loops apply to ``kernel``: a scalar bool tensor."""
    return tf.reduce_max(tf.abs(kernel)) <= WEIGHT_LIMIT


def _group(kernel):
    """Parents per logarithm: their ``|log f_j|`` add up to at most :data:`WEIGHT_LIMIT`."""
    size = tf.floor(WEIGHT_LIMIT / tf.maximum(tf.reduce_max(tf.abs(kernel)), 1e-3))
    return tf.cast(tf.clip_by_value(size, 1.0, tf.cast(tf.shape(kernel)[0], tf.float32)),
                   tf.int32)


def _tilts(xi, weights, grow):
    """``e^(t W_ji)`` for both ``t``, ``[2, rows, n]``, from ``xi [rows, n]``, ``W``, ``e^W``.

    One exponential per pair: ``e^((1 - xi) W) = e^(-xi W) e^W``.
    """
    return tf.exp(-xi * weights)[None] * tf.stack([tf.ones_like(grow), grow])[:, None]


def _means(lam):
    """``(mu, 1 - mu)`` of ``lam [rows, P]`` as ``[P, 1, rows, 1]`` columns, one per parent."""
    return [tf.transpose(tf.sigmoid(v))[:, None, :, None] for v in (lam, -lam)]


@_compiled
def children_sums(lam, kernel, xi, derivatives: bool = True):
    """Per child and ``t``: ``sum_j log f_j`` and, with ``derivatives``, its ``t``-derivatives.

    Args:
      lam: parents' logits ``[rows, P]``.
      kernel: ``W`` ``[P, C]``, within :data:`WEIGHT_LIMIT`.
      xi: the children's ``xi`` ``[rows, C]``.
      derivatives: also the derivatives (else only the sums).

    Returns:
      ``(log_f, slope, curve)``, each ``[2, rows, C]`` (the last two None without
      ``derivatives``): ``slope = sum_j W_ji s_j`` and ``curve = sum_j W_ji^2 s_j (1 - s_j)``,
      ``s_j = mu_j e^(t W_ji) / f_j``, the parent's mean tilted by ``e^(t z_i)``.
    """
    parents = tf.shape(kernel)[0]
    mu, rest = _means(lam)
    grow, group = tf.exp(kernel), _group(kernel)
    zero = tf.zeros(tf.concat([[2], tf.shape(xi)], 0))

    def pair(j, product, sums):
        on = mu[j] * _tilts(xi, kernel[j], grow[j])
        f = rest[j] + on
        if not derivatives:
            return j + 1, product * f, sums
        inverse = 1.0 / f
        ws = kernel[j] * on * inverse                           # W_ji s_j
        # slope + i curve: the two sums in one accumulator, so one loop adds both.
        return j + 1, product * f, sums + tf.complex(ws, kernel[j] * ws * rest[j] * inverse)

    def block(start, logs, sums):
        stop = tf.minimum(start + group, parents)
        _, product, sums = tf.while_loop(lambda j, *_: j < stop, pair,
                                         (start, zero + 1.0, sums))
        return stop, logs + tf.math.log(product), sums

    sums = tf.complex(zero, zero) if derivatives else tf.zeros([], tf.complex64)
    _, logs, sums = tf.while_loop(lambda start, *_: start < parents, block,
                                  (tf.constant(0), zero, sums))
    if not derivatives:
        return logs, None, None
    return logs, tf.math.real(sums), tf.math.imag(sums)


@_compiled
def parent_sums(lam, kernel, xi, weights):
    """``sum_i sum_t weights[t, :, i] d log f_j(t) / d mu_j`` per parent, ``[rows, P]``.

    ``d log f_j / d mu_j = (e^(t W_ji) - 1) / f_j``; ``weights``: ``[2, rows, C]``.
    """
    children = tf.shape(kernel)[1]
    mu, rest = tf.sigmoid(lam), tf.sigmoid(-lam)                 # [rows, P]
    tkernel = tf.transpose(kernel)                               # [C, P]
    grow = tf.exp(tkernel)
    txi = tf.transpose(xi)[:, :, None]                           # [C, rows, 1]
    tweights = tf.transpose(weights, [2, 0, 1])[..., None]       # [C, 2, rows, 1]

    def child(i, total):
        tilt = _tilts(txi[i], tkernel[i], grow[i])               # [2, rows, P]
        return i + 1, total + tweights[i] * (tilt - 1.0) / (rest + mu * tilt)

    zero = tf.zeros(tf.concat([[2], tf.shape(lam)], 0))
    _, total = tf.while_loop(lambda i, _: i < children, child, (tf.constant(0), zero))
    return tf.reduce_sum(total, 0)


@_compiled
def weight_sums(lam, kernel, xi, coefficients):
    """``sum_rows sum_t coefficients[t, row, i] s_j`` per weight ``W_ji``, ``[P, C]``.

    ``s_j = d log f_j / d (t W_ji)`` as in :func:`children_sums`; ``coefficients``:
    ``[2, rows, C]``.
    """
    parents = tf.shape(kernel)[0]
    mu, rest = _means(lam)
    grow = tf.exp(kernel)

    def parent(j, rows):
        on = mu[j] * _tilts(xi, kernel[j], grow[j])
        return j + 1, rows.write(j, tf.reduce_sum(coefficients * on / (rest[j] + on), [0, 1]))

    rows = tf.TensorArray(tf.float32, size=parents, element_shape=kernel.shape[1:])
    _, rows = tf.while_loop(lambda j, _: j < parents, parent, (tf.constant(0), rows))
    return rows.stack()
