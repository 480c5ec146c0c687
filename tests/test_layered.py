"""Sigmoid belief networks with several binary layers: estimators against exact enumeration.

A tiny two-layer model (2 units per layer, 6 pixels, linear conditionals)
has 16 joint codes, so its ELBO (and VIMCO's 2-sample bound) and their
gradients are exact sums. Every layered estimator's mean gradient, for every
parameter (both inference networks, both generative ones and the learned
prior), must match them within ``5 * stderr + atol`` (stderr from the draws).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import tfvae
from tfvae._keras import keras, tf
from tfvae.estimators import layered
from tfvae.estimators.layered import LAYERED_ESTIMATORS, LayerState

PIXELS, UNITS = 6, 2
SIGMAS = 5.0


def _model(estimator="ema", layers=2, **kwargs):
    keras.utils.set_random_seed(3)
    model = tfvae.StackedBernoulliVAE(
        input_dim=PIXELS, image_shape=(1, PIXELS), latent_dim=UNITS, hidden=(),
        decoder_hidden=(), stochastic_layers=layers, estimator=estimator, learn_prior=True,
        num_samples=kwargs.pop("num_samples", 2), **kwargs)
    # Moderate logits everywhere, so no unit is nearly deterministic.
    for v in model.trainable_variables:
        v.assign(0.4 * tf.random.stateless_normal(v.shape, [7, v.shape.num_elements()]))
    return model


X = tf.constant([[1.0, 0.0, 1.0, 1.0, 0.0, 0.0]])


def _codes():
    return tf.constant(list(itertools.product([0.0, 1.0], repeat=UNITS)), tf.float32)


def _exact_log_terms(model, x):
    """All 16 (z_1, z_2): ``log q(z_1, z_2|x)`` and ``log p(x, z_1, z_2)``."""
    codes = _codes()
    z1 = tf.repeat(codes, len(codes), axis=0)  # [16, 2]
    z2 = tf.tile(codes, [len(codes), 1])  # [16, 2]
    a1 = tf.tile(model.encode(x).distribution.logits, [16, 1])
    a2 = model.upper_encoders[0](z1)
    log_q = layered.log_bernoulli(a1, z1) + layered.log_bernoulli(a2, z2)
    log_p = (model.log_likelihood(z1, tf.tile(x, [16, 1]))
             + layered.log_bernoulli(model.generators[0](z2), z1)
             + model.prior().log_prob(z2))
    return log_q, log_p


def _parameters(model):
    """The model's own parameters (NVIL's baseline networks and relax's control
    variates are not the bound's)."""
    extra = {id(v) for net in (model.baseline_nets or []) for v in net.trainable_variables}
    extra |= {id(v) for v in model.control_variables}
    return [v for v in model.trainable_variables if id(v) not in extra]


def _exact_gradient(model, x, objective):
    variables = _parameters(model)
    with tf.GradientTape() as tape:
        log_q, log_p = _exact_log_terms(model, x)
        if objective == "elbo":
            value = tf.reduce_sum(tf.exp(log_q) * (log_p - log_q))
        else:  # the 2-sample bound: every ordered pair of joint codes
            log_w = log_p - log_q
            pair_q = log_q[:, None] + log_q[None, :]
            bound = tf.reduce_logsumexp(tf.stack([
                tf.broadcast_to(log_w[:, None], [16, 16]),
                tf.broadcast_to(log_w[None, :], [16, 16])]), axis=0) - np.log(2.0)
            value = tf.reduce_sum(tf.exp(pair_q) * bound)
        loss = -value
    return np.concatenate([g.numpy().ravel() for g in tape.gradient(loss, variables)])


def _estimator_gradients(model, name, draws=25, batch=2000):
    state = LayerState(mean=tf.constant([-4.0, -2.0]), var=tf.constant([3.0, 1.0]),
                       initialized=tf.constant(1.0))
    x = tf.tile(X, [batch, 1])
    variables = _parameters(model)
    rows = []
    for seed in range(draws):
        with tf.GradientTape() as tape:
            est, _ = model.estimate(x, estimator=name, seed=tf.constant([seed, 11]), state=state)
        grads = tape.gradient(est.loss, variables)
        rows.append(np.concatenate([(tf.zeros_like(v) if g is None else g).numpy().ravel()
                                    for g, v in zip(grads, variables, strict=True)]))
    return np.stack(rows)  # [draws, params]; each row a mean over `batch` draws


def _unbiased():
    from tfvae import options

    return [name for name in LAYERED_ESTIMATORS if not options.ESTIMATORS[name].biased]


@pytest.mark.parametrize("name", _unbiased())
def test_layered_estimators_are_unbiased_for_every_parameter(name):
    from tfvae import options

    model = _model(estimator=name)
    objective = "elbo" if options.ESTIMATORS[name].objective == "elbo" else "bound"
    exact = _exact_gradient(model, X, objective)
    draws = _estimator_gradients(model, name)
    mean = draws.mean(axis=0)
    stderr = draws.std(axis=0, ddof=1) / np.sqrt(len(draws))
    atol = 2e-3 * np.abs(exact).max()
    assert np.all(np.abs(mean - exact) <= SIGMAS * stderr + atol), (
        name, np.abs(mean - exact).max(), np.abs(mean - exact) / (stderr + 1e-12))


@pytest.mark.parametrize("name", ["gumbel", "straight-through"])
def test_layered_relaxations_are_biased_and_the_bias_is_bounded(name):
    """Relaxed samples passed up the chain: a bias far outside the noise at temperature 1,
    under 15% of the gradient, and less than half as large at 0.2 (every parameter)."""
    model = _model(estimator=name, temperature=1.0)
    exact = _exact_gradient(model, X, "elbo")
    bias = {}
    for temperature in (1.0, 0.2):
        model.temperature = temperature  # read by every chain the model builds
        draws = _estimator_gradients(model, name, draws=4, batch=5000)
        stderr = draws.std(axis=0, ddof=1) / np.sqrt(len(draws))
        bias[temperature] = np.linalg.norm(draws.mean(axis=0) - exact)
        if temperature == 1.0:
            noise = np.linalg.norm(stderr)
            assert SIGMAS * noise < bias[1.0] < 0.15 * np.linalg.norm(exact), (bias, noise)
    assert bias[0.2] < 0.5 * bias[1.0], bias


def test_the_single_sample_terms_average_to_the_exact_elbo():
    model = _model()
    log_q, log_p = _exact_log_terms(model, X)
    exact = float(tf.reduce_sum(tf.exp(log_q) * (log_p - log_q)))
    terms = model.elbo_terms(tf.tile(X, [20000, 1]), seed=tf.constant([1, 2]))
    estimate = -(terms["reconstruction"] + terms["kl"]).numpy()
    assert estimate.mean() == pytest.approx(exact, abs=5 * estimate.std() / np.sqrt(20000))
    # And the k-sample weights are those of the joint: k=1 is the ELBO, larger k tightens.
    exact_ll = float(tf.reduce_logsumexp(log_p))
    bound = tfvae.evaluate(model, np.tile(X.numpy(), (200, 1)), k=2000, seed=0)
    assert bound["log_likelihood"] == pytest.approx(exact_ll, abs=0.01)


def test_local_signals_leave_out_the_layers_below():
    """Layer 2's signal does not move with log p(x|z_1), which it cannot change."""
    model = _model(estimator="reinforce")
    chain = model.chain(X, seed=tf.constant([0, 0]))
    u = layered.uniforms(chain, chain.sizes)
    zs, logits = layered.sample(chain, u)
    gen, inf, kl = layered.terms(chain, zs, logits)
    signals, value = layered._signals(chain, gen, inf, kl)
    shifted, _ = layered._signals(chain, [gen[0] + 100.0] + gen[1:], inf, kl)
    np.testing.assert_allclose(shifted[1], signals[1])
    np.testing.assert_allclose(shifted[0], signals[0] + 100.0)
    assert value.shape == (1,)


@pytest.mark.slow
def test_a_two_layer_sbn_trains_evaluates_samples_and_exports(tmp_path):
    from click.testing import CliRunner
    from tfvae_cli.main import cli

    from tfvae import export

    out = tmp_path / "sbn"
    runner = CliRunner()
    result = runner.invoke(cli, ["train", "--model", "sbn", "--stochastic-layers", "2",
                                 "--latent-dim", "10", "--hidden", "", "--estimator", "disarm",
                                 "--epochs", "1", "--iwae-k", "5", "--out", str(out)])
    assert result.exit_code == 0, (result.output, result.exception)
    run = tfvae.load_run(out)
    assert isinstance(run.model, tfvae.StackedBernoulliVAE) and np.isfinite(
        run.evaluation["log_likelihood"])
    manifest = export.export_run(out, tmp_path / "export", precisions="float32")
    assert [n["name"] for n in manifest["noise"]] == ["u1", "u2"]  # one uniform tensor per layer
    d = export.ExportDir(tmp_path / "export")
    images = d.sample(6, seed=3)
    np.testing.assert_allclose(images, run.model.sample(6, seed=3), atol=1e-5)
    np.testing.assert_allclose(d.sample(6, seed=3, backend="savedmodel"), images, atol=1e-5)
    result = runner.invoke(cli, ["diagnose", str(out), "--draws", "3", "--n-examples", "16"])
    assert result.exit_code == 0 and "disarm" in result.output, result.output
    # Trained with disarm, the run never started a running baseline: ema's line says what
    # it takes instead of showing a baseline of 0 that it does not use.
    assert "no running baseline: ema takes the batch's leave-one-out mean" in result.output
