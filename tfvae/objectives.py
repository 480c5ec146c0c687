"""Loss terms, named for what they mean (as in TFP's ``examples/vae.py``).

All functions work per example: they return one value per row of the batch,
in nats, and leave reduction over the batch to the caller.
"""

from __future__ import annotations

from tfvae._keras import tf, tfd


def distortion(likelihood, x):
    """Reconstruction cost ``-log p(x|z)``, shape ``[..., batch]``."""
    return -log_likelihood(likelihood, x)


def log_likelihood(likelihood, x):
    """``likelihood.log_prob(x)``, with a fused kernel for Bernoulli pixels.

    For ``Independent(Bernoulli(logits))`` over one event axis (the decoder of
    binary data) this computes ``sum(x * l - softplus(l))``, TFP's value, from
    one ``exp`` and one ``log`` per pixel (:func:`log1p_unit`), and its gradient from the same
    ``exp``, where TFP's ``Bernoulli.log_prob`` takes two softplus (two ``exp``
    and two ``log1p``) and their sigmoid gradients. Any other distribution
    uses its own ``log_prob``.
    """
    logits = _bernoulli_logits(likelihood)
    if logits is not None:
        x = tf.cast(x, logits.dtype)
        if not (logits.shape.is_fully_defined() and logits.shape == x.shape):
            # (k samples of one batch, say): the kernel's gradient is elementwise.
            shape = tf.broadcast_dynamic_shape(tf.shape(logits), tf.shape(x))
            logits, x = tf.broadcast_to(logits, shape), tf.broadcast_to(x, shape)
        return tf.reduce_sum(bernoulli_log_prob(logits, x), axis=-1)
    return likelihood.log_prob(x)


def _bernoulli_logits(likelihood):
    """The logits of an ``Independent(Bernoulli(logits))`` over one event axis, else None."""
    # tfp.layers hand out distributions wrapped to act as tensors.
    inner = getattr(likelihood, "tensor_distribution", likelihood)
    base = getattr(inner, "distribution", None)
    if (
        isinstance(inner, tfd.Independent)
        and isinstance(base, tfd.Bernoulli)
        and base.logits is not None
        and likelihood.event_shape.rank == 1
        and base.event_shape.rank == 0
    ):
        return tf.convert_to_tensor(base.logits)
    return None


def log_likelihood_of_draws(likelihood, x, lead):
    """``log p(x | z_i)`` for draws ``z_i`` of each example, shape ``lead``.

    ``likelihood`` is the decoder's distribution for the draws, with the
    ``lead`` shape (e.g. ``[k, batch]``) flattened into its batch; ``x`` is the
    ``[batch, D]`` data each draw explains. For Bernoulli pixels the per-pixel
    terms, the broadcast of ``x`` over the draws and the sum over pixels run
    as one XLA-compiled kernel: outside a compiled step (an IWAE evaluation)
    they would otherwise be eight passes over ``k x batch x D`` values around
    the decoder's matrix product. Any other distribution broadcasts ``x``
    and uses its own ``log_prob``.
    """
    lead = tf.convert_to_tensor(lead)
    logits = _bernoulli_logits(likelihood)
    if logits is not None:
        shape = tf.concat([lead, tf.shape(logits)[-1:]], axis=0)
        return _bernoulli_draws(tf.reshape(logits, shape), tf.cast(x, logits.dtype))
    width = tf.shape(x)[-1]
    flat = tf.reshape(tf.broadcast_to(x, tf.concat([lead, [width]], axis=0)), [-1, width])
    return tf.reshape(log_likelihood(likelihood, flat), lead)


@tf.function(jit_compile=True, autograph=False)
def _bernoulli_draws(logits, x):
    # Inside a compiled step this is inlined; elsewhere it is its own XLA cluster.
    return _bernoulli_draws_sum(logits, x)


@tf.custom_gradient
def _bernoulli_draws_sum(logits, x):
    """``sum_d log Bernoulli(x_d | logits_d)`` over the last axis, ``x`` broadcast.

    The gradient is written out (elementwise, no gradient for the data ``x``):
    TensorFlow's own gradients of the broadcast and of the sum take shape
    arguments, which XLA cannot take when the batch size is a run-time value
    (a fused block's last, partial batch).
    """
    e = tf.exp(-tf.abs(logits))
    linear = tf.reduce_sum(x * logits - tf.nn.relu(logits), axis=-1)
    value = linear - sum_log1p_unit(e)

    def grad(upstream):
        return upstream[..., None] * (x - _sigmoid_from(logits, e)), None

    return value, grad


#: Values of ``1 + e`` that :func:`sum_log1p_unit` multiplies before one logarithm.
LOG_GROUP = 16


def sum_log1p_unit(e):
    """``sum(log(1 + e))`` over the last axis for ``e`` in ``[0, 1]``: one ``log`` per 16 values.

    Each factor ``1 + e`` lies in ``[1, 2]``, so a product of
    :data:`LOG_GROUP` of them stays below 65,536; it is exact to within
    ``LOG_GROUP`` roundings of about 6e-8 each, so the sum is within about
    ``6e-8`` nats per value of the exact one (784 pixels: 5e-5 at most; a
    float32 sum of the pixels' log-likelihoods, hundreds of nats, rounds by
    more). Used where the sum is what counts (the log-likelihood of IWAE's
    draws): a sum whose every term is tiny loses its relative accuracy, which
    :func:`bernoulli_log_prob` keeps term by term. Compiled, one logarithm per
    16 values makes the kernel of an IWAE chunk faster than one per value. A
    last axis of unknown length is summed term by term.
    """
    width = e.shape[-1]
    if width is None:
        return tf.reduce_sum(log1p_unit(e), axis=-1)
    factors = 1.0 + e
    pad = -width % LOG_GROUP
    if pad:
        factors = tf.concat([factors, tf.ones(tf.concat([tf.shape(e)[:-1], [pad]], 0),
                                              e.dtype)], axis=-1)
    groups = tf.reshape(factors, tf.concat([tf.shape(e)[:-1],
                                            [(width + pad) // LOG_GROUP, LOG_GROUP]], 0))
    return tf.reduce_sum(tf.math.log(tf.reduce_prod(groups, axis=-1)), axis=-1)


def kl_bernoulli(logits, prior_logits):
    """``KL(Bernoulli(a) || Bernoulli(b))`` per unit: ``sigmoid(a) (a - b) + sp(b) - sp(a)``.

    TFP's value (``sp`` is softplus) from logits, in a few fused ops.
    """
    return tf.sigmoid(logits) * (logits - prior_logits) + tf.math.softplus(prior_logits) \
        - tf.math.softplus(logits)


@tf.custom_gradient
def bernoulli_log_prob(logits, x):
    """Elementwise ``log Bernoulli(x | logits) = x * l - softplus(l)``.

    ``softplus(l) = relu(l) + log1p(exp(-|l|))``, stable for any finite
    ``l``, and ``d/dl = x - sigmoid(l)`` with ``sigmoid`` from the same
    ``exp(-|l|)``. ``x`` may be any value in [0, 1] (TFP's formula is the
    same linear function of ``x``).
    """
    e = tf.exp(-tf.abs(logits))
    value = _bernoulli_terms(logits, x, e)

    def grad(upstream):
        return upstream * (x - _sigmoid_from(logits, e)), upstream * logits

    return value, grad


def _bernoulli_terms(logits, x, e):
    """``x * l - softplus(l)`` with ``e = exp(-|l|)`` (shared by both kernels above)."""
    return x * logits - tf.nn.relu(logits) - log1p_unit(e)


def log1p_unit(e):
    """``log(1 + e)`` for ``e`` in ``[0, 1]``, as accurate as ``log1p``, from one ``log``.

    Goldberg's formula (What every computer scientist should know about
    floating-point arithmetic, 1991, theorem 4): with ``u = 1 + e`` rounded,
    ``log(u) * e / (u - 1)`` is accurate to a few ulps (``e`` itself once
    ``u`` rounds to 1). XLA's ``log1p`` evaluates a series and a logarithm
    and selects one: compiled, the Bernoulli kernel of an IWAE evaluation
    (``k x batch x D`` pixels) is faster with this one ``log``.
    """
    u = 1.0 + e
    return tf.where(u == 1.0, e, tf.math.log(u) * (e / (u - 1.0)))


def _sigmoid_from(logits, e):
    """``sigmoid(l)`` from ``e = exp(-|l|)``, without a second exponential."""
    r = 1.0 / (1.0 + e)
    return tf.where(logits >= 0, r, e * r)


def rate(posterior, prior):
    """Analytic ``KL(q(z|x) || p(z))``, shape ``[batch]``."""
    return tfd.kl_divergence(posterior, prior)


def kl_to_standard_normal(posterior):
    """``KL(N(mu, diag s^2) || N(0, I))`` of an ``Independent(Normal)``, ``[batch]``.

    ``0.5 * sum(mu^2 + s^2 - 1) - sum(log s)``: TFP's value, from a handful of
    ops instead of the generic KL dispatch (a smaller, faster compiled step).
    """
    normal = posterior.distribution
    loc, scale = tf.convert_to_tensor(normal.loc), tf.convert_to_tensor(normal.scale)
    return tf.reduce_sum(0.5 * (tf.square(loc) + tf.square(scale) - 1.0) - tf.math.log(scale),
                         axis=-1)


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

