"""Mean-field SBNs (``--inference mean-field``): the closed-form bound against enumeration.

A tiny linear SBN (8 pixels, two layers of 3 units) has 64 hidden codes, so
its log-likelihood, the exact ELBO of a factorised posterior and every
expectation inside Saul, Jaakkola and Jordan's bound are exact sums. The
bound must be the brute-force value, lie below the exact ELBO (so below
``log p(x)``), come within a fraction of a nat of it once refined, and never
drop under the updates; the importance-weighted estimate with the fitted
posterior as proposal must reach ``log p(x)``.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

import tfvae
from tfvae._keras import keras, tf
from tfvae.config import Config
from tfvae.errors import ConfigError
from tfvae.models import mean_field_bound as mfb
from tfvae.models.mean_field import MeanFieldSBN

PIXELS, UNITS, LAYERS = 8, 3, 2


def _model(center=False, **kwargs):
    keras.utils.set_random_seed(0)
    model = MeanFieldSBN(train_examples=6, input_dim=PIXELS, image_shape=(2, 4),
                         latent_dim=UNITS, stochastic_layers=LAYERS, learn_prior=True,
                         center_input=center, **kwargs)
    rng = np.random.default_rng(1)
    for v in model.trainable_variables:
        v.assign(rng.normal(size=v.shape).astype(np.float32))
    return model


X = (np.random.default_rng(2).random((6, PIXELS)) < 0.5).astype(np.float32)
CODES = np.array(list(itertools.product([0.0, 1.0], repeat=UNITS)), np.float32)


def _joint(model, x):
    """``log p(x, z_1, z_2)`` of every code pair, ``[64, batch]``, from the Keras networks."""
    rows = []
    for z1 in CODES:
        for z2 in CODES:
            z1b, z2b = (np.repeat(z[None], len(x), 0) for z in (z1, z2))
            rows.append(model.log_likelihood(tf.constant(z1b), tf.constant(x))
                        + mfb_log_bernoulli(model.generators[0](z2b), z1b)
                        + mfb_log_bernoulli(model.prior_logits()[None], z2b))
    return np.stack([r.numpy() for r in rows])


def mfb_log_bernoulli(logits, z):
    return tf.reduce_sum(z * logits - tf.nn.softplus(logits), axis=-1)


def _q_of_codes(lams):
    """``q(z_1, z_2)`` of every code pair under factorised means, ``[64, batch]``."""
    mus = [tf.sigmoid(lam).numpy() for lam in lams]
    out = []
    for z1 in CODES:
        for z2 in CODES:
            p = np.prod(np.where(z1 == 1, mus[0], 1 - mus[0]), -1)
            out.append(p * np.prod(np.where(z2 == 1, mus[1], 1 - mus[1]), -1))
    return np.stack(out)


def _random_parameters(seed, batch=6):
    rng = np.random.default_rng(seed)
    lams = [tf.constant(rng.normal(size=(batch, UNITS)).astype(np.float32)) for _ in range(2)]
    xis = [tf.constant(rng.random((batch, PIXELS)).astype(np.float32)),
           tf.constant(rng.random((batch, UNITS)).astype(np.float32))]
    return lams, xis


# ------------------------------------------------------------------ the bound


@pytest.mark.parametrize("center", [False, True])
def test_the_bound_is_the_brute_force_bound(center):
    """Every expectation of eq. 12 summed over the 64 codes gives the closed form."""
    model = _model(center)
    lams, xis = _random_parameters(3)
    net = model.network()
    q = _q_of_codes(lams)  # [64, batch]
    z1 = np.repeat(CODES, len(CODES), 0)  # [64, K], z1 of each pair
    z2 = np.tile(CODES, (len(CODES), 1))
    signed = (lambda z: 2 * z - 1) if center else (lambda z: z)
    dense = model.decoder.layers[-2]
    gen = model.generators[0].layers[-1]

    def term(pre, target, xi):  # pre [64, batch, C]: the child's logits per code pair
        mean = np.einsum("cb,cbi->bi", q, pre)
        lo = np.einsum("cb,cbi->bi", q, np.exp(-xi * pre))
        hi = np.einsum("cb,cbi->bi", q, np.exp((1 - xi) * pre))
        return np.sum((target - xi) * mean - np.log(lo + hi), -1)

    pre_x = (signed(z1) @ dense.kernel.numpy() + dense.bias.numpy())[:, None, :]
    pre_1 = (signed(z2) @ gen.kernel.numpy() + gen.bias.numpy())[:, None, :]
    pre_x, pre_1 = (np.broadcast_to(p, (64, 6, p.shape[-1])) for p in (pre_x, pre_1))
    h = model.prior_logits().numpy()
    mus = [tf.sigmoid(lam).numpy() for lam in lams]
    entropy = sum(np.sum(-m * np.log(m) - (1 - m) * np.log(1 - m), -1) for m in mus)
    brute = (term(pre_x, X, xis[0].numpy()) + term(pre_1, mus[0], xis[1].numpy())
             + np.sum(mus[1] * h - np.logaddexp(0, h), -1) + entropy)
    np.testing.assert_allclose(mfb.bound(X, net, lams, xis).numpy(), brute, rtol=1e-5,
                               atol=1e-4)


def test_the_bound_is_below_the_exact_elbo_and_log_likelihood_and_tight_once_refined():
    model = _model()
    joint = _joint(model, X)
    log_px = np.logaddexp.reduce(joint, axis=0)
    net = model.network()
    for seed in range(3):
        lams, xis = _random_parameters(seed)
        q = _q_of_codes(lams)
        exact_elbo = np.sum(q * (joint - np.log(q)), axis=0)
        value = mfb.bound(X, net, lams, xis).numpy()
        assert np.all(value <= exact_elbo + 1e-4) and np.all(exact_elbo <= log_px + 1e-4)
    lams, xis = mfb.start(len(X), net, PIXELS)
    before = log_px - mfb.bound(X, net, lams, xis).numpy()
    lams, xis, value = mfb.refine(tf.constant(X), net, lams, xis, 50)
    after = log_px - value.numpy()
    assert np.all(after >= -1e-4), after  # still a bound
    assert np.all(after < 0.3) and after.mean() < 0.25 * before.mean(), (before, after)


def test_the_xi_bound_holds_for_every_xi_and_is_tight_at_its_optimum():
    """``E[log(1 + e^z)] <= xi E[z] + log E[e^-xi z + e^(1-xi) z]``, enumerated and sampled."""
    rng = np.random.default_rng(4)
    # 10 parents: their 1024 states enumerated.
    kernel = rng.normal(size=(10, 1)).astype(np.float32)
    layer = mfb.Linear(tf.constant(kernel), tf.constant([0.3], tf.float32))
    lam = tf.constant(rng.normal(size=(1, 10)).astype(np.float32))
    mu = tf.sigmoid(lam).numpy()[0]
    states = np.array(list(itertools.product([0, 1], repeat=10)), np.float32)
    weights = np.prod(np.where(states == 1, mu, 1 - mu), -1)
    z = states @ kernel[:, 0] + 0.3
    exact = np.sum(weights * np.logaddexp(0, z))

    def xi_bound(xi):  # minus the conditional's term for a child with target 0
        term = mfb.conditional(tf.zeros([1, 1]), lam, layer, tf.constant([[xi]], tf.float32))
        return -float(term[0, 0])

    gaps = [xi_bound(xi) - exact for xi in np.linspace(-0.5, 1.5, 21)]
    assert min(gaps) >= -1e-4, gaps
    # Newton's steps (the refinement's) find the best xi: a small gap, the grid's at best.
    xi = tf.constant([[0.5]])
    for _ in range(8):
        xi = xi + mfb._steps_of(tf.zeros([1, 1]), lam, layer, xi)[2]
    best = xi_bound(float(xi[0, 0])) - exact
    assert -1e-4 <= best <= min(gaps) + 1e-4 and best < 0.1, (best, min(gaps))
    # 200 parents, past enumeration: a Monte Carlo estimate stays below the bound too.
    kernel = rng.normal(size=(200, 1)).astype(np.float32) * 0.3
    layer = mfb.Linear(tf.constant(kernel), tf.constant([0.0]))
    lam = tf.constant(rng.normal(size=(1, 200)).astype(np.float32))
    draws = (rng.random((200_000, 200)) < tf.sigmoid(lam).numpy()).astype(np.float32)
    values = np.logaddexp(0, draws @ kernel[:, 0])
    upper = values.mean() + 4 * values.std() / np.sqrt(len(values))
    term = mfb.conditional(tf.zeros([1, 1]), lam, layer, tf.constant([[0.5]]))
    assert upper <= -float(term[0, 0]), (upper, -float(term[0, 0]))


# ------------------------------------------------------------------ the updates


def test_the_update_directions_are_the_derivatives_of_the_bound():
    """``dE/dmu - lam`` (mean-field equations) and Newton's ``-f'/f''`` for xi, by autodiff."""
    model = _model()
    net = model.network()
    lams, xis = _random_parameters(5)
    mus = [tf.sigmoid(lam) for lam in lams]
    with tf.GradientTape(persistent=True) as outer:
        outer.watch(xis)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(mus + xis)
            logits = [tf.math.log(m) - tf.math.log1p(-m) for m in mus]
            value = tf.reduce_sum(mfb.bound(X, net, logits, xis))
            energy = value - tf.add_n([tf.reduce_sum(mfb.entropy(lam)) for lam in logits])
        first = tape.gradient(value, xis)
        summed = [tf.reduce_sum(f) for f in first]
    second = [outer.gradient(s, xi) for s, xi in zip(summed, xis, strict=True)]  # separable
    _, lam_steps, xi_steps = mfb.directions(X, net, lams, xis)
    for grad, lam, step in zip(tape.gradient(energy, mus), lams, lam_steps, strict=True):
        np.testing.assert_allclose(step, grad - lam, rtol=1e-4, atol=1e-4)
    for f1, f2, step in zip(first, second, xi_steps, strict=True):
        np.testing.assert_allclose(step, f1 / -f2, rtol=1e-3, atol=1e-4)


def test_the_updates_never_lower_an_examples_bound_and_raise_it_on_average():
    model = _model()
    net = model.network()
    for seed in range(3):
        lams, xis = _random_parameters(seed)
        start = mfb.bound(X, net, lams, xis).numpy()
        values = [start]
        for steps in (1, 2, 4, 8):
            new_lams, new_xis, value = mfb.refine(tf.constant(X), net, lams, xis, steps)
            # The value returned is the bound at the parameters returned.
            np.testing.assert_allclose(mfb.bound(X, net, new_lams, new_xis), value, atol=1e-4)
            values.append(value.numpy())
        values = np.stack(values)
        assert np.all(np.diff(values, axis=0) >= -1e-5), values
        assert (values[-1] - start).mean() > 0.1, values


def _pair_problem(seed, rows=4, parents=30, children=40, scale=3.0):
    """Random logits, xi, weights (wide enough that several logarithms split the parents)."""
    rng = np.random.default_rng(seed)
    lam = np.clip(rng.normal(size=(rows, parents)) * 8, -20, 20).astype(np.float32)
    xi = rng.random((rows, children)).astype(np.float32)
    kernel = (rng.normal(size=(parents, children)) * scale).astype(np.float32)
    return lam, xi, kernel, rng.random((2, rows, children)).astype(np.float32)


def test_the_loops_give_the_pair_sums_of_the_broadcast_formulas():
    """Every sum of :mod:`mean_field_sweeps` against its ``[2, rows, P, C]`` formula in float64."""
    from tfvae.models import mean_field_sweeps as mfs

    lam, xi, kernel, weights = _pair_problem(6)
    assert mfs._group(tf.constant(kernel)).numpy() < kernel.shape[0]  # products split
    t = np.stack([-xi, 1.0 - xi]).astype(np.float64)[:, :, None, :]  # [2, rows, 1, C]
    mu = 1.0 / (1.0 + np.exp(-lam.astype(np.float64)))[None, :, :, None]
    tilt = np.exp(t * kernel)
    f = 1.0 - mu + mu * tilt
    s = mu * tilt / f
    expected = [np.log(f).sum(2), (kernel * s).sum(2), (kernel ** 2 * s * (1 - s)).sum(2)]
    got = mfs.children_sums(tf.constant(lam), tf.constant(kernel), tf.constant(xi))
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(mfs.children_sums(lam, kernel, xi, derivatives=False)[0],
                               expected[0], rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(mfs.parent_sums(lam, kernel, xi, weights),
                               (weights[:, :, None, :] * (tilt - 1) / f).sum((0, 3)),
                               rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(mfs.weight_sums(lam, kernel, xi, weights),
                               (weights[:, :, None, :] * s).sum((0, 1)), rtol=1e-4, atol=1e-4)
    # The pass of the refinement: the loops' and the broadcast one agree, and weights past
    # the loops' limit take the broadcast one.
    layer = mfb.Linear(tf.constant(kernel), tf.constant(np.linspace(-1, 1, 40), tf.float32))
    target = tf.constant(weights[0] < 0.5, tf.float32)
    for a, b in zip(mfb._looped_steps(target, lam, layer, xi),
                    mfb._broadcast_steps(target, lam, layer, xi), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3)
    wide = mfb.Linear(layer.kernel * 20.0, layer.bias)
    assert not mfs.applies(wide.kernel)
    for a, b in zip(mfb._steps_of(target, lam, wide, xi),
                    mfb._broadcast_steps(target, lam, wide, xi), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("scale", [3.0, 100.0])  # the loops, and weights past their limit
def test_the_held_conditionals_gradient_is_the_weights_gradient_of_the_conditional(scale):
    lam, xi, kernel, weights = _pair_problem(7, parents=6, children=9, scale=scale)
    target = tf.constant(weights[0] < 0.5, tf.float32)
    kernel, bias = tf.Variable(kernel), tf.Variable(tf.linspace(-1.0, 1.0, 9))
    upstream = tf.constant(weights[1])
    results = []
    for term in (mfb.conditional, mfb.held_conditional):
        with tf.GradientTape() as tape:
            value = term(target, lam, mfb.linear(kernel, bias, signed=True), xi)
            loss = tf.reduce_sum(upstream * value)
        results.append([value, *tape.gradient(loss, [kernel, bias])])
    for a, b in zip(*results, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * scale)


# ------------------------------------------------------------------ the model


@pytest.mark.slow
def test_the_importance_weighted_estimate_reaches_the_exact_log_likelihood():
    model = _model(mean_field_eval_steps=30)
    log_px = np.logaddexp.reduce(_joint(model, X), axis=0)
    results = tfvae.evaluate(model, X, k=20_000, seed=1)
    assert results["elbo"] <= results["log_likelihood"]
    assert results["log_likelihood"] == pytest.approx(log_px.mean(), abs=0.02)
    assert results["log_likelihood"] <= log_px.mean() + 0.02
    # Few samples: in expectation still between the bound and log p(x).
    few = [tfvae.evaluate(model, X, k=5, seed=s)["log_likelihood"] for s in range(8)]
    assert results["elbo"] <= np.mean(few) <= log_px.mean() + 0.01
    # The proposal is the fitted posterior: its bound is evaluation's elbo.
    fitted = model.fitted(tf.constant(X))
    np.testing.assert_allclose(np.mean(fitted["bound"]), results["elbo"], atol=1e-4)


@pytest.mark.slow
def test_training_raises_the_bound_and_keeps_each_examples_parameters(binary_images):
    x = binary_images[:128]
    keras.utils.set_random_seed(0)
    model = MeanFieldSBN(train_examples=len(x), input_dim=784, latent_dim=8,
                         stochastic_layers=1, learn_prior=True, mean_field_steps=3,
                         mean_field_eval_steps=10)
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    before = tfvae.evaluate(model, x, k=1)["elbo"]
    table = model.variational_logits.numpy().copy()
    history = model.fit(x, epochs=3, batch_size=32, verbose=0).history
    assert history["elbo"][-1] > history["elbo"][0] + 20, history["elbo"]
    assert tfvae.evaluate(model, x, k=1)["elbo"] > before + 20
    moved = np.any(model.variational_logits.numpy() != table, axis=1)
    assert moved.all()  # every row was visited and refined
    with pytest.raises(ConfigError, match="train_examples=128"):
        model.fit(x[:100], epochs=1)


def test_evaluation_reuses_the_rows_fitted_last_only_under_the_same_weights():
    """Evaluation fits a batch once for its bound and once more per importance-sampling
    chunk: rows fitted last are reused, exactly, until a weight changes."""
    keras.utils.set_random_seed(0)
    model = MeanFieldSBN(train_examples=6, input_dim=PIXELS, latent_dim=UNITS,
                         mean_field_eval_steps=5)
    x = tf.constant(X)
    first = model.fitted(x)
    key = model._fit_key()
    assert model._last_fit.lookup(x[2:5], key)[0].numpy()
    again = model.fitted(x[2:5])
    for name in ("bound", "fit", "rest", "units"):
        np.testing.assert_array_equal(again[name], first[name][2:5])
    assert not model._last_fit.lookup(tf.constant(1.0 - X[:2]), key)[0].numpy()
    dense = model.decoder.layers[-2]
    dense.bias.assign(dense.bias + 0.5)
    assert not model._last_fit.lookup(x[2:5], model._fit_key())[0].numpy()
    moved = model.fitted(x)["bound"]
    np.testing.assert_allclose(moved, model._fit_rows(x)[2], atol=1e-5)
    assert np.all(np.abs(moved - first["bound"]) > 1e-3)


def test_every_chunk_has_the_models_rows_so_any_batch_reuses_one_program():
    """XLA compiles a program per input shape: chunks of a fixed row count (the last padded)
    let a partial batch, the evaluation's and a figure's rows share the training's."""
    model = MeanFieldSBN(train_examples=6, input_dim=PIXELS, latent_dim=UNITS)
    rows = model._chunk_rows()
    seen = []

    def fn(x, steps, net):
        seen.append(x.shape[0])  # the static chunk shape each call is traced with
        return (tf.reduce_sum(x, axis=-1),)

    for n in (1, rows - 1, 3 * rows + 2):
        x = tf.constant(np.random.default_rng(n).random((n, PIXELS)), tf.float32)
        (out,) = model._by_chunks(fn, (x,), (tf.TensorSpec([None]),), 1)
        np.testing.assert_allclose(out, tf.reduce_sum(x, axis=-1), rtol=1e-6)  # padding cut
    assert seen and set(seen) == {rows}


def test_mean_field_refuses_what_its_bound_does_not_cover():
    assert Config(model="sbn", inference="mean-field", hidden="").inference == "mean-field"
    cases = [
        ("--model sbn", dict(model="gaussian", hidden="")),
        ("linear layers", dict(model="sbn", hidden="200")),
        ("linear layers", dict(model="sbn", hidden="", decoder_hidden="100")),
        ("linear layers", dict(model="sbn", hidden="", arch="conv")),
        ("Bernoulli pixels", dict(model="sbn", hidden="", likelihood="gaussian")),
        ("one device", dict(model="sbn", hidden="", strategy="mirrored")),
    ]
    for words, kwargs in cases:
        with pytest.raises(ConfigError, match=words):
            Config(inference="mean-field", **kwargs)
    with pytest.raises(ConfigError, match="Bernoulli pixels"):
        MeanFieldSBN(train_examples=4, input_dim=PIXELS, latent_dim=2, likelihood="gaussian")
    with pytest.raises(ConfigError, match="linear conditionals"):
        MeanFieldSBN(train_examples=4, input_dim=PIXELS, latent_dim=2, hidden=(4,))


def test_the_indexed_pipeline_yields_each_batchs_row_indices():
    from tfvae import data

    rows = np.arange(40, dtype=np.float32).reshape(10, 4)
    ds = data.make_pipeline(rows, "none", 4, None, shuffle=True, seed=0, indices=True)
    seen = []
    for batch, index in ds:
        np.testing.assert_array_equal(batch.numpy(), rows[index.numpy()])
        seen += list(index.numpy())
    assert sorted(seen) == list(range(10))


# ------------------------------------------------------------------ runs


@pytest.mark.slow
def test_cli_trains_resumes_and_evaluates_a_mean_field_run(tmp_path):
    from click.testing import CliRunner
    from tfvae_cli.main import cli

    rng = np.random.default_rng(0)
    data = tmp_path / "bits.npz"
    np.savez(data, x_train=(rng.random((200, 4, 4)) < 0.3).astype(np.uint8),
             x_test=(rng.random((40, 4, 4)) < 0.3).astype(np.uint8))
    run = tmp_path / "run"
    args = ["train", "--model", "sbn", "--inference", "mean-field", "--hidden", "",
            "--data-dir", data, "--latent-dim", 3, "--stochastic-layers", 2, "--learn-prior",
            "--batch-size", 50, "--iwae-k", 20, "--mean-field-eval-steps", 10, "--out", run]
    result = CliRunner().invoke(cli, [str(a) for a in args + ["--epochs", 1]])
    assert result.exit_code == 0, result.output
    first = tfvae.load_run(run, "last").model.variational_logits.numpy()
    result = CliRunner().invoke(cli, ["train", "--resume", str(run), "--epochs", "2"])
    assert result.exit_code == 0, result.output
    loaded = tfvae.load_run(run, "last")
    assert isinstance(loaded.model, MeanFieldSBN) and len(loaded.history) == 2
    assert loaded.model.variational_logits.shape == (190, 6)  # 5% held out to validate
    assert not np.array_equal(loaded.model.variational_logits.numpy(), first)  # continued
    assert {p.name for p in (run / "figures").iterdir()} >= {"samples.png",
                                                              "reconstructions.png"}
    assert "mean-field" in json.loads((run / "evaluation.json").read_text())["note"]
    result = CliRunner().invoke(cli, ["evaluate", str(run), "--k", "50", "--json"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output.strip().splitlines()[-1])
    assert figures["elbo"] <= figures["log_likelihood"] + 0.5
    result = CliRunner().invoke(cli, ["diagnose", str(run)])
    assert result.exit_code == 1 and "--inference mean-field" in result.output
