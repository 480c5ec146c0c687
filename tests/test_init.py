"""``--init`` / ``--head-init``: how the networks' weights start, and that the choice is kept."""

from __future__ import annotations

import math

import numpy as np
import pytest

import tfvae
from tfvae import networks
from tfvae._keras import keras
from tfvae.config import Config
from tfvae.errors import ConfigError


def _layers_with_kernels(net):
    return [layer for layer in net.layers if getattr(layer, "kernel", None) is not None]


def _fan_in(layer) -> int:
    # Keras' count: every kernel axis but the last (a transposed convolution's
    # kernel is (k, k, out, in), so its fan-in counts output channels, as PyTorch's).
    return math.prod(layer.kernel.shape[:-1])


def _largest(weight) -> float:
    return float(np.abs(weight.numpy()).max())


def test_fan_in_starts_kernels_and_biases_within_one_over_sqrt_fan_in():
    keras.utils.set_random_seed(0)
    model = tfvae.GaussianVAE(input_dim=784, latent_dim=20, hidden=(400,), init="fan-in")
    for layer in _layers_with_kernels(model.encoder) + _layers_with_kernels(model.decoder):
        limit = 1.0 / math.sqrt(_fan_in(layer))
        for weight in (layer.kernel, layer.bias):
            # Uniform on [-limit, limit]: the largest of hundreds of draws is near the edge.
            assert 0.9 * limit < _largest(weight) <= limit, (layer.name, weight.name)


def test_glorot_and_he_start_biases_at_zero_with_their_kernel_scales():
    keras.utils.set_random_seed(0)
    for init, scale in (("glorot", None), ("he", 6.0)):
        model = tfvae.GaussianVAE(input_dim=784, latent_dim=20, hidden=(400,), init=init)
        first = _layers_with_kernels(model.encoder)[0]
        assert _largest(first.bias) == 0.0
        fan_in, fan_out = first.kernel.shape
        limit = math.sqrt((scale / fan_in) if scale else 6.0 / (fan_in + fan_out))
        assert 0.9 * limit < _largest(first.kernel) <= limit


def test_head_init_starts_only_the_parameter_layers():
    keras.utils.set_random_seed(0)
    model = tfvae.GaussianVAE(input_dim=784, latent_dim=20, hidden=(400,), init="glorot",
                              head_init="fan-in")
    for net in (model.encoder, model.decoder):
        *body, head = _layers_with_kernels(net)
        assert all(_largest(layer.bias) == 0.0 for layer in body)
        assert _largest(head.bias) > 0.5 / math.sqrt(_fan_in(head))


def test_conv_layers_count_fan_in_over_the_kernel_window():
    keras.utils.set_random_seed(0)
    model = tfvae.GaussianVAE(input_dim=784, image_shape=(28, 28), latent_dim=8, hidden=(),
                              arch="conv", init="fan-in")
    convs = [layer for layer in _layers_with_kernels(model.decoder)
             if isinstance(layer, keras.layers.Conv2DTranspose)]
    assert convs
    for layer in convs:
        limit = 1.0 / math.sqrt(_fan_in(layer))
        assert _largest(layer.bias) <= limit and _largest(layer.kernel) <= limit


def test_unknown_init_names_the_choices():
    with pytest.raises(ConfigError, match="glorot, fan-in, he"):
        Config(init="xavier")
    with pytest.raises(ConfigError, match="head_init"):
        tfvae.GaussianVAE(input_dim=16, latent_dim=2, head_init="orthogonal")
    with pytest.raises(ConfigError, match="choose one of"):
        networks.initializers("zeros", 4)


def test_init_is_in_the_saved_model_and_config(tmp_path):
    keras.utils.set_random_seed(0)
    model = tfvae.GaussianVAE(input_dim=16, latent_dim=2, hidden=(8,), init="he",
                              head_init="fan-in")
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert (loaded.init, loaded.head_init) == ("he", "fan-in")
    for a, b in zip(model.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    cfg = Config(init="fan-in", head_init="glorot", input_dim=16, image_shape=(4, 4))
    again = Config.from_json(cfg.to_json())
    assert (again.init, again.head_init) == ("fan-in", "glorot")
    assert cfg.model_kwargs()["init"] == "fan-in"


@pytest.mark.parametrize("likelihood, obs_scale, expected", [
    ("gaussian", "shared", "fan-in"),
    ("gaussian", "decoder", "glorot"),
    ("gaussian", "pixel", "glorot"),
    ("logistic", "decoder", "glorot"),
    ("bernoulli", "decoder", "glorot"),
])
def test_without_init_a_model_starts_as_measured_best_for_its_observation_model(
        likelihood, obs_scale, expected):
    """The default start is the benchmarks' best per observation model: PyTorch's fan-in
    start for a Gaussian with one shared scale, Keras' Glorot start for the others."""
    keras.utils.set_random_seed(0)
    model = tfvae.GaussianVAE(input_dim=784, latent_dim=20, hidden=(400,),
                              likelihood=likelihood, obs_scale=obs_scale)
    assert (model.init, model.head_init) == (expected, None)
    first = _layers_with_kernels(model.encoder)[0]
    assert (_largest(first.bias) > 0.0) == (expected == "fan-in")  # glorot: zero biases
    assert model.get_config()["init"] == expected  # what a saved model rebuilds with
    explicit = tfvae.GaussianVAE(input_dim=784, latent_dim=20, hidden=(400,),
                                 likelihood=likelihood, obs_scale=obs_scale, init="he")
    assert explicit.init == "he"


def test_a_config_without_init_leaves_the_choice_to_the_model():
    cfg = Config(likelihood="gaussian", obs_scale="shared", input_dim=16, image_shape=(4, 4))
    assert cfg.init is None and cfg.model_kwargs()["init"] is None
    model = tfvae.GaussianVAE(**{**cfg.model_kwargs(), "latent_dim": 2, "hidden": (8,)})
    assert model.init == "fan-in"


@pytest.mark.parametrize("options, expected", [
    (dict(likelihood="gaussian", obs_scale="shared", binarize="none"), "fan-in"),
    (dict(), "glorot"),  # Bernoulli pixels
    (dict(likelihood="gaussian", obs_scale="shared", binarize="none", init="he"), "he"),
])
def test_a_run_records_the_start_it_takes(options, expected):
    """A run's config (what config.json holds) names the start, resolved with the likelihood."""
    from tfvae.runs.run_data import load_data

    config = Config(**options)
    load_data(config)
    assert config.init == expected
