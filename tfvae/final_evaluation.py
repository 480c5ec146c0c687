"""The end of a run: best weights, post-fit extras, test evaluation, figures.

:func:`finish_run` is what ``tfvae train`` does after its last epoch (and
what ``tfvae train --resume`` does for a run interrupted during it).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tfvae import files
from tfvae.errors import TfvaeWarning
from tfvae.runs import layout, record
from tfvae.runs.families import family_for, family_of
from tfvae.runs.run_data import train_float
from tfvae.runs.store import Run, load_model
from tfvae.runtime import release_memory


def finish_run(out: Path, config, splits, data_info: dict, figures: bool = True, model=None,
               progress: Callable | None = None) -> Run:
    """Loads the best checkpoint, fits extras, evaluates on test, writes figures.

    Args:
      out: the run directory (its record holds at least one epoch).
      config: its configuration (data fields set).
      splits: its data, prepared as in training.
      data_info: what ``run.json`` records about the data.
      figures: write the PNG figures.
      model: the trained model to load the best weights into, or None to
        build one.
      progress: passed to :func:`tfvae.evaluate`.

    Returns:
      The :class:`Run`, its model the best checkpoint with its extras.
    """
    from tfvae.evaluation import evaluate

    state = record.read(out)
    record.write_status(out, config, "evaluating", state, data=data_info)
    # Training's freed scratch (compilation, traces) goes back to the system
    # before evaluation allocates its own.
    release_memory()
    model, _ = load_model(out, "best", extras=False, into=model)
    spec = family_for(config)
    if spec.post_fit is not None:
        spec.post_fit(model, train_float(splits, config.seed), config.seed)
    if spec.save_extras is not None:
        with files.disk_errors(out, "the model's extra files"):
            spec.save_extras(model, out)
    results = evaluate(model, splits.test, k=config.iwae_k, seed=config.seed, progress=progress,
                       dequantized_levels=splits.dequantized_levels)
    note = spec.note(config) if spec.note is not None else None
    if note:
        results["note"] = note
    if results["active_units"] == 0:
        warnings.warn(
            f"the latent code is unused: no active unit (KL {results['kl']:.3g} nats), so "
            "samples ignore it; train longer, with --kl-warmup, or (real-valued data) with "
            "--obs-scale decoder", TfvaeWarning, stacklevel=2)
    files.atomic_write_json(out / layout.EVALUATION, results)
    if figures:
        with files.disk_errors(out, f"the figures in {layout.FIGURES}/"):
            write_figures(out, model, splits, state.history)
    status = record.write_status(out, config, "completed", state, data=data_info, test=results)
    return Run(path=out, config=config, model=model, status=status, history=state.history)


def write_figures(out: Path, model, splits, history) -> list[Path]:
    """Reconstructions, prior samples, training curves, latent manifold/scatter.

    Each figure replaces its file whole (a temporary file and a rename), in a
    ``figures/`` folder that is checked not to be a link.
    """
    from tfvae import figures as fig

    layout.check_entries(out)
    folder = out / layout.FIGURES
    folder.mkdir(exist_ok=True)
    shape = model.image_shape
    test = splits.test_rows(2000 if model.latent_dim == 2 else 10)
    x = test[:10]
    paths = [
        fig.save_reconstructions(folder / "reconstructions.png", x, model.reconstruct(x), shape),
        fig.save_grid(folder / "samples.png", model.sample(64, seed=0), shape, "samples"),
    ]
    if history:
        paths.append(fig.save_curves(folder / "curves.png", history))
    if model.latent_dim == 2:
        quantiles = model.latent_quantiles()
        if quantiles is not None:
            paths.append(fig.save_manifold(folder / "manifold.png",
                                           lambda z: model.decode_mean(z).numpy(),
                                           shape, quantiles))
        codes = np.asarray(model.posterior_code(test.astype(np.float32)))
        paths.append(fig.save_latent_scatter(
            folder / "latent.png", codes,
            None if splits.y_test is None else splits.y_test[:2000], label_name="label"))
    spec = family_of(model)
    if spec.figures is not None:
        paths += spec.figures(model, folder, test)
    return paths
