"""relax (Grathwohl et al. 2018): unbiased against exact enumeration whatever its
learned control, the control's fit lowering the variance, and the control kept,
saved and resumed with its model.

The one-layer problem is :mod:`test_estimators`' (3 binary latents, 20 pixels,
linear networks: 8 codes to enumerate) with its tolerance ``|mean - exact| <=
5 * stderr + atol``; the layered form is checked by
``test_layered.py::test_layered_estimators_are_unbiased_for_every_parameter``
(its every weight, the controls' included, drawn at random).
"""

import numpy as np
import pytest
from test_estimators import EMPTY, PIXELS, SIGMAS, _exact_elbo, _exact_logit_grad, _kl, _model

import tfvae
from tfvae._keras import keras, tf
from tfvae.estimators import ESTIMATORS, Problem
from tfvae.estimators.relax import RelaxControl


@pytest.fixture(scope="module")
def example():
    return tf.constant((np.random.default_rng(3).random(PIXELS) < 0.5).astype(np.float32))


def _perturb(control, seed):
    """A control far from its start: a hot temperature, a scale off 1, a network
    whose output varies a lot with ``z``."""
    for i, v in enumerate(control.net.trainable_variables):
        v.assign(v + 0.7 * tf.random.stateless_normal(v.shape, [seed, i]))
    control.log_temperature.assign(np.log(0.7))
    control.scale.assign(0.4)


@pytest.mark.parametrize("perturbed", [False, True])
def test_unbiased_wrt_logits_whatever_the_control(example, perturbed):
    model = _model()
    control = RelaxControl(PIXELS, 3)
    if perturbed:
        _perturb(control, 4)
    draws = 10000
    a1 = model.encoder_logits(example[None])  # [1, 3]
    x = tf.tile(example[None], [draws, 1])
    with tf.GradientTape() as tape:
        a = tf.tile(a1, [draws, 1])  # every row an independent draw of the estimator
        tape.watch(a)
        problem = Problem(
            logits=a, log_likelihood=lambda z: model.log_likelihood(z, x),
            log_prior=lambda z: model.prior().log_prob(z), kl=_kl(model, a),
            kl_weight=tf.constant(1.0), seed=tf.constant([11, 7]),
            control=control.bind(x, lambda soft: model.log_likelihood(soft, x)))
        est = ESTIMATORS["relax"](problem, EMPTY)
    grads = tape.gradient(est.loss, a).numpy() * draws  # [draws, 3]
    exact = _exact_logit_grad(model, example, a1, "relax")
    mean = grads.mean(axis=0)
    stderr = grads.std(axis=0, ddof=1) / np.sqrt(draws)
    assert np.all(np.abs(mean - exact) <= SIGMAS * stderr + 1e-4), (mean, exact, stderr)
    # The loss reads as the negative single-sample ELBO (the surrogate terms are 0).
    np.testing.assert_allclose(est.loss, tf.reduce_mean(-est.log_likelihood + problem.kl),
                               rtol=1e-5)


def test_model_gradient_unbiased_for_encoder_decoder_and_prior(example):
    """Through the model's wiring, with a learned prior and a perturbed control."""
    model = _model(estimator="relax", learn_prior=True)
    model.prior_variables[0].assign([0.3, -0.5, 0.2])
    _perturb(model.control, 9)
    variables = (model.encoder.trainable_variables + model.decoder.trainable_variables
                 + model.prior_variables)
    x = tf.tile(example[None], [1000, 1])
    draws = []
    for seed in range(30):
        with tf.GradientTape() as tape:
            est, _ = model.estimate(x, seed=tf.constant([seed, 5]))
        draws.append(np.concatenate([g.numpy().ravel()
                                     for g in tape.gradient(est.loss, variables)]))
    draws = np.stack(draws)  # [30, params]; each row averages 1000 draws
    with tf.GradientTape() as tape:
        loss = -_exact_elbo(model, example, model.encoder_logits(example[None]))
    exact = np.concatenate([g.numpy().ravel() for g in tape.gradient(loss, variables)])
    mean = draws.mean(axis=0)
    stderr = draws.std(axis=0, ddof=1) / np.sqrt(len(draws))
    atol = 1e-3 * np.abs(exact).max()
    assert np.all(np.abs(mean - exact) <= SIGMAS * stderr + atol), np.abs(mean - exact).max()


@pytest.mark.slow
def test_the_control_step_lowers_the_variance():
    """With the model held still (SGD at rate 0), only the control moves: its steps
    lower the variance of the encoder's gradient (``tfvae diagnose``'s figure)."""
    from tfvae.diagnostics import gradient_variance

    model = _model(estimator="relax")
    x = tf.constant((np.random.default_rng(5).random((32, PIXELS)) < 0.5).astype(np.float32))
    fixed = [v.numpy().copy() for v in model.inference_variables]

    def variance():
        return gradient_variance(model, x, ("relax",), num_draws=50, seed=1)["relax"]["variance"]

    before = variance()
    model.compile(optimizer=keras.optimizers.SGD(0.0), jit_compile=False, steps_per_execution=1,
                  control_optimizer=keras.optimizers.Adam(2e-2))
    model.fit(tf.data.Dataset.from_tensors(x).repeat(45), verbose=0)
    assert int(model.control_optimizer.iterations.numpy()) == 45
    for v, w in zip(model.inference_variables, fixed, strict=True):
        np.testing.assert_array_equal(v.numpy(), w)
    after = variance()
    assert after < 0.75 * before, (before, after)


def test_the_control_is_the_models_saved_with_it_and_needed(tmp_path, binary_images):
    from tfvae.diagnostics import available_estimators

    model = tfvae.BernoulliVAE(input_dim=784, latent_dim=4, hidden=(16,), estimator="relax",
                               control_hidden=8)
    assert model.get_config()["control_hidden"] == 8
    assert sorted(v.shape.num_elements() for v in model.control_variables) == [
        1, 1, 1, 8, 8, 788 * 8]  # scale, log-temperature, r_phi([x, z]) with 8 hidden units
    np.testing.assert_allclose(float(model.control.temperature), 0.1, rtol=1e-6)
    assert "relax" in available_estimators(model) and "nvil" not in available_estimators(model)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), run_eagerly=True)
    model.train_on_batch(binary_images[:32])
    # The default control optimizer: Adam at the model's rate, beta_1 = 0.999.
    assert model.control_optimizer.beta_1 == 0.999
    np.testing.assert_allclose(float(model.control_optimizer.learning_rate), 1e-3)
    path = tmp_path / "model.weights.h5"
    model.save_weights(str(path))
    clone = tfvae.BernoulliVAE.from_config(model.get_config())
    clone.load_weights(str(path))
    for got, want in zip(clone.control_variables, model.control_variables, strict=True):
        np.testing.assert_array_equal(got.numpy(), want.numpy())
    assert float(model.control.log_temperature) != np.log(0.1)  # the step moved it

    other = tfvae.BernoulliVAE(input_dim=784, latent_dim=4, hidden=(16,), estimator="ema")
    assert other.control is None and "relax" not in available_estimators(other)
    with pytest.raises(tfvae.ConfigError, match="relax needs .*estimator='relax'"):
        other.estimate(binary_images[:4], estimator="relax")


def test_a_stacked_sbn_has_a_control_per_layer_and_fits_each(binary_images):
    model = tfvae.StackedBernoulliVAE(input_dim=784, latent_dim=4, stochastic_layers=2,
                                      hidden=(), estimator="relax", control_hidden=8)
    assert len(model.controls) == 2
    model.compile(optimizer=keras.optimizers.Adam(1e-3), run_eagerly=True)
    before = [[v.numpy() for v in c.trainable_variables] for c in model.controls]
    logs = model.train_on_batch(binary_images[:32], return_dict=True)
    assert np.isfinite(logs["loss"])
    assert np.isfinite(tfvae.evaluate(model, binary_images[:32], k=2)["log_likelihood"])
    for control, old in zip(model.controls, before, strict=True):
        assert any(not np.array_equal(v.numpy(), o)
                   for v, o in zip(control.trainable_variables, old, strict=True))


@pytest.mark.slow
def test_relax_trains_resumes_and_is_diagnosed_from_the_cli_and_python(tmp_path, digits_npz):
    from click.testing import CliRunner
    from tfvae_cli.main import cli

    from tfvae import runs, training
    from tfvae.runs import record

    runner = CliRunner()
    out = tmp_path / "bernoulli"
    small = ["--latent-dim", "8", "--hidden", "32", "--iwae-k", "5", "--data-dir", str(digits_npz)]
    result = runner.invoke(cli, ["train", "--model", "bernoulli", "--estimator", "relax",
                                 "--epochs", "1", "--out", str(out), *small])
    assert result.exit_code == 0, (result.output, result.exception)
    result = runner.invoke(cli, ["train", "--resume", str(out), "--epochs", "2"])
    assert result.exit_code == 0, (result.output, result.exception)
    run = tfvae.load_run(out)
    assert [h["epoch"] for h in run.history] == [1, 2]
    assert np.isfinite(run.evaluation["log_likelihood"])
    # The control and its optimizer's state came back at the resume: two epochs of steps.
    config = runs.load_config(out)
    model = runs.build_model(config)
    model.compile(optimizer=tfvae.keras.optimizers.Adam(config.lr))
    model.build_optimizers()
    training._restore_state(model, out / "checkpoints" / record.read(out).prefix, out)
    assert int(model.control_optimizer.iterations.numpy()) == int(
        model.optimizer.iterations.numpy()) > 0
    np.testing.assert_array_equal(model.control.scale.numpy(), run.model.control.scale.numpy())
    result = runner.invoke(cli, ["diagnose", str(out), "--draws", "3", "--n-examples", "16"])
    assert result.exit_code == 0 and "relax" in result.output, result.output
    # The SBN's relax from the command line: docs/estimators.md runs it (tests/test_readme.py).


@pytest.mark.slow
def test_overflowing_float16_steps_leave_the_control_finite(binary_images):
    """Under mixed_float16 the first steps overflow while the loss scale settles; the
    control must not take their non-finite gradients (it would poison every later step)."""
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        keras.utils.set_random_seed(0)
        model = tfvae.BernoulliVAE(input_dim=784, latent_dim=2, hidden=(32,), estimator="relax")
        model.compile(jit_compile=False)
        history = model.fit(binary_images, epochs=2, batch_size=32, verbose=0)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert float(model.optimizer.loss_scale) < 2.0 ** 15  # some steps did overflow
    assert np.isfinite(history.history["loss"]).all(), history.history["loss"]
    assert all(np.isfinite(v.numpy()).all() for v in model.control_variables)
    assert int(model.control_optimizer.iterations.numpy()) == 16
