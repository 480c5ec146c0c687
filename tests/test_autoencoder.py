"""Tests of tfvae.Autoencoder (ae-gmm): training, mixture, likelihood estimate, runs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tfvae._keras import keras, tf
from tfvae.config import Config
from tfvae.errors import RunDirError, TfvaeError
from tfvae.evaluation import evaluate
from tfvae.gmm import GMMSampler
from tfvae.models.autoencoder import Autoencoder
from tfvae.runs.families import FAMILIES, PROPOSAL_FILE
from tfvae.runtime import stateless_seed

FAMILY = FAMILIES["ae-gmm"]


def save_extras(model, folder):
    FAMILY.save_extras(model, folder)


def load_extras(model, folder):
    FAMILY.load_extras(model, folder)

D = 64  # 8x8 images
CLUSTERS = 4


def clustered_binary(n: int, seed: int = 0, flip: float = 0.05):
    """Binary 8x8 images: noisy copies of 4 random prototypes, and their labels."""
    rng = np.random.default_rng(seed)
    prototypes = (np.random.default_rng(123).random((CLUSTERS, D)) > 0.5).astype(np.float32)
    labels = rng.integers(0, CLUSTERS, n)
    x = prototypes[labels]
    x = np.where(rng.random(x.shape) < flip, 1.0 - x, x).astype(np.float32)
    return x, labels


def make_model(**kwargs):
    keras.utils.set_random_seed(0)
    options = dict(input_dim=D, latent_dim=2, hidden=(32,), components=CLUSTERS)
    options.update(kwargs)
    return Autoencoder(**options)


@pytest.fixture(scope="module")
def data():
    x, labels = clustered_binary(600)
    return x[:500], x[500:], labels[500:]


@pytest.fixture(scope="module")
def trained(data):
    """A model trained a few epochs, with its mixture and proposal fitted."""
    x_train, x_test, _ = data
    model = make_model()
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    history = model.fit(x_train, epochs=6, batch_size=50, verbose=0,
                        validation_data=(x_test,)).history
    model.post_fit(x_train, seed=0)
    return model, history


# --------------------------------------------------------------------------- model basics


def test_registered_and_config_round_trip():
    assert keras.saving.get_registered_object("tfvae>Autoencoder") is Autoencoder
    model = make_model(components="auto", covariance="diag")
    config = model.get_config()
    assert config["components"] == "auto" and config["covariance"] == "diag"
    json.dumps(config)
    clone = Autoencoder.from_config(config)
    assert clone.components == "auto" and clone.latent_dim == 2
    assert Autoencoder.model_type == "ae-gmm"


def test_the_family_builds_it_with_components_and_covariance():
    config = Config(model="ae-gmm", components=7, covariance="tied", input_dim=D,
                    image_shape=(8, 8), latent_dim=3, likelihood="bernoulli")
    model = FAMILY.build(config)
    assert isinstance(model, Autoencoder)
    assert (model.components, model.covariance, model.latent_dim) == (7, "tied", 3)


@pytest.mark.parametrize("kwargs", [{"components": 0}, {"covariance": "banded"}])
def test_invalid_mixture_options(kwargs):
    with pytest.raises(TfvaeError):
        make_model(**kwargs)


def test_code_is_deterministic():
    model = make_model()
    x, _ = clustered_binary(8)
    z = model.code(x)
    assert z.shape == (8, 2)
    np.testing.assert_array_equal(z.numpy(), model.code(x).numpy())
    np.testing.assert_array_equal(model.posterior_code(x).numpy(), z.numpy())
    assert model.reconstruct(x).shape == (8, D)
    assert model(x).shape == (8, D)


def test_trains_with_fit_and_reports_only_what_an_autoencoder_has(trained):
    _, history = trained
    assert history["loss"][-1] < 0.8 * history["loss"][0]
    assert history["val_loss"][-1] < history["val_loss"][0]
    # No prior in training: no KL and no ELBO in the logs.
    assert set(history) == {"loss", "reconstruction", "val_loss", "val_reconstruction"}
    np.testing.assert_allclose(history["loss"], history["reconstruction"], rtol=1e-5)


@pytest.mark.parametrize("likelihood, arch", [("gaussian", "mlp"), ("bernoulli", "conv")])
def test_other_likelihood_and_arch_train_and_evaluate(likelihood, arch):
    model = make_model(likelihood=likelihood, arch=arch, min_scale=0.05)
    x, _ = clustered_binary(64)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), run_eagerly=True)  # 2 steps: no trace
    before = [w.numpy().copy() for w in model.trainable_weights]
    history = model.fit(x, epochs=1, batch_size=32, verbose=0).history
    assert np.isfinite(history["loss"]).all()
    assert any(not np.array_equal(a, w.numpy()) for a, w in zip(before, model.trainable_weights,
                                                                 strict=True))
    model.post_fit(x, seed=0)
    result = evaluate(model, x[:16], k=4)
    assert np.isfinite(result["log_likelihood"])


# --------------------------------------------------------------------------- before post_fit


def test_hooks_before_post_fit_say_to_fit_the_mixture(data):
    model = make_model()
    x = data[1][:4]
    for call in (
        lambda: model.sample(4, seed=0),
        lambda: model.sample_component(0, 4, seed=0),
        lambda: model.log_weights(x, 3),
        lambda: model.elbo_terms(x),
        lambda: model.kl_per_dim(x),
        lambda: model.prior(),
        lambda: save_extras(model, "unused"),
    ):
        with pytest.raises(TfvaeError, match="post_fit"):
            call()
    # Inside evaluate's tf.functions the error keeps its type.
    with pytest.raises(TfvaeError, match="post_fit"):
        evaluate(model, x, k=2)


def test_non_finite_codes_are_a_clear_error():
    model = make_model()
    x, _ = clustered_binary(20)
    x[3] = np.nan
    with pytest.raises(TfvaeError, match="not finite"):
        model.post_fit(x)


# --------------------------------------------------------------------------- after post_fit


def test_evaluation_hooks_shapes(trained, data):
    model, _ = trained
    x = tf.constant(data[1][:5])
    assert model.fitted and model.mixture.num_components == CLUSTERS
    assert model.proposal_scale.shape == (2,) and (model.proposal_scale > 0).all()
    assert model.log_weights(x, 7, seed=stateless_seed(0)).shape == (7, 5)
    terms = model.elbo_terms(x, seed=stateless_seed(1))
    assert terms["reconstruction"].shape == (5,) and terms["kl"].shape == (5,)
    assert np.all(terms["reconstruction"].numpy() > 0)
    assert model.kl_per_dim(x).shape == (5, 2)
    np.testing.assert_array_equal(model.posterior_mean(x).numpy(), model.code(x).numpy())
    assert model.encode(x).event_shape == [2]


def test_sampling(trained):
    model, _ = trained
    images = model.sample(6, seed=0)
    assert images.shape == (6, D)
    assert ((images >= 0) & (images <= 1)).all()
    np.testing.assert_array_equal(images, model.sample(6, seed=0))
    assert model.sample_component(1, 3, seed=0).shape == (3, D)


def test_evaluate_reports_a_finite_log_likelihood(trained, data):
    model, _ = trained
    result = evaluate(model, data[1], k=50, seed=0)
    assert np.isfinite(result["log_likelihood"]) and result["k"] == 50
    assert np.isfinite(result["elbo"]) and result["reconstruction"] > 0
    assert len(result["kl_per_dim"]) == 2
    # The k-sample bound is at least the single-sample ELBO (up to noise).
    assert result["log_likelihood"] > result["elbo"] - 0.5
    # Same seed, same figures.
    assert evaluate(model, data[1], k=50, seed=0) == result


def test_likelihood_is_higher_when_the_mixture_fits_better(trained, data):
    """Fitted mixture > 1 component > a mixture far from the codes (same proposal)."""
    model, _ = trained
    x_train, x_test, _ = data
    fitted = model.mixture
    codes = model.encode_numpy(x_train)
    try:
        ll = {"fitted": evaluate(model, x_test, k=50)["log_likelihood"]}
        model.mixture = GMMSampler(n_components=1).fit(codes)
        ll["one"] = evaluate(model, x_test, k=50)["log_likelihood"]
        model.mixture = GMMSampler(n_components=CLUSTERS).fit(codes + 5.0 * codes.std(0))
        ll["shifted"] = evaluate(model, x_test, k=50)["log_likelihood"]
    finally:
        model.mixture = fitted
    assert ll["fitted"] > ll["one"] + 0.3, ll
    assert ll["one"] > ll["shifted"] + 1.0, ll


def test_proposal_is_fitted_to_the_best_multiplier(trained):
    model, _ = trained
    info = model.proposal_info
    scores = {float(c): v for c, v in info["scores"].items()}
    assert info["multiplier"] == max(scores, key=scores.get)
    assert 1e-3 < info["multiplier"] < 1.0  # an interior optimum of the grid


def test_figures(trained, data, tmp_path):
    model, _ = trained
    paths = FAMILY.figures(model, tmp_path, data[1])
    names = sorted(p.name for p in paths)
    assert names == ["clusters.png", "component_samples.png"]
    assert all(p.stat().st_size > 1000 for p in paths)


# --------------------------------------------------------------------------- persistence


def test_extras_round_trip(trained, data, tmp_path):
    model, _ = trained
    save_extras(model, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"gmm.npz", "gmm.json", PROPOSAL_FILE}
    clone = make_model()
    clone.set_weights(model.get_weights())
    load_extras(clone, tmp_path)
    np.testing.assert_array_equal(clone.proposal_scale, model.proposal_scale)
    np.testing.assert_array_equal(clone.sample(5, seed=3), model.sample(5, seed=3))
    assert clone.proposal_info == model.proposal_info
    x = data[1][:50]
    assert evaluate(clone, x, k=10) == evaluate(model, x, k=10)


def test_load_extras_without_files_is_an_error(tmp_path):
    model = make_model()
    with pytest.raises(RunDirError, match="gmm"):
        load_extras(model, tmp_path)
    assert not model.fitted
    with pytest.raises(TfvaeError, match="post_fit"):
        evaluate(model, np.zeros((2, 784), np.float32), k=2)


@pytest.mark.parametrize("name", ["gmm.npz", "gmm.json", PROPOSAL_FILE])
def test_load_extras_with_a_missing_file_names_it(trained, tmp_path, name):
    model, _ = trained
    save_extras(model, tmp_path)
    (tmp_path / name).unlink()
    with pytest.raises(RunDirError, match=name.replace(".", r"\.")):
        load_extras(make_model(), tmp_path)


def test_load_extras_with_a_corrupt_proposal(trained, tmp_path):
    model, _ = trained
    save_extras(model, tmp_path)
    (tmp_path / PROPOSAL_FILE).write_text(json.dumps({"scale": [1.0, -1.0]}))
    with pytest.raises(RunDirError, match="proposal.json"):
        load_extras(make_model(), tmp_path)
    (tmp_path / PROPOSAL_FILE).write_text("{")
    with pytest.raises(RunDirError, match="proposal.json"):
        load_extras(make_model(), tmp_path)
    save_extras(model, tmp_path)
    with pytest.raises(RunDirError, match="latent_dim"):
        load_extras(make_model(latent_dim=3), tmp_path)


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_a_run_holds_its_mixture_and_loads_with_it(trained_run):
    from tfvae.runs.store import load_run

    out = trained_run("ae-gmm")
    for name in ("gmm.npz", "gmm.json", PROPOSAL_FILE, "evaluation.json"):
        assert (out / name).is_file(), name
    run = load_run(out)
    evaluation = run.evaluation
    assert np.isfinite(evaluation["log_likelihood"]) and evaluation["k"] == run.config.iwae_k
    figures = {p.name for p in (out / "figures").iterdir()}
    assert {"clusters.png", "component_samples.png", "samples.png", "latent.png",
            "manifold.png"} <= figures
    assert run.model.fitted
    assert run.model.mixture.num_components == run.config.components == 10
    # The loaded model and mixture are those the run evaluated: the same figures again.
    from tfvae.runs.run_data import load_data

    _, splits = load_data(run.config)
    again = evaluate(run.model, splits.test, k=run.config.iwae_k, seed=run.config.seed)
    assert again["log_likelihood"] == pytest.approx(evaluation["log_likelihood"], abs=1e-3)
