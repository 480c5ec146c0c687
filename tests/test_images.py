"""Real-valued and colour images: observation models, bits per dimension, any image shape.

Offline data only: scikit-learn's two sample photographs cut into 32x32
colour patches, and small images written here.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import tfvae
from tfvae import data
from tfvae._keras import tf
from tfvae.distributions import QuantizedLogistic
from tfvae.errors import ConfigError, DataError, TfvaeWarning


@pytest.fixture(scope="module")
def patches():
    """600 colour 32x32 patches of scikit-learn's sample photographs, uint8 (N, 32, 32, 3)."""
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(0)
    out = []
    for image in load_sample_images().images:  # two 427 x 640 x 3 photographs
        rows = rng.integers(0, image.shape[0] - 32, 300)
        cols = rng.integers(0, image.shape[1] - 32, 300)
        out += [image[r:r + 32, c:c + 32] for r, c in zip(rows, cols, strict=True)]
    return np.stack(out).astype(np.uint8)


@pytest.fixture(scope="module")
def patches_npz(patches, tmp_path_factory):
    path = tmp_path_factory.mktemp("colour") / "patches.npz"
    np.savez(path, x_train=patches[:500], x_test=patches[500:])
    return path


# ------------------------------------------------------------ the discretized logistic


def test_quantized_logistic_is_a_distribution_over_the_pixel_grid():
    loc = tf.constant([[0.3, 0.0, 1.0]])
    scale = tf.constant([[0.05, 0.02, 0.01]])
    p = QuantizedLogistic(loc, scale)
    grid = tf.reshape(tf.range(256, dtype=tf.float32) / 255.0, [256, 1, 1])
    values = tf.broadcast_to(grid, [256, 1, 3])
    per_value = tf.stack([
        QuantizedLogistic(loc[:, i:i + 1], scale[:, i:i + 1]).log_prob(values[:, :, i:i + 1])
        for i in range(3)], -1)  # [256, 1, 3]
    np.testing.assert_allclose(tf.reduce_sum(tf.exp(per_value), 0), np.ones((1, 3)), rtol=1e-4)
    # By hand: the logistic mass of the bin [k - 0.5, k + 0.5] (pixel units), end bins open.
    k, m, s = 77.0, 0.3 * 255, 0.05 * 255
    cdf = tf.sigmoid
    expected = math.log(float(cdf((k + 0.5 - m) / s) - cdf((k - 0.5 - m) / s)))
    single = QuantizedLogistic(loc[:, :1], scale[:, :1])
    np.testing.assert_allclose(single.log_prob([[k / 255.0]]), [expected], rtol=1e-5)
    edge = QuantizedLogistic(tf.constant([[0.0]]), tf.constant([[0.02]]))
    np.testing.assert_allclose(edge.log_prob([[0.0]]), [math.log(float(cdf(0.5 / 5.1)))],
                               rtol=1e-5)
    assert p.sample(4, seed=(1, 2)).shape == (4, 1, 3)
    assert np.all(np.abs(p.sample(50, seed=(1, 2)).numpy() * 255 % 1) < 1e-3)  # on the grid


def test_a_logistic_mixture_is_tfps_mixture_same_family():
    rng = np.random.default_rng(0)
    loc = tf.constant(rng.random((2, 5, 3)).astype(np.float32))
    scale = tf.constant(rng.uniform(0.01, 0.1, (2, 5, 3)).astype(np.float32))
    logits = tf.constant(rng.normal(size=(2, 5, 3)).astype(np.float32))
    x = tf.constant(rng.integers(0, 256, (2, 5)).astype(np.float32) / 255.0)
    ours = QuantizedLogistic(loc, scale, logits).log_prob(x)
    # Per value: log sum_j pi_j P_j(x); per image: sum over the 5 values.
    per_value = tf.stack([
        tf.stack([QuantizedLogistic(loc[:, i:i + 1, j], scale[:, i:i + 1, j]).log_prob(
            x[:, i:i + 1]) for j in range(3)], -1) for i in range(5)], 1)  # [2, 5, 3]
    expected = tf.reduce_sum(tf.reduce_logsumexp(per_value + tf.nn.log_softmax(logits), -1), -1)
    np.testing.assert_allclose(ours, expected, rtol=1e-5)


# ------------------------------------------------------------ Gaussian scales


def test_the_decoder_scale_depends_on_the_code_and_keeps_its_floor(make_model):
    model = make_model("gaussian", input_dim=64, image_shape=(8, 8), latent_dim=2,
                       hidden=(16,), likelihood="gaussian", obs_scale="decoder", min_scale=0.05)
    a, b = model.decode(tf.constant([[0.0, 0.0]])), model.decode(tf.constant([[3.0, -3.0]]))
    assert not np.allclose(a.stddev(), b.stddev())
    assert float(tf.reduce_min(a.stddev())) >= 0.05
    shared = make_model("gaussian", input_dim=64, image_shape=(8, 8), latent_dim=2,
                        hidden=(16,), likelihood="gaussian", obs_scale="shared")
    head = shared.decoder.layers[-1]
    assert head.raw_scale.shape == (1,)
    assert len(np.unique(shared.decode(tf.zeros([1, 2])).stddev().numpy())) == 1
    with pytest.raises(ConfigError, match="obs_scale"):
        make_model("gaussian", likelihood="gaussian", obs_scale="wide")


# ------------------------------------------------------------ bits per dimension


def test_bits_per_dimension_follow_the_formulas(make_model, patches):
    x = patches[:20].reshape(20, -1).astype(np.float32) / 255.0
    logistic = make_model("gaussian", input_dim=3072, image_shape=(32, 32, 3),
                          likelihood="logistic", latent_dim=2, hidden=(8,))
    ev = tfvae.evaluate(logistic, x, k=2)
    assert ev["bits_per_dim"] == pytest.approx(-ev["elbo"] / (3072 * math.log(2)))
    assert ev["bits_per_dim_iwae"] == pytest.approx(-ev["log_likelihood"] / (3072 * math.log(2)))
    assert ev["bits_per_dim_of"] == "256-level pixels"
    gaussian = make_model("gaussian", input_dim=3072, image_shape=(32, 32, 3),
                          likelihood="gaussian", latent_dim=2, hidden=(8,))
    dequantized = (patches[:20].reshape(20, -1) + 0.5) / 256.0
    ev = tfvae.evaluate(gaussian, dequantized, k=2, dequantized_levels=256)
    expected = (3072 * math.log(256) - ev["elbo"]) / (3072 * math.log(2))
    assert ev["bits_per_dim"] == pytest.approx(expected)
    assert "bits_per_dim" not in tfvae.evaluate(gaussian, dequantized, k=2)  # floats: none


# ------------------------------------------------------------ colour images end to end


def test_colour_arrays_default_to_the_logistic_likelihood(patches_npz):
    ds = data.load_dataset(data_dir=patches_npz)
    assert ds.image_shape == (32, 32, 3) and ds.levels == 256 and ds.dim == 3072
    from tfvae.runs.run_data import resolve_likelihood

    assert resolve_likelihood(tfvae.Config(), ds) == "logistic"
    assert data.prepare(ds, likelihood="logistic").train_mode == "none"
    with pytest.raises(ConfigError, match="--binarize must be none"):
        data.prepare(ds, likelihood="logistic", binarize="dynamic")


@pytest.mark.slow
def test_a_colour_conv_model_trains_evaluates_samples_and_exports(patches_npz, tmp_path):
    from click.testing import CliRunner
    from tfvae_cli.main import cli

    from tfvae import export

    out = tmp_path / "colour"
    run = tfvae.train(out=out, data_dir=str(patches_npz), arch="conv", hidden=(), latent_dim=8,
                      epochs=2, batch_size=50, iwae_k=4, obs_components=2, verbose=0)
    assert run.config.likelihood == "logistic" and run.config.image_shape == (32, 32, 3)
    ev = run.evaluation
    assert 0 < ev["bits_per_dim"] < 8.5 and ev["bits_per_dim_iwae"] <= ev["bits_per_dim"] + 0.01
    assert ev["bits_per_dim_of"] == "256-level pixels"
    png = (out / "figures" / "samples.png").read_bytes()
    assert png[:4] == b"\x89PNG" and png[25] == 6  # colour type 6: RGBA, drawn in colour
    drawn = run.model.sample(3, seed=1, pixels=True)
    assert drawn.shape == (3, 3072) and np.allclose(drawn * 255, np.rint(drawn * 255), atol=1e-3)
    exported = tmp_path / "export"
    manifest = export.export_run(out, exported, precisions="float32")
    assert manifest["image_shape"] == [32, 32, 3]
    assert manifest["signatures"]["sample"]["outputs"]["image"]["image_shape"] == [32, 32, 3]
    d = export.ExportDir(exported)
    lite, saved = d.sample(5, seed=2), d.sample(5, seed=2, backend="savedmodel")
    keras_images = run.model.sample(5, seed=2)
    assert np.max(np.abs(lite - saved)) < 1e-5 and np.max(np.abs(saved - keras_images)) < 1e-5
    result = CliRunner().invoke(cli, ["sample", str(out), "--n", "4", "--pixels",
                                      "--out", str(tmp_path / "p.npy")])
    assert result.exit_code == 0, result.output
    pixels = np.load(tmp_path / "p.npy")
    assert pixels.dtype == np.uint8 and pixels.shape == (4, 3072)


# ------------------------------------------------------------ folders and shapes


@pytest.fixture(scope="module")
def photo_folder(patches, tmp_path_factory):
    """60 PNG and JPEG files in two class folders, of two sizes (to be resized)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("photos")
    for i, patch in enumerate(patches[:60]):
        folder = root / ("cats" if i % 2 else "dogs")
        folder.mkdir(exist_ok=True)
        image = Image.fromarray(patch if i % 3 else np.repeat(patch, 2, axis=1))
        image.save(folder / (f"{i:03d}.png" if i % 4 else f"{i:03d}.jpg"))
    return root


def test_a_folder_of_images_is_read_file_by_file(photo_folder):
    ds = data.load_dataset(data_dir=photo_folder, image_size=(16, 16))
    assert isinstance(ds, data.FolderDataSet) and ds.classes == ["cats", "dogs"]
    assert ds.image_shape == (16, 16, 3) and len(ds.train_files) == 54
    assert sorted(set(ds.y_train.tolist())) == [0, 1]
    splits = data.prepare(ds, likelihood="logistic", val_fraction=0.1)
    assert splits.streamed and len(splits.val) == 5 and len(splits.test) == 6
    rows = splits.test_rows()
    assert rows.shape == (6, 768) and rows.min() >= 0 and rows.max() <= 1
    np.testing.assert_array_equal(rows, splits.test_rows())  # fixed, read again
    bits = data.prepare(ds, likelihood="bernoulli", val_fraction=0)
    assert set(np.unique(bits.test_rows())) <= {0.0, 1.0}
    np.testing.assert_array_equal(bits.test_rows(), bits.test_rows())
    with pytest.raises(ConfigError, match="--binarize dynamic"):
        data.prepare(ds, likelihood="bernoulli", binarize="static")


@pytest.mark.slow
def test_a_folder_trains_on_keras_loop_from_the_command_line(photo_folder, tmp_path):
    from click.testing import CliRunner
    from tfvae_cli.main import cli

    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["train", "--data-dir", str(photo_folder), "--image-size",
                                      "16,16", "--epochs", "1", "--latent-dim", "2", "--hidden",
                                      "32", "--batch-size", "16", "--iwae-k", "2", "--out",
                                      str(out)])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["image_shape"] == [16, 16, 3] and config["likelihood"] == "logistic"
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["n"] == 6 and "bits_per_dim" in evaluation


def test_flat_rows_take_an_image_shape(patches, tmp_path):
    flat = patches.reshape(len(patches), -1)
    np.save(tmp_path / "flat.npy", flat)
    config = tfvae.Config(data_dir=str(tmp_path / "flat.npy"), image_shape="32,32,3")
    from tfvae.runs.run_data import load_data

    dataset, _ = load_data(config)
    assert dataset.image_shape == (32, 32, 3) and config.likelihood == "logistic"
    with pytest.raises(DataError, match="does not fit rows of 3072 values"):
        load_data(tfvae.Config(data_dir=str(tmp_path / "flat.npy"), image_shape="32,32,2"))


@pytest.mark.slow
def test_an_unused_code_gives_a_warning(tmp_path):
    one = (np.random.default_rng(0).random(16) < 0.5).astype(np.float32)
    x = np.tile(one, (200, 1))  # every image the same: nothing for a code to tell apart
    np.save(tmp_path / "noise.npy", x)
    with pytest.warns(TfvaeWarning, match="no active unit"):
        tfvae.train(out=tmp_path / "run", data_dir=str(tmp_path / "noise.npy"), epochs=3,
                    latent_dim=2, hidden=(8,), iwae_k=2, verbose=0, figures=False,
                    binarize="none", batch_size=50)


def test_logistic_on_continuous_data_is_refused(tmp_path):
    x = np.random.default_rng(0).random((40, 16)).astype(np.float32)
    ds = data.from_arrays("floats", x, x[:5])
    with pytest.raises(DataError, match="--likelihood gaussian"):
        data.prepare(ds, likelihood="logistic")
