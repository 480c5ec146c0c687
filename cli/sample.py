"""``tfvae sample``: images from a run or an export, on any backend, from seeded noise."""

from __future__ import annotations

import os

import click
from click.core import ParameterSource
from tfvae_cli.common import CONTEXT, handle_errors

BACKENDS = ("keras", "savedmodel", "tflite")
PRECISIONS = ("float32", "float16", "int8")


@click.command(context_settings=CONTEXT)
@click.argument("run_dir", type=click.Path())
@click.option("--n", type=int, default=64, show_default=True, help="Number of samples.")
@click.option("--out", type=click.Path(dir_okay=False), required=True,
              help="Output file: .png (grid) or .npy (probabilities or means).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--backend", type=click.Choice(BACKENDS), default=None,
              help="Run the sampler through this backend [default: keras for a run, tflite "
              "for an export]. The noise always comes from numpy with --seed, so every "
              "backend gives the same images for the same seed (to the precision's rounding).")
@click.option("--precision", type=click.Choice(PRECISIONS), default=None,
              help="LiteRT file to run (tflite backend) [default: the most precise one the "
              "export holds].")
@click.option("--pixels", is_flag=True,
              help="Draw the pixels from p(x|z) instead of its mean (a run's Keras model): "
              "bits for a Bernoulli likelihood, 8-bit values for the logistic (saved as uint8 "
              "in .npy).")
@click.option("--checkpoint", type=click.Choice(["best", "last"]), default="best",
              show_default=True,
              help="Weights of a run directory to sample from: best (lowest validation loss) "
              "or last (last epoch). An export holds the weights it was exported with.")
@click.option("--no-verify", is_flag=True,
              help="Run an export's files without checking them against the manifest's sha256.")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
@handle_errors
def sample(run_dir, n, out, seed, backend, precision, pixels, checkpoint, no_verify, overwrite):
    """Draw samples from a trained model's prior and decode them.

    RUN_DIR is a run directory or an export directory (from `tfvae export`).
    The sampler's noise is drawn with numpy from --seed and turned into images
    by the chosen backend: the Keras model for a run, the SavedModel or a
    LiteRT file of an export. For a run with --backend savedmodel or tflite,
    the run is first exported to a temporary directory. The folder of --out
    is created if need be.

    \b
    Examples:
      tfvae sample runs/z2 --n 64 --out runs/z2-samples.png
      tfvae sample runs/z2 --n 1000 --out runs/z2-samples.npy --seed 3
      tfvae sample runs/z2 --n 64 --out runs/z2-last.png --checkpoint last
      tfvae sample exported/gaussian --n 64 --out runs/lite.png --precision int8
      tfvae sample runs/z2 --n 64 --out runs/z2-sm.npy --backend savedmodel
      tfvae sample runs/colour --n 16 --out runs/colour-pixels.npy --pixels  # 8-bit draws
    """
    suffix = os.path.splitext(out)[1].lower()
    if suffix not in (".png", ".npy"):
        raise click.ClickException(f"--out must end in .png or .npy, got {out!r}")
    if n <= 0:
        raise click.ClickException(f"--n must be a positive integer, got {n}")
    if os.path.exists(out) and not overwrite:
        raise click.ClickException(f"{out} exists; pass --overwrite to replace it")
    from tfvae.export.manifest import is_export_dir

    if pixels and backend not in (None, "keras"):
        raise click.ClickException("--pixels draws from the run's Keras model: leave out "
                                   f"--backend {backend} (exports compute the mean image)")
    if is_export_dir(run_dir):
        if pixels:
            raise click.ClickException(f"{run_dir} is an export: --pixels needs the run "
                                       "directory (exports compute the mean image)")
        source = click.get_current_context().get_parameter_source("checkpoint")
        if source is not ParameterSource.DEFAULT:
            _refuse_checkpoint(run_dir, checkpoint)
        images, image_shape = _from_export(run_dir, n, seed, backend, precision, not no_verify)
        levels = None
    else:
        images, image_shape, levels = _from_run(run_dir, n, seed, backend, precision, pixels,
                                                checkpoint)
    folder = os.path.dirname(out)
    if folder:
        os.makedirs(folder, exist_ok=True)
    _write(out, suffix, images, image_shape, levels)
    click.echo(f"wrote {n} samples to {out}")


def _refuse_checkpoint(path, checkpoint):
    """--checkpoint chooses a run's weights; an export holds the one it was made from."""
    from tfvae.export.manifest import read_manifest

    run = read_manifest(path).get("training", {}).get("run", {})
    held = f" (made from the {run['checkpoint']} checkpoint)" if run.get("checkpoint") else ""
    raise click.ClickException(
        f"{path} is an export{held}: --checkpoint chooses the weights of a run directory. "
        f"Leave it out, give the run directory instead, or export that checkpoint with "
        f"`tfvae export RUN_DIR --checkpoint {checkpoint} --out DIR`"
    )


def _from_export(path, n, seed, backend, precision, verify):
    from tfvae.export import ExportDir

    if backend == "keras":
        raise click.ClickException(
            f"{path} is an export: use --backend savedmodel or tflite, or give the run "
            "directory for keras"
        )
    exported = ExportDir(path, verify=verify)
    images = exported.sample(n, seed, backend or "tflite", precision)
    return images, tuple(exported.manifest["image_shape"])


def _from_run(run_dir, n, seed, backend, precision, pixels, checkpoint):
    import tempfile

    from tfvae.runs.layout import check_run_dir

    check_run_dir(run_dir)
    from tfvae.runs.store import load_model

    model, _ = load_model(run_dir, checkpoint)
    levels = model.likelihood_levels if pixels else None
    if backend in (None, "keras"):
        return model.sample(n, seed=seed, pixels=pixels), model.image_shape, levels
    from tfvae.export import ExportDir, export

    with tempfile.TemporaryDirectory(prefix="tfvae-sample-") as tmp:
        folder = os.path.join(tmp, "export")
        export(model, folder, formats="savedmodel" if backend == "savedmodel" else "tflite",
               precisions=precision or "float32")
        images = ExportDir(folder).sample(n, seed, backend, precision)
    return images, model.image_shape, levels


def _write(out, suffix, images, image_shape, levels=None):
    import numpy as np

    if suffix == ".npy":
        if levels and levels > 2:  # pixel draws on the grid: the integers themselves
            images = np.rint(np.asarray(images) * (levels - 1)).astype(np.uint8 if levels <= 256
                                                                      else np.int32)
        else:
            images = np.asarray(images, np.float32)
        np.save(out, images, allow_pickle=False)
    else:
        from tfvae.figures import save_grid

        save_grid(out, images, image_shape)
