"""BernoulliVAE: structure, training, save/load of the estimator state, evaluation, CLI."""

import json

import numpy as np
import pytest
from conftest import SMALL

import tfvae
from tfvae._keras import keras, tf
from tfvae.estimators import ESTIMATORS


def _model(**kwargs):
    """A seeded small model with 8 latent bits (fixed prior, ema estimator unless told)."""
    keras.utils.set_random_seed(0)
    return tfvae.BernoulliVAE(**{"input_dim": 784, **SMALL, "latent_dim": 8, **kwargs})


@pytest.fixture(scope="module")
def trained(binary_images):
    """An ema model after a few dozen Adam steps (and its loss before training)."""
    model = _model()
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    before = model.evaluate(binary_images, batch_size=256, verbose=0, return_dict=True)
    history = model.fit(binary_images, epochs=8, batch_size=64, verbose=0)  # 32 steps
    return model, before, history


def test_structure_and_config():
    model = _model(estimator="rloo", num_samples=3, learn_prior=True)
    x = tf.constant((np.random.default_rng(0).random((5, 784)) < 0.5).astype(np.float32))
    assert model.model_type == "bernoulli"
    assert model.prior_logits().shape == (8,) and model.prior_logits().dtype == tf.float32
    assert "prior_logits" in [w.name.split(":")[0] for w in model.trainable_weights]
    assert model.posterior_mean(x).shape == (5, 8)
    code = model.posterior_code(x).numpy()
    assert code.dtype == np.float32 and set(np.unique(code)) <= {0.0, 1.0}
    np.testing.assert_array_equal(code, (model.posterior_mean(x).numpy() > 0.5).astype(np.float32))
    terms = model.elbo_terms(x, seed=tf.constant([0, 0]))
    assert set(np.unique(terms["z"].numpy())) <= {0.0, 1.0}
    np.testing.assert_allclose(model.kl_per_dim(x).numpy().sum(-1), terms["kl"], rtol=1e-5)
    assert model.latent_quantiles() is None
    config = model.get_config()
    for key in ("estimator", "baseline_decay", "num_samples", "learn_prior", "nvil_hidden",
                "nvil_normalize", "temperature"):
        assert key in config
    json.dumps(config)
    clone = tfvae.BernoulliVAE.from_config(config)
    assert clone.get_config() == config
    assert clone.count_params() == model.count_params()
    fixed = _model()
    np.testing.assert_array_equal(fixed.prior_logits(), np.zeros(8, np.float32))
    assert all("prior_logits" not in w.name for w in fixed.weights)
    assert fixed.baseline_net is None and _model(estimator="nvil").baseline_net is not None


def test_invalid_options():
    with pytest.raises(ValueError, match="choose one of"):
        _model(estimator="nope")
    with pytest.raises(ValueError, match="num_samples >= 2"):
        _model(estimator="rloo", num_samples=1)
    with pytest.raises(ValueError, match="baseline_decay"):
        _model(baseline_decay=1.0)
    for bad in (0.0, -1.0, "warm", True):
        with pytest.raises(ValueError, match="temperature must be a positive number"):
            _model(estimator="gumbel", temperature=bad)


def test_config_kwargs_and_build_model():
    from tfvae.config import Config
    from tfvae.runs.store import build_model

    config = Config(model="bernoulli", estimator="disarm", baseline_decay=0.8, num_samples=3,
                    learn_prior=True, latent_dim=4, hidden=(16,), input_dim=784,
                    image_shape=(28, 28), likelihood="bernoulli")
    model = build_model(config)
    assert isinstance(model, tfvae.BernoulliVAE)
    assert (model.estimator, model.baseline_decay, model.num_samples, model.learn_prior) == (
        "disarm", 0.8, 3, True)


@pytest.mark.parametrize("estimator", list(ESTIMATORS))
def test_train_step_moves_weights(estimator, binary_images):
    model = _model(estimator=estimator, num_samples=2)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), run_eagerly=True)  # no tracing: fast
    before = [w.numpy().copy() for w in model.trainable_weights]
    logs = model.train_on_batch(binary_images[:32], return_dict=True)
    for name in ("loss", "elbo", "reconstruction", "kl", "baseline", "signal_mean",
                 "signal_std"):
        assert np.isfinite(logs[name]), (name, logs)
    np.testing.assert_allclose(logs["elbo"], -(logs["reconstruction"] + logs["kl"]), rtol=1e-5)
    weights = model.trainable_weights
    moved = [not np.allclose(b, w.numpy()) for b, w in zip(before, weights, strict=True)]
    assert all(moved), [w.name for w, m in zip(weights, moved, strict=True) if not m]


def test_training_lowers_loss(trained):
    model, _, history = trained
    losses = history.history["loss"]
    assert losses[-1] < losses[0] - 20.0, losses
    assert float(model.baseline_initialized.numpy()) == 1.0
    # The baseline tracks log p(x|z) = -reconstruction, lagging behind as the loss falls.
    rec = history.history["reconstruction"]
    assert -rec[0] - 20.0 <= float(model.baseline_mean.numpy()) <= -rec[-1] + 20.0, rec


def test_evaluate_returns_named_metrics(trained, binary_images):
    model, before, _ = trained
    after = model.evaluate(binary_images, batch_size=256, verbose=0, return_dict=True)
    assert set(after) == {"loss", "elbo", "reconstruction", "kl"}  # no estimator at test time
    assert after["loss"] < before["loss"] - 50.0, (before, after)


def test_save_load_keeps_baseline_state(tmp_path, binary_images):
    model = _model(estimator="nvil")
    model.compile(optimizer=keras.optimizers.Adam(1e-3), run_eagerly=True)  # 4 steps: no trace
    model.fit(binary_images[:128], epochs=1, batch_size=32, verbose=0)
    assert float(model.baseline_mean.numpy()) != 0.0 and float(model.baseline_var.numpy()) > 0
    path = tmp_path / "model.weights.h5"
    model.save_weights(str(path))
    clone = tfvae.BernoulliVAE.from_config(model.get_config())
    assert float(clone.baseline_initialized.numpy()) == 0.0
    clone.load_weights(str(path))
    for name in ("baseline_mean", "baseline_var", "baseline_initialized"):
        assert float(getattr(clone, name).numpy()) == float(getattr(model, name).numpy()), name
    x = binary_images[:16]
    np.testing.assert_allclose(clone.posterior_mean(x), model.posterior_mean(x), rtol=1e-6)
    np.testing.assert_allclose(clone.baseline_net(x), model.baseline_net(x), rtol=1e-6)
    np.testing.assert_allclose(clone.sample(4, seed=1), model.sample(4, seed=1), rtol=1e-6)
    np.testing.assert_allclose(clone.reconstruct(x), model.reconstruct(x), rtol=1e-6)


def test_iwae_estimate_tightens(trained, binary_images):
    model, _, _ = trained
    x = binary_images[:64]
    one = tfvae.evaluate(model, x, k=1, seed=0)
    many = tfvae.evaluate(model, x, k=200, seed=0)
    assert np.isfinite(many["log_likelihood"]) and np.isfinite(many["elbo"])
    assert many["log_likelihood"] >= many["elbo"] - 1.0, many
    assert many["log_likelihood"] >= one["log_likelihood"] - 0.5, (one, many)
    assert len(many["kl_per_dim"]) == 8


@pytest.mark.slow
def test_a_run_keeps_its_baseline_and_the_cli_diagnoses_it(trained_run, tiny_run):
    run = tfvae.load_run(trained_run("bernoulli"))
    assert np.isfinite(run.evaluation["log_likelihood"])
    assert isinstance(run.model, tfvae.BernoulliVAE)
    # The checkpoint kept the trained baseline.
    assert float(run.model.baseline_initialized.numpy()) == 1.0

    from click.testing import CliRunner
    from tfvae_cli.main import cli

    runner = CliRunner()
    result = runner.invoke(cli, ["diagnose", str(run.path), "--draws", "3",
                                 "--n-examples", "32", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)  # stderr (warnings) kept apart by click >= 8.2
    assert {"reinforce", "ema", "rloo", "disarm", "vimco", "arm", "gumbel",
            "straight-through"} <= set(report["estimators"])
    assert "nvil" not in report["estimators"]  # a run trained with ema has no c(x)
    assert report["estimators"]["gumbel"]["biased"] and not report["estimators"]["arm"]["biased"]
    assert report["trained_with"] == "ema" and report["baseline_started"] is True
    result = runner.invoke(cli, ["diagnose", str(run.path), "--draws", "2",
                                 "--n-examples", "16"])
    assert result.exit_code == 0, result.output
    assert "reinforce" in result.output and "variance" in result.output
    assert "elbo (biased)" in result.output and "running baseline" in result.output
    rows = {line.split()[0]: line.split() for line in result.output.splitlines()[2:]}
    samples = {name: str(r["num_samples"]) for name, r in report["estimators"].items()}
    assert {name: rows[name][1] for name in samples} == samples and samples["reinforce"] == "1"
    assert int(samples["rloo"]) > 1
    result = runner.invoke(cli, ["diagnose", str(tiny_run)])
    assert result.exit_code == 1, result.output
    assert "Gaussian VAE run" in result.output and "sbn" in result.output, result.output
