"""``tfvae sample``: images from a run or an export, on any backend, from seeded noise."""

from __future__ import annotations

import contextlib
import os

import click
from click.core import ParameterSource
from tfvae_cli.common import CONTEXT, handle_errors

BACKENDS = ("keras", "savedmodel", "tflite")
PRECISIONS = ("float32", "float16", "int8")
#: Most images one PNG grid shows (more would be too small to see); a .npy takes any number.
MAX_GRID = 1024
#: Image values made per step: samples are decoded a chunk at a time and a .npy written
#: chunk by chunk, so memory holds the noise and one chunk, whatever --n.
CHUNK_VALUES = 1 << 22


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
    if suffix == ".png" and n > MAX_GRID:
        raise click.ClickException(f"a .png grid shows at most {MAX_GRID} samples; write "
                                   f"--n {n} samples to a .npy file instead")
    if os.path.exists(out) and not overwrite:
        raise click.ClickException(f"{out} exists; pass --overwrite to replace it")
    from tfvae.config import check_seed
    from tfvae.export.manifest import is_export_dir

    check_seed(seed)

    if pixels and backend not in (None, "keras"):
        raise click.ClickException("--pixels draws from the run's Keras model: leave out "
                                   f"--backend {backend} (exports compute the mean image)")
    with contextlib.ExitStack() as stack:
        if is_export_dir(run_dir):
            if pixels:
                raise click.ClickException(f"{run_dir} is an export: --pixels needs the run "
                                           "directory (exports compute the mean image)")
            source = click.get_current_context().get_parameter_source("checkpoint")
            if source is not ParameterSource.DEFAULT:
                _refuse_checkpoint(run_dir, checkpoint)
            sampler = _from_export(run_dir, seed, backend, precision, not no_verify)
        else:
            sampler = _from_run(run_dir, seed, backend, precision, pixels, checkpoint, stack)
        folder = os.path.dirname(out)
        if folder:
            os.makedirs(folder, exist_ok=True)
        _write(out, suffix, n, seed, *sampler)
    click.echo(f"wrote {n} samples to {click.format_filename(out)}")


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


def _from_export(path, seed, backend, precision, verify):
    """``(noise inputs, generate(noise, chunk) -> images, image shape, levels)`` of an export."""
    from tfvae.export import ExportDir
    from tfvae.export.export_dir import noise_inputs

    if backend == "keras":
        raise click.ClickException(
            f"{path} is an export: use --backend savedmodel or tflite, or give the run "
            "directory for keras"
        )
    exported = ExportDir(path, verify=verify)

    def generate(noise, chunk):
        return exported.run("sample", noise, backend or "tflite", precision)["image"]

    return (noise_inputs(exported.manifest), generate,
            tuple(exported.manifest["image_shape"]), None)


def _from_run(run_dir, seed, backend, precision, pixels, checkpoint, stack):
    """What :func:`_from_export` gives, for a run (exported to a temporary folder if asked)."""
    import tempfile

    from tfvae.runs.layout import check_run_dir

    check_run_dir(run_dir)
    from tfvae.runs.store import load_model

    model, _ = load_model(run_dir, checkpoint)
    model.check_ready()
    levels = model.likelihood_levels if pixels else None
    if backend in (None, "keras"):
        from tfvae.runtime import stateless_seed

        def generate(noise, chunk):
            codes = model.codes_for(noise)
            if not pixels:
                return model.decode_mean(codes).numpy()
            # The first chunk draws as model.sample(n, seed, pixels=True) does (salt 3).
            draw_seed = stateless_seed(seed, 3 + 2 * chunk)
            return model.decode(codes).sample(seed=draw_seed).numpy().astype("float32")

        return model.noise_inputs(), generate, model.image_shape, levels
    from tfvae.export import ExportDir, export

    folder = os.path.join(stack.enter_context(
        tempfile.TemporaryDirectory(prefix="tfvae-sample-")), "export")
    export(model, folder, formats="savedmodel" if backend == "savedmodel" else "tflite",
           precisions=precision or "float32")
    exported = ExportDir(folder)

    def generate(noise, chunk):
        return exported.run("sample", noise, backend, precision)["image"]

    return model.noise_inputs(), generate, model.image_shape, levels


def _write(out, suffix, n, seed, inputs, generate, image_shape, levels=None):
    """Draws the noise, then decodes and writes the samples a chunk at a time."""
    import math

    import numpy as np

    from tfvae import budget
    from tfvae.sampler_noise import draw

    budget.check_sample(n, sum(math.prod(spec.shape) for spec in inputs), "--n")
    width = math.prod(image_shape)
    dtype = np.dtype(np.float32 if not levels or levels <= 2 else
                     np.uint8 if levels <= 256 else np.int32)
    if suffix == ".npy":
        _check_disk(out, n * width * dtype.itemsize)
    noise = draw(inputs, n, seed)
    rows = max(1, CHUNK_VALUES // width)
    chunks = [(i, start, min(n, start + rows)) for i, start in enumerate(range(0, n, rows))]

    def images(i, start, stop):
        return np.asarray(generate({k: v[start:stop] for k, v in noise.items()}, i), np.float32)

    if suffix == ".png":
        from tfvae.figures import save_grid

        save_grid(out, np.concatenate([images(*c) for c in chunks]), image_shape)
        return

    def rows_of(i, start, stop):  # pixel draws on the grid: the integers themselves
        values = images(i, start, stop)
        return values if dtype == np.float32 else np.rint(values * (levels - 1)).astype(dtype)

    _write_npy(out, (n, width), dtype, chunks, rows_of)


def _write_npy(out, shape, dtype, chunks, images):
    """An .npy written chunk by chunk (its header, then each chunk's rows), renamed into place
    when whole: memory holds one chunk, and a reader never sees half a file."""
    import numpy as np

    partial = os.path.join(os.path.dirname(out) or ".",
                           f".{os.path.basename(out)}.{os.getpid()}.partial")
    handle = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(handle, "wb") as stream:
            np.lib.format.write_array_header_1_0(stream, {
                "descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                "shape": shape})
            for chunk in chunks:
                stream.write(np.ascontiguousarray(images(*chunk), dtype).tobytes())
        os.replace(partial, out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise


def _check_disk(out, nbytes):
    import shutil

    from tfvae import budget

    folder = os.path.dirname(os.path.abspath(out))
    while not os.path.isdir(folder):  # the folder of --out is created later
        folder = os.path.dirname(folder)
    free = shutil.disk_usage(folder).free
    if nbytes > free:
        raise click.ClickException(
            f"{click.format_filename(out)} would take about {budget.gib(nbytes)}, and the disk "
            f"holding {click.format_filename(folder)} has {budget.gib(free)} free: use a "
            "smaller --n")
