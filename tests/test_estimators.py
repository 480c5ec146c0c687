"""Gradient estimators for binary latents: unbiasedness against exact enumeration,
variance reduction, and the diagnostics built on them.

The test problem is tiny (3 binary latents, 20 pixels, linear encoder and
decoder: a one-layer sigmoid belief network) so that ``E_q[log p(x|z)]`` and
its gradient can be computed exactly by enumerating all 2^3 codes. Draws are
vectorised: the batch holds many copies of one example, so one call gives
many independent gradient draws.

Tolerance of every statistical check: ``|mean - exact| <= 5 * stderr + atol``
per coordinate, ``stderr`` estimated from the draws (a 5-sigma band: a false
failure has probability well under 1e-4 per coordinate).
"""

import itertools

import numpy as np
import pytest

from tfvae import estimators
from tfvae._keras import tf, tfd
from tfvae.estimators import ESTIMATORS, Problem, State

LATENT = 3
PIXELS = 20
ELBO_ESTIMATORS = ("reinforce", "ema", "nvil", "rloo", "disarm", "arm")
RELAXED = ("gumbel", "straight-through")  # biased: their bias is measured, not assumed 0
SIGMAS = 5.0


def _model(estimator="ema", **kwargs):
    import tfvae
    from tfvae._keras import keras

    keras.utils.set_random_seed(1)
    model = tfvae.BernoulliVAE(
        input_dim=PIXELS, latent_dim=LATENT, hidden=(), decoder_hidden=(), estimator=estimator,
        num_samples=kwargs.pop("num_samples", 4), **kwargs,
    )
    # Encoder logits of moderate size, so no unit is nearly deterministic.
    enc_kernel, enc_bias = model.encoder.trainable_variables
    enc_kernel.assign(0.3 * tf.random.stateless_normal(enc_kernel.shape, [1, 2]))
    enc_bias.assign([0.4, -0.3, 0.1])
    return model


@pytest.fixture(scope="module")
def problem_data():
    x = (np.random.default_rng(3).random(PIXELS) < 0.5).astype(np.float32)
    return tf.constant(x)


def _all_codes(latent=LATENT):
    return tf.constant(list(itertools.product([0.0, 1.0], repeat=latent)), tf.float32)  # [S, K]


def _kl(model, logits):
    q = tfd.Independent(tfd.Bernoulli(logits=logits, dtype=tf.float32), 1)
    return tfd.kl_divergence(q, model.prior())


def _exact_elbo(model, x1, logits):
    """Exact ELBO of one example by enumeration: sum_z q(z|x) log p(x|z) - KL."""
    codes = _all_codes()  # [S, K]
    q = tfd.Independent(tfd.Bernoulli(logits=logits, dtype=tf.float32), 1)  # batch [1]
    log_q = q.log_prob(codes)  # [S]
    f = model.log_likelihood(codes[:, None, :], x1[None])[:, 0]  # [S]
    return tf.reduce_sum(tf.exp(log_q) * f) - _kl(model, logits)[0]


def _exact_k_bound(model, x1, logits, k=2):
    """Exact k-sample bound E[log (1/k) sum_j w_j] by enumerating all S^k code tuples."""
    codes = _all_codes()  # [S, K]
    q = tfd.Independent(tfd.Bernoulli(logits=logits, dtype=tf.float32), 1)
    log_q = q.log_prob(codes)  # [S]
    f = model.log_likelihood(codes[:, None, :], x1[None])[:, 0]  # [S]
    log_w = f + model.prior().log_prob(codes) - log_q  # [S]
    idx = tf.constant(list(itertools.product(range(len(codes)), repeat=k)))  # [S^k, k]
    tuple_log_q = tf.reduce_sum(tf.gather(log_q, idx), axis=1)  # [S^k]
    bound = tf.reduce_logsumexp(tf.gather(log_w, idx), axis=1) - np.log(k)  # [S^k]
    return tf.reduce_sum(tf.exp(tuple_log_q) * bound)


def _per_draw_logit_grads(model, x1, name, draws, seed, state=None, num_samples=4,
                          temperature=0.5):
    """Per-draw gradients of the surrogate loss wrt the logits: ``[draws, latent]``.

    Every row of the batch is the same example, so row i's gradient is one
    independent draw of the estimator (the surrogate averages over rows).
    """
    a1 = model.encoder_logits(x1[None])  # [1, K]
    x = tf.tile(x1[None], [draws, 1])  # [draws, D]
    state = state or EMPTY
    with tf.GradientTape() as tape:
        a = tf.tile(a1, [draws, 1])  # [draws, K]
        tape.watch(a)
        problem = Problem(
            logits=a,
            log_likelihood=lambda z: model.log_likelihood(z, x),
            log_prior=lambda z: model.prior().log_prob(z),
            kl=_kl(model, a),
            kl_weight=tf.constant(1.0),
            seed=tf.constant([seed, 7]),
            num_samples=num_samples,
            decay=0.9,
            input_baseline=tf.fill([draws], -2.0),  # a fixed c(x), as at some point of training
            normalize=False,
            temperature=temperature,
        )
        est = ESTIMATORS[name](problem, state)
    return tape.gradient(est.loss, a).numpy() * draws, a1


def _exact_logit_grad(model, x1, a1, name):
    with tf.GradientTape() as tape:
        tape.watch(a1)
        if ESTIMATORS[name].objective == "elbo":
            loss = -_exact_elbo(model, x1, a1)
        else:
            loss = -_exact_k_bound(model, x1, a1, k=2)
    return tape.gradient(loss, a1).numpy()[0]


EMPTY = State(mean=tf.constant(0.0), var=tf.constant(0.0), initialized=tf.constant(0.0))


def _fixed_state():
    # A nonzero baseline, off from E[f] on purpose: unbiasedness must not depend on it.
    return State(mean=tf.constant(-9.0), var=tf.constant(4.0), initialized=tf.constant(1.0))


def test_registry_matches_options():
    from tfvae import options

    assert tuple(ESTIMATORS) == tuple(options.ESTIMATORS)
    for name, fn in ESTIMATORS.items():
        info = options.ESTIMATORS[name]
        assert (fn.objective, fn.min_samples, fn.input_baseline) == (
            info.objective, info.min_samples, info.input_baseline)
        assert fn.objective in ("elbo", "k-sample bound")
    with pytest.raises(ValueError, match="choose one of"):
        estimators.get("nope")


@pytest.mark.parametrize("name", ELBO_ESTIMATORS + ("vimco",))
def test_unbiased_wrt_logits(name, problem_data):
    model = _model()
    x1 = problem_data
    num_samples = 2 if name == "vimco" else 4
    grads, a1 = _per_draw_logit_grads(model, x1, name, draws=20000, seed=11,
                                      state=_fixed_state(), num_samples=num_samples)
    exact = _exact_logit_grad(model, x1, a1, name)
    mean = grads.mean(axis=0)
    stderr = grads.std(axis=0, ddof=1) / np.sqrt(len(grads))
    assert np.all(np.abs(mean - exact) <= SIGMAS * stderr + 1e-4), (mean, exact, stderr)


def _model_grads(model, x, name, seed):
    with tf.GradientTape() as tape:
        est, _ = model.estimate(x, estimator=name, seed=tf.constant([seed, 5]))
    return [g.numpy() for g in tape.gradient(est.loss, model.encoder.trainable_variables
                                             + model.decoder.trainable_variables)]


@pytest.mark.parametrize("name", ("ema", "nvil", "rloo", "disarm", "vimco", "arm"))
def test_model_gradient_unbiased(name, problem_data):
    """Through the model's own wiring: encoder AND decoder gradients match enumeration."""
    model = _model(estimator=name, nvil_normalize=False,
                   num_samples=2 if name == "vimco" else 4)
    model.baseline_mean.assign(-9.0)
    model.baseline_initialized.assign(1.0)
    x1 = problem_data
    x = tf.tile(x1[None], [2000, 1])
    draws = [np.concatenate([g.ravel() for g in _model_grads(model, x, name, s)])
             for s in range(30)]
    draws = np.stack(draws)  # [30, params]; each row averages 2000 draws
    variables = model.encoder.trainable_variables + model.decoder.trainable_variables
    with tf.GradientTape() as tape:
        a1 = model.encoder_logits(x1[None])
        if name == "vimco":
            loss = -_exact_k_bound(model, x1, a1, k=2)
        else:
            loss = -_exact_elbo(model, x1, a1)
    exact = np.concatenate([g.numpy().ravel() for g in tape.gradient(loss, variables)])
    mean = draws.mean(axis=0)
    stderr = draws.std(axis=0, ddof=1) / np.sqrt(len(draws))
    atol = 1e-3 * np.abs(exact).max()
    assert np.all(np.abs(mean - exact) <= SIGMAS * stderr + atol), np.abs(mean - exact).max()


def test_baselines_reduce_variance(problem_data):
    """ema, nvil (unnormalised) and rloo beat plain REINFORCE by at least 2x."""
    model = _model()
    x1 = problem_data
    # Baseline values near E_q[log p(x|z)] (about -14 nats here): what ema and
    # nvil's running mean track after some training.
    a1 = model.encoder_logits(x1[None])
    expected_f = float(_exact_elbo(model, x1, a1) + _kl(model, a1)[0])
    state = State(mean=tf.constant(expected_f), var=tf.constant(1.0),
                  initialized=tf.constant(1.0))
    nvil_state = State(mean=tf.constant(expected_f + 2.0), var=tf.constant(1.0),
                       initialized=tf.constant(1.0))  # c(x) = -2 in the helper
    variance = {}
    for name in ELBO_ESTIMATORS:
        grads, _ = _per_draw_logit_grads(model, x1, name, draws=4000, seed=3,
                                         state=nvil_state if name == "nvil" else state)
        variance[name] = float(grads.var(axis=0, ddof=1).sum())  # trace of covariance
    assert expected_f < -5.0  # the regime baselines fix: a signal with a large mean
    for name in ("ema", "nvil", "rloo"):
        assert variance[name] * 2.0 <= variance["reinforce"], variance
    # DisARM is ARM averaged over u given the pair (Dong et al. 2020): never noisier.
    assert variance["disarm"] < variance["arm"], variance


def test_ema_updates_after_use():
    """The baseline used is the one from before the batch; the state then moves."""
    logits = tf.zeros([4, 2])
    f_values = tf.constant([-1.0, -2.0, -3.0, -4.0])
    problem = Problem(logits=logits, log_likelihood=lambda z: f_values + 0.0 * z[..., 0],
                      log_prior=None, kl=tf.zeros([4]), kl_weight=tf.constant(1.0),
                      seed=tf.constant([0, 0]), decay=0.5)
    # First batch: leave-one-out baseline, state starts at the batch mean.
    est = estimators.ema(problem, EMPTY)
    np.testing.assert_allclose(est.baseline, [-3.0, -8 / 3, -7 / 3, -2.0], rtol=1e-6)
    np.testing.assert_allclose(est.updates["mean"], -2.5)
    # Later batches: the old value is used, then decayed toward the batch mean.
    state = State(mean=tf.constant(-10.0), var=tf.constant(0.0), initialized=tf.constant(1.0))
    est = estimators.ema(problem, state)
    np.testing.assert_allclose(est.baseline, -10.0)
    np.testing.assert_allclose(est.signal, f_values + 10.0)
    np.testing.assert_allclose(est.updates["mean"], 0.5 * -10.0 + 0.5 * -2.5)


def test_surrogate_value_is_negative_elbo(problem_data):
    """The magic-box surrogates add 0 to the loss value: it reads as -ELBO."""
    model = _model()
    x = tf.tile(problem_data[None], [8, 1])
    for name in ("reinforce", "ema"):
        est, kl = model.estimate(x, estimator=name, seed=tf.constant([1, 2]))
        np.testing.assert_allclose(
            est.loss, tf.reduce_mean(-est.log_likelihood + kl), rtol=1e-5
        )


def test_gradient_variance_diagnostics(problem_data):
    from tfvae.diagnostics import available_estimators, gradient_variance

    model = _model()
    model.baseline_mean.assign(-14.0)
    model.baseline_initialized.assign(1.0)
    x = tf.tile(problem_data[None], [64, 1])
    usable = available_estimators(model)
    assert "nvil" not in usable  # no c(x) network in a model trained with ema
    assert {"reinforce", "ema", "rloo", "disarm", "vimco", "arm", "gumbel",
            "straight-through"} <= set(usable)
    stats = gradient_variance(model, x, estimators=("reinforce", "ema", "vimco", "gumbel"),
                              num_draws=10)
    for s in stats.values():
        assert s["variance"] > 0 and np.isfinite(s["snr"]) and s["mean_sq_norm"] > 0
    assert stats["ema"]["variance"] < stats["reinforce"]["variance"]
    assert stats["vimco"]["objective"] == "k-sample bound"
    from tfvae.errors import ConfigError

    with pytest.raises(ConfigError, match="nvil"):
        gradient_variance(model, x, estimators=("nvil",), num_draws=2)


def test_snr_leaves_out_parameters_that_only_rounding_moves():
    """A parameter moved only by a deterministic term (a saturated unit's KL) differs between
    draws by float32 rounding; its ratio would be ~1e6 (rloo's snr read 156)."""
    from tfvae.diagnostics import _spread

    rng = np.random.default_rng(0)
    noisy = rng.normal(1.0, 2.0, size=(5, 51))
    value = np.float32(1.9e-4)
    rounded = value + np.array([0, 1, -1, 2, 0])[:, None] * np.spacing(value)  # float32 steps
    exact = np.full((5, 3), 0.5)  # no spread at all
    stats = _spread(np.concatenate([noisy, rounded.astype(np.float64), exact], axis=1))
    expected = np.median(np.abs(noisy.mean(0)) / noisy.std(0, ddof=1))
    np.testing.assert_allclose(stats["snr"], expected)


def test_the_snrs_measure_the_estimator_not_the_number_of_draws():
    """With mean-zero draws the plain ||mean|| / sqrt(variance) is about 1/sqrt(draws);
    the norm snr removes the draws' own noise. A few parameters with a large deterministic
    part do not carry the per-parameter snr (a median)."""
    from tfvae.diagnostics import _spread

    rng = np.random.default_rng(1)
    for draws in (5, 50):
        noise = rng.normal(size=(draws, 2000))
        assert _spread(noise)["norm_snr"] < 0.2 / np.sqrt(draws)
        assert _spread(noise)["snr"] < 1.0 / np.sqrt(draws)
    signal = np.full(2000, 0.1)  # ||E g|| / sqrt(trace) = 0.1
    stats = _spread(signal + rng.normal(size=(200, 2000)))
    np.testing.assert_allclose(stats["norm_snr"], 0.1, rtol=0.1)
    steady = np.concatenate([rng.normal(size=(20, 100)), 5.0 + 1e-3 * rng.normal(size=(20, 3))],
                            axis=1)
    assert _spread(steady)["snr"] < 0.5  # the three ratios of ~5000 are not the summary
    # Draws that never vary: all signal (inf), or nothing at all (nan), on both columns.
    for value, expected in ((2.0, np.inf), (0.0, np.nan)):
        still = _spread(np.full((4, 10), value))
        np.testing.assert_equal([still["snr"], still["norm_snr"]], [expected, expected])


def _bias(model, x1, name, temperature, draws=20000):
    """Mean gradient minus the exact ELBO gradient wrt the logits, and its noise (norms)."""
    grads, a1 = _per_draw_logit_grads(model, x1, name, draws=draws, seed=5,
                                      temperature=temperature)
    exact = _exact_logit_grad(model, x1, a1, name)
    stderr = grads.std(axis=0, ddof=1) / np.sqrt(len(grads))
    bias = grads.mean(axis=0) - exact
    return np.linalg.norm(bias), np.linalg.norm(stderr), np.linalg.norm(exact)


@pytest.mark.parametrize("name", RELAXED)
def test_relaxations_are_biased_and_the_bias_is_bounded(name, problem_data):
    """At temperature 1 the bias is far outside the noise, yet under 15% of the gradient;
    at 0.2 it is less than half as large: the relaxation tends to the discrete model."""
    model = _model()
    warm, noise, exact = _bias(model, problem_data, name, temperature=1.0)
    assert SIGMAS * noise < warm < 0.15 * exact, (warm, noise, exact)
    cold, noise, _ = _bias(model, problem_data, name, temperature=0.2)
    assert cold < 0.5 * warm, (cold, noise, warm)


def test_relaxed_gradients_stay_finite_for_saturated_units(problem_data):
    """A logit of 60 at a low temperature: the sigmoid saturates, the gradient is 0, not NaN."""
    model = _model()
    x = tf.tile(problem_data[None], [64, 1])
    for name in RELAXED:
        with tf.GradientTape() as tape:
            a = tf.constant([[60.0, -60.0, 0.3]] * 64)
            tape.watch(a)
            est = ESTIMATORS[name](Problem(
                logits=a, log_likelihood=lambda z: model.log_likelihood(z, x), log_prior=None,
                kl=_kl(model, a), kl_weight=tf.constant(1.0), seed=tf.constant([3, 4]),
                temperature=0.05), EMPTY)
        grad = tape.gradient(est.loss, a).numpy()
        assert np.all(np.isfinite(grad)) and np.isfinite(float(est.loss)), name


def test_straight_through_decodes_hard_codes_and_gumbel_relaxed_ones(problem_data):
    """straight-through's decoder input is an exact binary draw (its loss reads as -ELBO);
    gumbel's is the relaxed sample in (0, 1), and its reported term is at the hard code."""
    model = _model()
    x = tf.tile(problem_data[None], [16, 1])
    seen = []

    def log_likelihood(z):
        seen.append(z)
        return model.log_likelihood(z, x)

    a = model.encoder_logits(x)
    problem = Problem(logits=a, log_likelihood=log_likelihood, log_prior=None, kl=_kl(model, a),
                      kl_weight=tf.constant(1.0), seed=tf.constant([1, 2]), temperature=0.5)
    est = ESTIMATORS["straight-through"](problem, EMPTY)
    hard = seen[-1].numpy()
    assert set(np.unique(hard)) <= {0.0, 1.0}
    np.testing.assert_allclose(est.log_likelihood, model.log_likelihood(hard, x), rtol=1e-6)
    np.testing.assert_allclose(est.loss, tf.reduce_mean(-est.log_likelihood + problem.kl),
                               rtol=1e-6)
    est = ESTIMATORS["gumbel"](problem, EMPTY)
    relaxed, code = seen[-1].numpy()  # [2, batch, latent]: relaxed, hard
    assert np.all((relaxed > 0) & (relaxed < 1)) and len(np.unique(relaxed)) > 2
    np.testing.assert_array_equal(code, (relaxed > 0.5).astype(np.float32))
    np.testing.assert_allclose(est.log_likelihood, model.log_likelihood(code, x), rtol=1e-6)
