"""The ``tfvae`` command: a thin click layer over the library.

Commands parse options, call library functions and print results. TensorFlow
is imported only inside the commands that need it, so ``--help`` is fast.
Errors a user can cause become ``click.ClickException`` (a message and exit
code 1, never a traceback).
"""

from __future__ import annotations

import json
import os
import sys

import click
from tfvae_cli.common import CONTEXT, data_options, handle_errors
from tfvae_cli.diagnose import diagnose
from tfvae_cli.export import export


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="tfvae", prog_name="tfvae")
def cli():
    """Variational autoencoders on TensorFlow Probability.

    \b
    Examples:
      tfvae train                           # Gaussian VAE on embedded MNIST
      tfvae train --latent-dim 2 --out runs/z2
      tfvae evaluate runs/z2 --k 1000 --json
      tfvae sample runs/z2 --n 64 --out samples.png
    """


@cli.command(context_settings=CONTEXT)
@click.option("--model", type=click.Choice(["gaussian", "bernoulli", "ae-gmm"]),
              default="gaussian", show_default=True, help="Model family.")
@data_options
@click.option("--binarize", type=click.Choice(["none", "static", "dynamic", "threshold"]),
              default=None, help="Binarization [default: dynamic for a Bernoulli likelihood, "
              "none for a Gaussian one].")
@click.option("--likelihood", type=click.Choice(["bernoulli", "gaussian"]), default=None,
              help="Observation model [default: bernoulli for pixels, gaussian for "
              "real-valued data such as digits].")
@click.option("--arch", type=click.Choice(["mlp", "conv"]), default="mlp", show_default=True)
@click.option("--epochs", type=int, default=20, show_default=True)
@click.option("--latent-dim", type=int, default=20, show_default=True)
@click.option("--hidden", default="400", show_default=True,
              help="Encoder hidden sizes, e.g. 400 or 512,256.")
@click.option("--decoder-hidden", default=None,
              help="Decoder hidden sizes [default: the encoder's, mirrored]; '' for linear.")
@click.option("--kl-warmup", type=int, default=0, show_default=True,
              help="Epochs of linear KL warm-up (0: none).")
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True, help="Adam learning rate.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--val-fraction", type=float, default=0.05, show_default=True,
              help="Share of the training split held out to pick the best checkpoint.")
@click.option("--min-scale", type=float, default=1e-3, show_default=True,
              help="Floor of the Gaussian likelihood's per-pixel scale.")
@click.option("--iwae-k", type=int, default=100, show_default=True,
              help="Importance samples for the test log-likelihood after training.")
@click.option("--estimator", type=click.Choice(["reinforce", "ema", "nvil", "rloo", "disarm",
                                                "vimco"]),
              default="ema", show_default=True, help="Gradient estimator (bernoulli model).")
@click.option("--baseline-decay", type=float, default=0.9, show_default=True,
              help="Moving-average baseline decay (bernoulli model, ema).")
@click.option("--num-samples", type=int, default=4, show_default=True,
              help="Samples per example for rloo / vimco (bernoulli model).")
@click.option("--learn-prior/--fixed-prior", default=False, show_default=True,
              help="Learned prior logits (bernoulli model).")
@click.option("--components", default="10", show_default=True,
              help="Mixture components, or 'auto' to choose by BIC (ae-gmm model).")
@click.option("--covariance", type=click.Choice(["full", "tied", "diag", "spherical"]),
              default="full", show_default=True, help="Mixture covariance type (ae-gmm model).")
@click.option("--deterministic", is_flag=True,
              help="Turn on TensorFlow op determinism: same seed, same figures exactly "
              "(may be slower).")
@click.option("--strategy", type=click.Choice(["default", "mirrored", "multiworker"]),
              default="default", show_default=True,
              help="tf.distribute strategy: one device, every local GPU (mirrored), or "
              "several machines described by TF_CONFIG (multiworker); --batch-size is the "
              "global batch, split across replicas.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Run directory to create [default: a new folder under runs/].")
@click.option("--resume", type=click.Path(), default=None,
              help="Continue the run in this directory from its last completed epoch "
              "(other options are taken from its config; --epochs may raise the total, "
              "--strategy may change).")
@handle_errors
def train(out, resume, **options):
    """Train a model and write a run directory.

    The run directory holds config.json, checkpoints (last and best),
    metrics.csv/json, TensorBoard logs, evaluation.json and PNG figures.

    \b
    Examples:
      tfvae train
      tfvae train --latent-dim 2 --epochs 30 --out runs/z2
      tfvae train --data-dir /usr/share/datasets/fashion-mnist --binarize static
      tfvae train --dataset digits --likelihood gaussian --hidden 128
      tfvae train --resume runs/z2 --epochs 50
      tfvae train --strategy mirrored --batch-size 512   # every local GPU
    """
    from tfvae.config import Config
    from tfvae.training import default_out
    from tfvae.training import train as train_run

    verbose = 1 if sys.stdout.isatty() else 2
    if resume is not None:
        if out is not None:
            raise click.ClickException("--resume continues a run in place; leave out --out")
        ctx = click.get_current_context()
        extra = {}
        for name in ("epochs", "strategy"):
            if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE:
                extra[name] = options[name]
        click.echo(f"resuming run {resume}", err=True)
        _report(_train_interruptible(resume, train_run, resume=resume, verbose=verbose, **extra))
        return

    if options["components"] != "auto":
        try:
            options["components"] = int(options["components"])
        except ValueError:
            raise click.ClickException(
                f"--components must be a positive integer or 'auto', got {options['components']!r}"
            ) from None
    config = Config(**options)
    out = out or str(default_out(config))
    click.echo(f"training {config.model} model; run directory: {out}", err=True)
    _report(_train_interruptible(out, train_run, config, out=out, verbose=verbose))


def _train_interruptible(run_dir, train_run, *args, **kwargs):
    try:
        return train_run(*args, **kwargs)
    except KeyboardInterrupt:
        raise click.ClickException(
            f"interrupted; completed epochs are saved in {run_dir}; "
            f"continue with: tfvae train --resume {run_dir}"
        ) from None


def _report(run):
    ev = run.evaluation or {}
    click.echo(
        f"done: test elbo {ev.get('elbo', float('nan')):.2f}, "
        f"log-likelihood (k={ev.get('k')}) {ev.get('log_likelihood', float('nan')):.2f} nats; "
        f"run in {run.path}"
    )


@cli.command(context_settings=CONTEXT)
@click.argument("run_dir", type=click.Path())
@click.option("--k", type=int, default=1000, show_default=True,
              help="Importance samples for the log-likelihood estimate.")
@data_options
@click.option("--checkpoint", type=click.Choice(["best", "last"]), default="best",
              show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@handle_errors
def evaluate(run_dir, k, dataset, data_dir, tfds_data_dir, checkpoint, seed, as_json):
    """Evaluate a run: ELBO, reconstruction, KL, IWAE log-likelihood, active units.

    All figures are nats per example; by default on the run's own test split,
    prepared exactly as in training.

    \b
    Examples:
      tfvae evaluate runs/z2
      tfvae evaluate runs/z2 --k 5000 --json
      tfvae evaluate runs/z2 --data-dir /usr/share/datasets/fashion-mnist
    """
    import dataclasses

    from tfvae import runs
    from tfvae.evaluation import evaluate as evaluate_model
    from tfvae.training import load_data

    model, config = runs.load_model(run_dir, checkpoint)
    if dataset is not None or data_dir is not None or tfds_data_dir is not None:
        config = dataclasses.replace(config, dataset=dataset, data_dir=data_dir,
                                     tfds_data_dir=tfds_data_dir)
    expected = (config.input_dim, config.image_shape)
    _, splits = load_data(config)
    if (config.input_dim, config.image_shape) != expected:
        raise click.ClickException(
            f"the data have images of shape {config.image_shape} but the run was trained on "
            f"{expected[1]}; evaluate on data of the same kind"
        )
    results = evaluate_model(model, splits.test, k=k, seed=seed)
    if as_json:
        click.echo(json.dumps(results))
        return
    for name in ("elbo", "reconstruction", "kl", "log_likelihood"):
        click.echo(f"{name:>15}: {results[name]:.3f}")
    click.echo(f"{'k':>15}: {results['k']}")
    click.echo(f"{'active_units':>15}: {results['active_units']} of {len(results['kl_per_dim'])}")
    click.echo(f"{'examples':>15}: {results['n']}")


@cli.command(context_settings=CONTEXT)
@click.argument("run_dir", type=click.Path())
@click.option("--n", type=int, default=64, show_default=True, help="Number of samples.")
@click.option("--out", type=click.Path(dir_okay=False), required=True,
              help="Output file: .png (grid) or .npy (probabilities or means).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--backend", type=click.Choice(["keras", "savedmodel", "tflite"]), default=None,
              help="Draw the sampler's noise with numpy and run it through this backend; "
              "the same --seed gives the same images on every backend [default: keras for a "
              "run (prior sampling with TFP, as in training figures), tflite for an export].")
@click.option("--precision", type=click.Choice(["float32", "float16", "int8"]),
              default="float32", show_default=True, help="LiteRT file to run (tflite backend).")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
@handle_errors
def sample(run_dir, n, out, seed, backend, precision, overwrite):
    """Draw samples from a trained model's prior and decode them.

    RUN_DIR is a run directory or an export directory (from `tfvae export`).
    With --backend, the noise comes from numpy (seeded) and goes through the
    model's sampler: Keras for a run, the SavedModel or a LiteRT file
    otherwise. For a run with --backend savedmodel or tflite, the run is first
    exported to a temporary directory.

    \b
    Examples:
      tfvae sample runs/z2 --n 64 --out samples.png
      tfvae sample runs/z2 --n 1000 --out samples.npy --seed 3
      tfvae sample exported/gaussian --n 64 --out lite.png --precision int8
      tfvae sample runs/z2 --n 64 --out sm.npy --backend savedmodel
    """
    import tempfile

    import numpy as np

    suffix = os.path.splitext(out)[1].lower()
    if suffix not in (".png", ".npy"):
        raise click.ClickException(f"--out must end in .png or .npy, got {out!r}")
    if n <= 0:
        raise click.ClickException(f"--n must be a positive integer, got {n}")
    if os.path.exists(out) and not overwrite:
        raise click.ClickException(f"{out} exists; pass --overwrite to replace it")
    from tfvae import export as export_lib

    if export_lib.is_export_dir(run_dir):
        if backend == "keras":
            raise click.ClickException(
                f"{run_dir} is an export: use --backend savedmodel or tflite, or give the run "
                "directory for keras"
            )
        exported = export_lib.ExportDir(run_dir)
        images = exported.sample(n, seed, backend or "tflite", precision)
        image_shape = tuple(exported.manifest["image_shape"])
    else:
        from tfvae import runs

        model, _ = runs.load_model(run_dir, "best")
        image_shape = model.image_shape
        if backend is None:
            images = model.sample(n, seed=seed)
        elif backend == "keras":
            images = export_lib.sample_from_noise(model, export_lib.draw_noise(model, n, seed))
        else:
            with tempfile.TemporaryDirectory(prefix="tfvae-sample-") as tmp:
                fmt = "savedmodel" if backend == "savedmodel" else "tflite"
                export_lib.export(model, os.path.join(tmp, "export"), formats=fmt,
                                  precisions=precision)
                exported = export_lib.ExportDir(os.path.join(tmp, "export"))
                images = exported.sample(n, seed, backend, precision)
    if suffix == ".npy":
        np.save(out, np.asarray(images, np.float32), allow_pickle=False)
    else:
        from tfvae.figures import save_grid

        save_grid(out, images, image_shape)
    click.echo(f"wrote {n} samples to {out}")


cli.add_command(export)
cli.add_command(diagnose)


def main():
    cli(prog_name="tfvae")


if __name__ == "__main__":
    main()
