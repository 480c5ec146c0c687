"""Tests of tfvae.gmm.GMMSampler: fit, sample, score, BIC, persistence without pickle."""

from __future__ import annotations

import json
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest

from tfvae.errors import ConfigError, RunDirError, TfvaeError
from tfvae.gmm import JSON_NAME, NPZ_NAME, GMMSampler

CENTRES = np.array([[0.0, 0.0], [6.0, 6.0], [-6.0, 6.0]])


def clusters(n_per: int = 150, seed: int = 0, scale: float = 0.4) -> np.ndarray:
    """Three well-separated 2-D clusters, ``[3 * n_per, 2]``."""
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(c, scale, (n_per, 2)) for c in CENTRES])


@pytest.fixture(scope="module")
def fitted():
    return GMMSampler(n_components=3, seed=0).fit(clusters())


# --------------------------------------------------------------------------- fit and sample


@pytest.mark.parametrize("covariance", ["full", "tied", "diag", "spherical"])
def test_fit_shapes_and_parameters(covariance):
    from sklearn.mixture import GaussianMixture

    z = clusters()
    sampler = GMMSampler(n_components=3, covariance_type=covariance, seed=0).fit(z)
    assert sampler.weights.shape == (3,)
    assert sampler.means.shape == (3, 2)
    assert sampler.cholesky.shape == (3, 2, 2)
    assert np.isclose(sampler.weights.sum(), 1.0)
    assert np.array_equal(sampler.cholesky, np.tril(sampler.cholesky))
    assert (np.diagonal(sampler.cholesky, axis1=1, axis2=2) > 0).all()
    # The stored factors reproduce scikit-learn's density for every covariance type.
    reference = GaussianMixture(3, covariance_type=covariance, random_state=0).fit(z)
    np.testing.assert_allclose(sampler.log_prob(z), reference.score_samples(z), atol=1e-8)


def test_sample_shapes_and_reproducibility(fitted):
    z = fitted.sample(500, seed=1)
    assert z.shape == (500, 2) and z.dtype == np.float32
    assert np.array_equal(z, fitted.sample(500, seed=1))
    assert not np.array_equal(z, fitted.sample(500, seed=2))
    # The exported sampler's noise: u picks the component, eps the point.
    rng = np.random.default_rng(1)
    u, eps = rng.random(500).astype(np.float32), rng.standard_normal((500, 2))
    k = np.searchsorted(np.cumsum(fitted.weights)[:-1], u, side="right")
    expected = fitted.means[k] + np.einsum("nij,nj->ni", fitted.cholesky[k], eps.astype(np.float32))
    np.testing.assert_allclose(z, expected, rtol=1e-5, atol=1e-5)
    # Samples land near the data's centres, in proportion to the weights.
    nearest = np.argmin(((z[:, None, :] - CENTRES[None]) ** 2).sum(-1), axis=1)
    np.testing.assert_allclose(np.bincount(nearest, minlength=3) / 500, 1 / 3, atol=0.08)


def test_sample_component(fitted):
    k = int(np.argmin(np.abs(fitted.means - CENTRES[1]).sum(axis=1)))
    z = fitted.sample_component(k, 400, seed=0)
    assert z.shape == (400, 2)
    np.testing.assert_allclose(z.mean(axis=0), CENTRES[1], atol=0.15)
    assert np.array_equal(z, fitted.sample_component(k, 400, seed=0))
    with pytest.raises(ConfigError, match="component"):
        fitted.sample_component(3, 10)
    with pytest.raises(ConfigError, match="n must be"):
        fitted.sample(0)


def test_predict_and_moments(fitted):
    labels = fitted.predict(clusters())
    assert labels.shape == (450,)
    assert len(set(labels[:150])) == 1 and len(set(labels)) == 3
    mean, cov = fitted.moments()
    z = clusters()
    np.testing.assert_allclose(mean, z.mean(axis=0), atol=1e-6)
    np.testing.assert_allclose(cov, np.cov(z.T, bias=True), rtol=1e-3)


def test_tf_distribution_matches_numpy(fitted):
    z = clusters()[::10].astype(np.float32)
    dist = fitted.distribution()
    assert type(dist).__name__ == "MixtureSameFamily"
    assert dist.event_shape == [2]
    np.testing.assert_allclose(dist.log_prob(z).numpy(), fitted.log_prob(z), rtol=1e-5, atol=1e-4)


def test_auto_picks_the_number_of_clusters_by_bic():
    sampler = GMMSampler(n_components="auto", max_components=6, seed=0).fit(clusters())
    assert sampler.num_components == 3
    assert sorted(sampler.bic) == [1, 2, 3, 4, 5, 6]
    assert min(sampler.bic, key=sampler.bic.get) == 3


def test_unfitted_sampler_says_to_fit():
    with pytest.raises(TfvaeError, match="fit"):
        GMMSampler().sample(3)
    with pytest.raises(TfvaeError, match="fit"):
        GMMSampler().save("unused")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_components": 0}, "n_components"),
        ({"n_components": "many"}, "n_components"),
        ({"covariance_type": "banded"}, "covariance_type"),
        ({"reg_covar": -1.0}, "reg_covar"),
    ],
)
def test_invalid_options(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        GMMSampler(**kwargs)


# --------------------------------------------------------------------------- awkward codes


def test_more_components_than_distinct_codes_is_capped_with_a_warning():
    z = np.repeat(np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 0.0]]), 10, axis=0)
    with pytest.warns(UserWarning, match="3 distinct"):
        sampler = GMMSampler(n_components=10).fit(z)
    assert sampler.num_components == 3
    assert np.isfinite(sampler.sample(5, seed=0)).all()


def test_collapsed_latent_warns_and_stays_finite():
    z = np.zeros((40, 3))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sampler = GMMSampler(n_components=5).fit(z)
    messages = " ".join(str(w.message) for w in caught)
    assert "zero variance" in messages and "distinct" in messages
    assert sampler.num_components == 1
    assert np.isfinite(sampler.log_prob(z)).all()
    # One collapsed dimension among varying ones.
    z = np.c_[np.random.default_rng(0).normal(size=(60, 2)), np.full(60, 3.0)]
    with pytest.warns(UserWarning, match=r"dimensions \[2\]"):
        sampler = GMMSampler(n_components=2).fit(z)
    assert np.isfinite(sampler.log_prob(z)).all()


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_codes_are_refused(bad):
    z = clusters()
    z[5, 1] = bad
    with pytest.raises(TfvaeError, match="not finite"):
        GMMSampler(n_components=3).fit(z)


def test_wrong_shape_codes_are_refused():
    with pytest.raises(TfvaeError, match=r"\[n, d\]"):
        GMMSampler().fit(np.zeros(10))
    with pytest.raises(TfvaeError, match=r"\[n, d\]"):
        GMMSampler().fit(np.zeros((0, 2)))


# --------------------------------------------------------------------------- persistence


def test_save_load_round_trip(fitted, tmp_path):
    npz, meta = fitted.save(tmp_path)
    assert npz == tmp_path / NPZ_NAME and meta == tmp_path / JSON_NAME
    assert json.loads(meta.read_text())["n_components"] == 3
    loaded = GMMSampler.load(tmp_path)
    assert np.array_equal(loaded.sample(200, seed=5), fitted.sample(200, seed=5))
    assert np.array_equal(
        loaded.sample_component(1, 20, seed=0), fitted.sample_component(1, 20, seed=0)
    )
    np.testing.assert_array_equal(loaded.log_prob(clusters()), fitted.log_prob(clusters()))
    assert loaded.covariance_type == fitted.covariance_type
    assert not list(tmp_path.glob("*.tmp"))


def test_auto_round_trip_keeps_bic(tmp_path):
    sampler = GMMSampler(n_components="auto", max_components=4, covariance_type="diag")
    sampler.fit(clusters())
    sampler.save(tmp_path)
    loaded = GMMSampler.load(tmp_path)
    assert loaded.bic == sampler.bic and loaded.n_components == "auto"
    assert np.array_equal(loaded.sample(50, seed=0), sampler.sample(50, seed=0))


@pytest.mark.parametrize("name", [NPZ_NAME, JSON_NAME])
def test_missing_file_names_the_file(fitted, tmp_path, name):
    fitted.save(tmp_path)
    (tmp_path / name).unlink()
    with pytest.raises(RunDirError, match=name.replace(".", r"\.")):
        GMMSampler.load(tmp_path)


@pytest.mark.parametrize(
    "name, content",
    [
        (NPZ_NAME, b"this is not a zip archive"),
        (NPZ_NAME, b""),
        (JSON_NAME, b"{not json"),
        (JSON_NAME, b'{"format": "something else"}'),
        (JSON_NAME, b'{"format": "tfvae.gmm", "version": 1}'),
    ],
)
def test_corrupt_file_names_the_file(fitted, tmp_path, name, content):
    fitted.save(tmp_path)
    (tmp_path / name).write_bytes(content)
    with pytest.raises(RunDirError, match=name.replace(".", r"\.")):
        GMMSampler.load(tmp_path)


def test_inconsistent_arrays_are_refused(fitted, tmp_path):
    fitted.save(tmp_path)
    np.savez(tmp_path / NPZ_NAME, weights=fitted.weights[:2], means=fitted.means,
             cholesky=fitted.cholesky)
    with pytest.raises(RunDirError, match="shapes"):
        GMMSampler.load(tmp_path)
    upper = np.transpose(fitted.cholesky, (0, 2, 1)).copy()
    np.savez(tmp_path / NPZ_NAME, weights=fitted.weights, means=fitted.means, cholesky=upper)
    with pytest.raises(RunDirError, match="lower triangular"):
        GMMSampler.load(tmp_path)
    np.save(tmp_path / "single.npy", fitted.means)
    (tmp_path / "single.npy").replace(tmp_path / NPZ_NAME)
    with pytest.raises(RunDirError, match="not an .npz"):
        GMMSampler.load(tmp_path)


class _Planted:
    """Unpickling this creates a marker file: proof that pickled code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_planted_pickle_is_refused_and_not_executed(fitted, tmp_path):
    fitted.save(tmp_path)
    marker = tmp_path / "pwned"
    (tmp_path / NPZ_NAME).write_bytes(pickle.dumps(_Planted(marker)))
    with pytest.raises(RunDirError, match=NPZ_NAME):
        GMMSampler.load(tmp_path)
    assert not marker.exists()
    # An .npz whose array is a pickled object array is refused as well.
    objects = np.empty(3, dtype=object)
    objects[:] = [_Planted(marker)] * 3
    np.savez(tmp_path / NPZ_NAME, weights=objects, means=fitted.means, cholesky=fitted.cholesky)
    with pytest.raises(RunDirError, match=NPZ_NAME):
        GMMSampler.load(tmp_path)
    assert not marker.exists()
