"""`tfvae diagnose` names families right; `tfvae sample --checkpoint`; discrete cluster colours."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from tfvae_cli.diagnose import RUN_NAMES
from tfvae_cli.main import cli

from tfvae.config import Config
from tfvae.runs.families import FAMILIES

ROOT = Path(__file__).resolve().parents[1]
ESTIMATOR_FAMILIES = [name for name, spec in FAMILIES.items() if spec.estimators]
OTHER_FAMILIES = [name for name, spec in FAMILIES.items() if not spec.estimators]
#: "a" before a vowel ("a ae-gmm run", "a autoencoder"): the grammar slip this guards against.
A_BEFORE_VOWEL = re.compile(r"\ba [aeiou]", re.I)


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def config_only_run(tmp_path, model) -> Path:
    """A run directory with only its config.json: enough for diagnose's family check."""
    run = tmp_path / model
    run.mkdir()
    config = Config(model=model, input_dim=784, image_shape=(28, 28, 1))
    (run / "config.json").write_text(json.dumps(config.to_dict()))
    return run


# ---------------------------------------------------------------- diagnose


def test_every_family_has_a_name_for_messages():
    assert set(RUN_NAMES) == set(FAMILIES)
    assert not any(A_BEFORE_VOWEL.search(name) for name in RUN_NAMES.values())
    assert RUN_NAMES["gaussian"] == "a Gaussian VAE" and RUN_NAMES["ae-gmm"] == "an autoencoder"


def test_diagnose_help_names_the_families_it_accepts():
    result = invoke("diagnose", "--help")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "Bernoulli-latent run (--model bernoulli or sbn)" in text
    assert ESTIMATOR_FAMILIES == ["bernoulli", "sbn"]
    assert "bernoulli run" not in text


@pytest.mark.parametrize("model", OTHER_FAMILIES)
def test_diagnose_refuses_other_families_by_name(tmp_path, model):
    run = config_only_run(tmp_path, model)
    result = invoke("diagnose", run)
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert f"is {RUN_NAMES[model]} run (--model {model})" in text
    assert "trained with --model bernoulli or sbn" in text
    assert not A_BEFORE_VOWEL.search(text), text


@pytest.mark.parametrize("model", ESTIMATOR_FAMILIES)
def test_diagnose_accepts_bernoulli_and_sbn(tmp_path, model):
    # Past the family check, the run is loaded: this one has no checkpoint yet.
    result = invoke("diagnose", config_only_run(tmp_path, model))
    assert result.exit_code == 1
    assert "has no checkpoint" in result.output and "diagnose is for" not in result.output


# ---------------------------------------------------------------- sample --checkpoint


def test_sample_checkpoint_chooses_the_run_weights(tiny_run, tmp_path):
    from tfvae.runs.store import load_model

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    for which in ("best", "last"):
        out = tmp_path / which / "samples.npy"  # its folder is created
        result = invoke("sample", run, "--n", 5, "--seed", 2, "--checkpoint", which,
                        "--out", out)
        assert result.exit_code == 0, result.output
        model, _ = load_model(run, which)
        np.testing.assert_allclose(np.load(out), model.sample(5, seed=2), atol=1e-6)
    # Damage the best weights: the default refuses them, --checkpoint last still samples.
    best = next((run / "checkpoints").glob("best*.h5"))
    content = bytearray(best.read_bytes())
    middle = len(content) // 2
    content[middle:middle + 64] = bytes(64)
    best.write_bytes(bytes(content))
    result = invoke("sample", run, "--n", 5, "--out", tmp_path / "default.npy")
    assert result.exit_code == 1 and best.name in result.output, result.output
    result = invoke("sample", run, "--n", 5, "--seed", 2, "--checkpoint", "last",
                    "--out", tmp_path / "last.npy")
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(np.load(tmp_path / "last.npy"),
                                  np.load(tmp_path / "last" / "samples.npy"))


def test_sample_refuses_checkpoint_for_an_export(tmp_path):
    exported = ROOT / "exported" / "gaussian"
    result = invoke("sample", exported, "--n", 3, "--checkpoint", "last",
                    "--out", tmp_path / "s.npy")
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert "is an export (made from the best checkpoint)" in text
    assert "`tfvae export RUN_DIR --checkpoint last --out DIR`" in text
    assert not (tmp_path / "s.npy").exists()
    result = invoke("sample", exported, "--n", 3, "--out", tmp_path / "s.npy")
    assert result.exit_code == 0, result.output
    assert np.load(tmp_path / "s.npy").shape == (3, 784)


def test_sample_help_offers_checkpoint():
    result = invoke("sample", "--help")
    assert result.exit_code == 0, result.output
    assert "--checkpoint [best|last]" in result.output and "default: best" in result.output


# ---------------------------------------------------------------- clusters.png


@pytest.fixture
def figures_made(monkeypatch):
    """The matplotlib figures tfvae.figures makes while the test runs."""
    from tfvae import figures

    made = []
    original = figures._figure

    def record(*args, **kwargs):
        made.append(original(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(figures, "_figure", record)
    return made


def colour_bar(fig):
    """The figure's one colour bar (its scatter's)."""
    bars = [c.colorbar for ax in fig.axes for c in ax.collections
            if getattr(c, "colorbar", None) is not None]
    assert len(bars) == 1
    return bars[0]


def assert_discrete(bar, scatter_labels, classes):
    from matplotlib.colors import BoundaryNorm

    assert isinstance(bar.norm, BoundaryNorm)
    np.testing.assert_array_equal(bar.norm.boundaries, np.arange(classes + 1) - 0.5)
    assert bar.cmap.N == classes  # one colour per class, no gradient between them
    np.testing.assert_array_equal(bar.get_ticks(), np.arange(classes))
    colours = bar.mappable.get_facecolors()[:, :3]
    for k in np.unique(scatter_labels):  # every point wears its class's colour
        np.testing.assert_allclose(colours[scatter_labels == k], np.broadcast_to(
            bar.cmap(k)[:3], colours[scatter_labels == k].shape))
    assert len({tuple(bar.cmap(k)) for k in range(classes)}) == classes


def test_latent_scatter_colour_bar_is_discrete(figures_made, tmp_path):
    from tfvae.figures import save_latent_scatter

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 50)
    ellipses = [(np.zeros(2), np.eye(2))] * 4  # 4 components, the last one empty
    save_latent_scatter(tmp_path / "c.png", rng.normal(size=(50, 2)), labels,
                        ellipses=ellipses, label_name="mixture component")
    bar = colour_bar(figures_made[-1])
    assert_discrete(bar, labels, 4)
    assert bar.ax.get_ylabel() == "mixture component"


def test_clusters_png_has_one_colour_per_component(make_model, binary_images, figures_made,
                                                   tmp_path):
    from tfvae.runs.families import family

    model = make_model("ae-gmm", latent_dim=2, components=5)
    model.post_fit(binary_images, seed=0)
    paths = family("ae-gmm").figures(model, tmp_path, binary_images)
    assert (tmp_path / "clusters.png") in paths and (tmp_path / "clusters.png").stat().st_size
    clusters = [fig for fig in figures_made if len(fig.axes) == 2]
    assert len(clusters) == 1
    labels = model.mixture.predict(model.encode_numpy(binary_images))
    assert_discrete(colour_bar(clusters[0]), labels, 5)
