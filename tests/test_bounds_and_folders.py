"""Runs that could never finish are refused when they start; image folders are checked up front.

Upper bounds on every size and seed (``Config``), memory estimated from sizes
before anything is allocated (:mod:`tfvae.budget`, with the machine's memory
replaced by a fixed figure so the tests do not depend on it), samples made
and written a chunk at a time, every file of an image folder read and
decoded once when the data are loaded (:mod:`tfvae.data.image_checks`), what
counts as an image folder, and damaged ``.npy`` files named as such.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
import warnings

import numpy as np
import pytest
from click.testing import CliRunner
from tfvae_cli.main import cli

import tfvae
from tfvae import budget, data
from tfvae import sampler_noise as noise
from tfvae.config import MAX_EPOCHS, MAX_K, MAX_SEED, Config, check_seed, check_text_path
from tfvae.errors import ConfigError, DataError, DataWarning

GIB = budget.GIB


@pytest.fixture
def memory(monkeypatch):
    """``memory(gib)``: the machine's memory as tfvae sees it, fixed for the test."""

    def set_to(gib):
        monkeypatch.setattr(budget, "total_memory", lambda: int(gib * GIB))

    set_to(16)
    return set_to


def _png(path, size=(8, 8), mode="RGB", seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    channels = {"RGB": (3,), "L": ()}[mode]
    pixels = rng.integers(0, 256, (size[1], size[0]) + channels, dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode).save(path)
    return path


def _folder(root, layout="flat", n=20):
    """``n`` small PNG files: in ``root`` (flat), in two class folders, or train/ + test/."""
    for i in range(n):
        if layout == "flat":
            folder = root
        elif layout == "classes":
            folder = root / ("cats" if i % 2 else "dogs")
        else:
            folder = root / ("test" if i % 5 == 0 else "train") / ("cats" if i % 2 else "dogs")
        _png(folder / f"{i:03d}.png", seed=i)
    return root


# ------------------------------------------------------------------ class 5: seeds and k


def test_seeds_are_bounded_so_every_derived_seed_stays_in_range():
    with pytest.raises(ConfigError, match=r"--seed must be an integer from 0 to 2147483647"):
        Config(seed=2**32 - 1)
    with pytest.raises(ConfigError, match="--seed"):
        Config(seed=-1)
    assert Config(seed=MAX_SEED).seed == MAX_SEED
    with pytest.raises(ConfigError, match="--epochs 1000001 is more than tfvae supports"):
        Config(epochs=MAX_EPOCHS + 1)
    # A resumed run's data order is seeded with seed + 1000 * epoch (numpy: below 2**32);
    # evaluation and sampling take the seed as an int32 stateless seed.
    assert MAX_SEED + 1000 * MAX_EPOCHS < 2**32 and MAX_SEED < 2**31
    assert check_seed(np.int64(7)) == 7
    for bad in (True, 1.5, "3", 2**31):
        with pytest.raises(ConfigError):
            check_seed(bad)


def test_library_seeds_are_checked_where_they_enter(make_model):
    with pytest.raises(ConfigError, match="seed must be an integer from 0"):
        noise.draw((noise.Noise("eps", (2,), "normal"),), 4, seed=2**32)
    model = make_model("gaussian", input_dim=16)
    x = np.zeros((4, 16), np.float32)
    with pytest.raises(ConfigError, match="seed must be an integer from 0"):
        tfvae.evaluate(model, x, k=2, seed=-1)


@pytest.mark.parametrize("field, flag", [("iwae_k", "--iwae-k"), ("eval_k", "--eval-k"),
                                         ("num_samples", "--num-samples")])
def test_sample_counts_past_what_tfvae_supports_are_refused_at_once(field, flag):
    with pytest.raises(ConfigError, match=f"{flag} 1000000000 is more than tfvae supports"):
        Config(**{field: 10**9})
    assert getattr(Config(**{field: MAX_K}), field) == MAX_K


def test_a_k_sample_bound_that_cannot_fit_is_refused_at_the_start_of_training(memory):
    """The final evaluation's chunk is one example's k samples: checked before epoch 1."""
    memory(8)
    config = Config(iwae_k=MAX_K, likelihood="logistic", obs_components=10)
    config.input_dim, config.image_shape = 3072, (32, 32, 3)
    with pytest.raises(ConfigError, match=r"--iwae-k 100000 with 3,072 values per example "
                                          r"makes a tensor"):
        budget.check_feasible(config)
    config = Config(eval_k=20000, likelihood="bernoulli")
    config.input_dim, config.image_shape = 784, (28, 28, 1)
    memory(0.25)
    with pytest.raises(ConfigError, match=r"--eval-k 20000 .* needs about .* GiB to evaluate "
                                          r"the k-sample bound"):
        budget.check_feasible(config)
    memory(16)
    budget.check_feasible(config)  # the same run fits a larger machine


def test_evaluate_refuses_a_k_that_cannot_fit_before_any_work(make_model, memory):
    import inspect

    default = inspect.signature(tfvae.evaluate).parameters["max_elements"].default
    assert default == budget.IWAE_CHUNK_VALUES  # the chunking the budget assumes
    model = make_model("gaussian")
    memory(0.05)
    with pytest.raises(ConfigError, match=r"k=20000 with 784 values per example needs about"):
        tfvae.evaluate(model, np.zeros((3, 784), np.float32), k=20000)


# ------------------------------------------------------------------ class 6: upper bounds


@pytest.mark.parametrize("options, words", [
    (dict(hidden=10**9), "--hidden 1000000000"),
    (dict(latent_dim=10**9), "--latent-dim 1000000000"),
    (dict(image_size="1000000000,1000000000"), "--image-size 1000000000,1000000000"),
    (dict(decoder_hidden="400,1000000000"), "--decoder-hidden 1000000000"),
    (dict(model="sbn", stochastic_layers=100, latent_dim=40000), "--latent-dim 40000"),
])
def test_networks_whose_weights_cannot_fit_are_refused_with_the_figure(options, words, memory):
    with pytest.raises(ConfigError) as info:
        Config(**options)
    message = str(info.value)
    assert words in message and "for the weights alone" in message, message
    assert "GiB" in message and "the system has 16.0 GiB of memory" in message, message


def test_a_network_that_fits_is_accepted(memory):
    memory(1)
    Config(hidden=(512, 256), latent_dim=64, image_size="64,64")


def test_counts_without_a_memory_cost_have_caps():
    with pytest.raises(ConfigError, match="--components 1000000000 is more than tfvae fits"):
        Config(model="ae-gmm", components=10**9)
    with pytest.raises(ConfigError, match="--obs-components"):
        Config(obs_components=10**9)
    with pytest.raises(ConfigError, match="--stochastic-layers"):
        Config(model="sbn", stochastic_layers=10**9)
    with pytest.raises(ConfigError, match="layers, more than tfvae supports"):
        Config(hidden=",".join(["8"] * 101))


def test_more_mixture_components_than_training_codes_are_refused_at_the_start():
    config = Config(model="ae-gmm", components=500)
    config.input_dim, config.image_shape, config.likelihood = 784, (28, 28, 1), "bernoulli"
    splits = types.SimpleNamespace(train=np.zeros((300, 1)))
    with pytest.raises(ConfigError, match="--components 500 is more than the 300 training codes"):
        budget.check_feasible(config, splits)
    budget.check_feasible(Config(model="ae-gmm", components="auto", input_dim=784,
                                 image_shape=(28, 28, 1)), splits)


def test_a_training_batch_that_cannot_fit_is_refused(memory):
    memory(2)
    config = Config(batch_size=50000, hidden=(4096,))
    config.input_dim, config.image_shape, config.likelihood = 3072, (32, 32, 3), "gaussian"
    with pytest.raises(ConfigError, match=r"--batch-size 50000 with 3,072 values per example "
                                          r"needs about .* to train"):
        budget.check_feasible(config)


def test_the_budget_counts_the_decoders_outputs_as_the_heads_do():
    from tfvae import heads

    assert budget.observation_params("bernoulli") == heads.BernoulliHead.params_size(1)
    assert budget.observation_params("logistic", "decoder", 1) == \
        heads.LogisticHead.params_size(1, 1)
    assert budget.observation_params("logistic", "decoder", 5) == \
        heads.LogisticHead.params_size(1, 5)
    model_sizes = budget.Sizes.of(Config(latent_dim=2, hidden=(32,), input_dim=784,
                                         image_shape=(28, 28, 1), likelihood="bernoulli"))
    from tfvae.models.gaussian import GaussianVAE

    model = GaussianVAE(input_dim=784, latent_dim=2, hidden=(32,), likelihood="bernoulli")
    assert model_sizes.weights() == sum(int(np.prod(v.shape)) for v in model.trainable_variables)


def test_sampler_noise_in_pieces_is_the_noise_of_one_draw(monkeypatch):
    inputs = (noise.Noise("u", (), "uniform"), noise.Noise("eps", (3,), "normal"))
    whole = noise.draw(inputs, 50, seed=4)
    monkeypatch.setattr(noise, "DRAW_PIECE", 7)
    pieces = noise.draw(inputs, 50, seed=4)
    for name in whole:
        assert pieces[name].dtype == np.float32
        np.testing.assert_array_equal(pieces[name], whole[name])


def test_sampling_more_than_memory_or_disk_holds_is_refused(tiny_run, tmp_path, memory,
                                                            monkeypatch):
    runner = CliRunner()
    memory(1)
    out = tmp_path / "s.npy"
    result = runner.invoke(cli, ["sample", str(tiny_run), "--n", "1000000000", "--out", str(out)])
    assert result.exit_code == 1 and "--n 1,000,000,000 needs about" in result.output, \
        result.output
    assert "Traceback" not in result.output and not list(tmp_path.iterdir())
    memory(16)
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda path: types.SimpleNamespace(free=10**6))
    result = runner.invoke(cli, ["sample", str(tiny_run), "--n", "10000", "--out", str(out)])
    assert result.exit_code == 1 and "has 0.00093 GiB free" in result.output, result.output
    assert not list(tmp_path.iterdir())
    result = runner.invoke(cli, ["sample", str(tiny_run), "--n", "5000", "--out",
                                 str(tmp_path / "s.png")])
    assert result.exit_code == 1 and "at most 1024 samples" in result.output
    assert ".npy" in result.output


def test_samples_are_made_and_written_a_chunk_at_a_time(tiny_run, tmp_path, monkeypatch):
    from tfvae_cli import sample as sample_command

    from tfvae.runs.store import load_model

    model, _ = load_model(tiny_run, "best")
    expected = model.sample(30, seed=5)
    monkeypatch.setattr(sample_command, "CHUNK_VALUES", 7 * 784)  # five chunks, the last short
    out = tmp_path / "s.npy"
    result = CliRunner().invoke(cli, ["sample", str(tiny_run), "--n", "30", "--seed", "5",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    written = np.load(out)
    assert written.shape == (30, 784) and written.dtype == np.float32
    np.testing.assert_allclose(written, expected, atol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.npy"]  # no partial file left
    result = CliRunner().invoke(cli, ["sample", str(tiny_run), "--n", "30", "--pixels",
                                      "--out", str(tmp_path / "p.npy")])
    assert result.exit_code == 0, result.output
    pixels = np.load(tmp_path / "p.npy")
    assert pixels.shape == (30, 784) and set(np.unique(pixels)) <= {0.0, 1.0}
    np.testing.assert_array_equal(pixels[:7], model.sample(7, seed=0, pixels=True))


WITHOUT_TENSORFLOW = r"""
import json, sys

class NoTensorFlow:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "tensorflow":
            raise ImportError("TensorFlow is not importable in this test")

sys.meta_path.insert(0, NoTensorFlow())
from click.testing import CliRunner
from tfvae_cli.main import cli

results = {}
for argv in json.loads(sys.argv[1]):
    result = CliRunner().invoke(cli, argv)
    results[" ".join(argv)] = {"exit_code": result.exit_code, "output": result.output}
print(json.dumps(results))
"""


def test_impossible_sizes_are_refused_before_tensorflow_loads(tmp_path):
    out = str(tmp_path / "run")
    cases = [["train", "--hidden", "1000000000", "--out", out],
             ["train", "--latent-dim", "1000000000", "--out", out],
             ["train", "--image-size", "1000000000,1000000000", "--out", out],
             ["train", "--seed", "4294967295", "--out", out],
             ["train", "--iwae-k", "1000000000", "--out", out],
             ["train", "--eval-k", "1000000000", "--out", out],
             ["train", "--num-samples", "1000000000", "--out", out],
             ["train", "--model", "ae-gmm", "--components", "1000000000", "--out", out],
             ["sample", "missing-run", "--n", "64", "--seed", "-1", "--out",
              str(tmp_path / "s.png")]]
    done = subprocess.run([sys.executable, "-c", WITHOUT_TENSORFLOW, json.dumps(cases)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    for argv, result in json.loads(done.stdout).items():
        assert result["exit_code"] == 1, (argv, result)
        assert "Traceback" not in result["output"] and "Error: " in result["output"], result
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------ class 7: image folders


def _damage(root):
    """Three files training could not use among good ones: empty, cut short, not an image."""
    (root / "000.png").write_bytes(b"")
    good = (root / "001.png").read_bytes()
    (root / "001.png").write_bytes(good[:len(good) // 2])
    (root / "002.png").write_bytes(b"GIF89a but not really an image")
    return ["000.png", "001.png", "002.png"]


def test_bad_images_are_named_when_the_folder_is_loaded(tmp_path):
    root = _folder(tmp_path / "photos", n=30)
    names = _damage(root)
    with pytest.raises(DataError) as info:
        data.load_dataset(data_dir=root)
    message = str(info.value)
    assert "3 of the 30 images" in message and "--bad-images skip" in message, message
    for name, why in zip(names, ("is empty", "cannot be decoded", "is not a PNG or JPEG"),
                         strict=True):
        assert f"{name} {why}" in message, message


def test_bad_images_are_left_out_with_a_warning_when_asked(tmp_path):
    root = _folder(tmp_path / "photos", layout="classes", n=30)
    (root / "cats" / "001.png").write_bytes(b"")
    with pytest.warns(DataWarning, match=r"leaving out 1 of the 30 images .*001\.png is empty"):
        ds = data.load_dataset(data_dir=root, bad_images="skip")
    files = ds.train_files + ds.test_files
    assert len(files) == 29 and not any(f.endswith("001.png") for f in files)
    assert len(ds.y_train) == len(ds.train_files) and len(ds.y_test) == len(ds.test_files)
    splits = data.prepare(ds, likelihood="logistic", val_fraction=0.1)
    assert splits.train.rows().shape == (len(splits.train), 192)  # every file decodes
    assert splits.test_rows().shape == (len(ds.test_files), 192)


def test_images_training_could_not_crop_or_decode_are_bad(tmp_path, memory):
    root = _folder(tmp_path / "photos", n=12)
    _png(root / "thin.png", size=(1, 400))  # 1 wide, 400 high: crops to 0 columns at 16x100
    _png(root / "huge.png", size=(300, 300))
    memory(0.0005)  # images decoded side by side may take a few hundred kilobytes
    with pytest.warns(DataWarning) as caught:
        ds = data.load_dataset(data_dir=root, image_size=(16, 100), bad_images="skip")
    message = " ".join(str(w.message) for w in caught if issubclass(w.category, DataWarning))
    assert "thin.png is 1x400 pixels, too thin to crop" in message, message
    assert "huge.png is 300x300 pixels: decoding it takes about" in message, message
    assert len(ds.train_files) + len(ds.test_files) == 12


def test_file_names_that_are_not_utf8_are_read(tmp_path):
    root = _folder(tmp_path / "photos", n=12)
    odd = os.path.join(os.fsencode(root), b"caf\xe9.png")  # Latin-1, not UTF-8
    os.rename(root / "000.png", odd)
    ds = data.load_dataset(data_dir=root)
    assert os.fsdecode(odd) in ds.train_files + ds.test_files
    splits = data.prepare(ds, likelihood="logistic", val_fraction=0)
    assert splits.train.rows().shape[0] + splits.test_rows().shape[0] == 12
    (root / "002.png").write_bytes(b"")
    os.rename(os.fsdecode(odd), os.path.join(os.fsencode(root), b"\xff.png"))
    os.rename(root / "001.png", os.path.join(os.fsencode(root), b"\xfe.png"))
    (root / os.fsdecode(b"\xfe.png")).write_bytes(b"")
    with pytest.raises(DataError) as info:
        data.load_dataset(data_dir=root)
    assert "\\xfe.png is empty" in str(info.value)
    str(info.value).encode("utf-8")  # printable: no lone surrogates


def test_an_out_path_that_is_not_utf8_is_refused_clearly():
    with pytest.raises(ConfigError, match=r"--out runs/\\xff: the name is not valid UTF-8"):
        check_text_path(os.fsdecode(b"runs/\xff"), "--out")
    assert check_text_path("runs/caf\u00e9", "--out") == "runs/caf\u00e9"
    with pytest.raises(ConfigError, match="--tfds-data-dir"):
        Config(tfds_data_dir=os.fsdecode(b"/tmp/\xff"))


def test_the_train_and_test_class_folder_layout_is_read(tmp_path):
    root = _folder(tmp_path / "photos", layout="split", n=30)
    ds = data.load_dataset(data_dir=root)
    assert ds.classes == ["cats", "dogs"] and ds.image_shape == (8, 8, 3)
    assert len(ds.train_files) == 24 and len(ds.test_files) == 6
    assert all("/train/" in f for f in ds.train_files)
    assert all("/test/" in f for f in ds.test_files)
    assert sorted(set(ds.y_train.tolist())) == [0, 1] and len(ds.y_test) == 6


def test_a_train_folder_without_its_test_folder_is_refused(tmp_path):
    root = _folder(tmp_path / "photos", layout="split", n=30)
    for path in (root / "test").rglob("*.png"):
        path.unlink()
    for folder in sorted((root / "test").rglob("*"), reverse=True):
        folder.rmdir()
    (root / "test").rmdir()
    with pytest.raises(DataError, match="holds train/ with class folders but no test/"):
        data.load_dataset(data_dir=root)


# ------------------------------------------------------------------ class 8 and 9


def test_a_folder_with_a_few_stray_pictures_is_not_an_image_data_set(tmp_path):
    root = tmp_path / "project"
    (root / "src").mkdir(parents=True)
    (root / "src" / "main.py").write_text("print('hello')\n")
    (root / "README.md").write_text("# a project\n")
    _png(root / "docs" / "logo.png")
    _png(root / "docs" / "diagram.png")
    _png(root / "assets" / "icon.png")
    with pytest.raises(DataError) as info:
        data.load_dataset(data_dir=root)
    message = str(info.value)
    assert "is not an image data set: it holds 3 images" in message, message
    assert "assets/icon.png" in message and "DIR/<class>/" in message, message
    _folder(root / "many", n=12)  # once enough images are where a data set keeps them
    (root / "many" / "notes.txt").write_text("not an image")
    ds = data.load_dataset(data_dir=root / "many")
    assert len(ds.train_files) + len(ds.test_files) == 12


def test_a_truncated_npy_is_reported_as_damaged_not_pickled(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((100, 784), np.uint8))
    whole = (tmp_path / "x.npy").read_bytes()
    for name, cut in (("half.npy", len(whole) // 2), ("header.npy", 40)):
        (tmp_path / name).write_bytes(whole[:cut])
        with pytest.raises(DataError) as info:
            data.load_dataset(data_dir=tmp_path / name)
        assert f"{name} is truncated or damaged" in str(info.value)
        assert "pickle" not in str(info.value)
    import zipfile

    with zipfile.ZipFile(tmp_path / "cut.npz", "w") as archive:
        archive.writestr("x_train.npy", whole[:500])
        archive.writestr("x_test.npy", whole)
    with pytest.raises(DataError, match=r"cut.npz: array 'x_train' is truncated or damaged"):
        data.load_dataset(data_dir=tmp_path / "cut.npz")
    np.savez(tmp_path / "whole.npz", x_train=np.zeros((100, 784)), x_test=np.zeros((9, 784)))
    archive_bytes = (tmp_path / "whole.npz").read_bytes()
    (tmp_path / "zip.npz").write_bytes(archive_bytes[:len(archive_bytes) // 2])
    with pytest.raises(DataError, match="zip.npz is truncated or damaged"):
        data.load_dataset(data_dir=tmp_path / "zip.npz")
    import pickle

    (tmp_path / "p.npy").write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(DataError, match="p.npy is a pickle"):
        data.load_dataset(data_dir=tmp_path / "p.npy")


# ------------------------------------------------------------------ whole runs


TINY = dict(epochs=1, hidden=(8,), latent_dim=2, iwae_k=2, verbose=0, figures=False)


@pytest.mark.slow
def test_the_largest_seed_trains_and_resumes(tmp_path):
    out = tmp_path / "run"
    tfvae.train(out=out, seed=MAX_SEED, **TINY)
    run = tfvae.train(resume=out, epochs=2, verbose=0, figures=False)
    assert len(run.history) == 2 and run.evaluation["k"] == 2


@pytest.mark.slow
def test_a_folder_with_bad_images_is_refused_before_the_run_or_trains_without_them(tmp_path):
    root = _folder(tmp_path / "photos", layout="classes", n=40)
    (root / "cats" / "001.png").write_bytes(b"\x89PNG\r\n\x1a\n but cut short")
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["train", "--data-dir", str(root), "--epochs", "1",
                                      "--hidden", "8", "--latent-dim", "2", "--iwae-k", "2",
                                      "--batch-size", "8", "--out", str(out)])
    assert result.exit_code == 1 and "cats/001.png" in result.output, result.output
    assert "--bad-images skip" in result.output and not out.exists()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = tfvae.train(out=out, data_dir=str(root), bad_images="skip", batch_size=8, **TINY)
    assert any("leaving out 1 of the 40" in str(w.message) for w in caught)
    assert run.config.bad_images == "skip" and run.evaluation["n"] == 4  # 39 split 90/10


def test_a_huge_first_image_is_refused_with_the_figure_before_a_model_is_built(tmp_path, memory):
    from tfvae.runs.run_data import load_data

    root = _folder(tmp_path / "photos", n=12)
    _png(root / "000.png", size=(3000, 3000), mode="L")  # the first image sets the size
    memory(8)
    config = Config(data_dir=str(root), hidden=(400,), val_fraction=0, batch_size=8)
    _, splits = load_data(config)
    assert config.image_shape == (3000, 3000, 1)
    with pytest.raises(ConfigError, match=r"9,000,000 values per example with --hidden 400 "
                                          r"needs about .* GiB for the weights alone"):
        budget.check_feasible(config, splits)
