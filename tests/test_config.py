"""Config: validation at the boundary and the JSON round trip."""

import json

import pytest

from tfvae.config import Config, parse_sizes
from tfvae.errors import ConfigError


def test_round_trip_through_json():
    cfg = Config(latent_dim=2, hidden="512,256", decoder_hidden="", epochs=3, components="auto")
    again = Config.from_json(cfg.to_json())
    assert again == cfg
    assert again.hidden == (512, 256)
    assert again.decoder_hidden == ()
    assert json.loads(cfg.to_json())["hidden"] == [512, 256]


def test_image_shape_is_height_width_channels():
    assert Config(image_shape=(28, 28)).image_shape == (28, 28, 1)
    assert Config(image_shape=[32, 32, 3]).image_shape == (32, 32, 3)
    with pytest.raises(ConfigError, match="--image-shape must be positive"):
        Config(image_shape=(0, 4))


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("latent_dim", 0, "--latent-dim"),
        ("latent_dim", -3, "positive"),
        ("batch_size", 0, "--batch-size"),
        ("epochs", 0, "--epochs"),
        ("hidden", "400,-1", "positive"),
        ("hidden", "abc", "comma-separated"),
        ("model", "gan", "gaussian"),
        ("estimator", "magic", "reinforce"),
        ("likelihood", "poisson", "bernoulli"),
        ("val_fraction", 1.0, "[0, 1)"),
        ("lr", 0.0, "--lr"),
        ("iwae_k", 0, "--iwae-k"),
        ("components", "many", "auto"),
        ("baseline_decay", 1.5, "--baseline-decay"),
        ("temperature", 0.0, "--temperature"),
        ("temperature", float("nan"), "--temperature"),
    ],
)
def test_invalid_values_name_the_option(field, value, words):
    with pytest.raises(ConfigError) as info:
        Config(**{field: value})
    assert words in str(info.value)


def test_dataset_and_data_dir_are_exclusive():
    with pytest.raises(ConfigError, match="not both"):
        Config(dataset="digits", data_dir="/tmp/x")


def test_unknown_fields_in_json_are_refused():
    with pytest.raises(ConfigError, match="unknown configuration fields"):
        Config.from_dict({"latent_dim": 2, "bogus": 1})
    with pytest.raises(ConfigError, match="not valid JSON"):
        Config.from_json("{not json")


def test_parse_sizes_forms():
    assert parse_sizes("400") == (400,)
    assert parse_sizes(400) == (400,)
    assert parse_sizes([8, 4]) == (8, 4)
    assert parse_sizes("") == ()
    with pytest.raises(ConfigError):
        parse_sizes("", allow_empty=False)


def test_paths_given_as_path_objects_are_recorded_as_text(tmp_path):
    config = Config(data_dir=tmp_path / "d.npz", tfds_data_dir=tmp_path)
    assert config.data_dir == str(tmp_path / "d.npz") and config.tfds_data_dir == str(tmp_path)
    assert json.loads(json.dumps(config.to_dict()))["data_dir"] == str(tmp_path / "d.npz")
