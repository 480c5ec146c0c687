"""The ``tfvae`` command: a thin click layer over the library.

Commands parse options, call library functions and print results. TensorFlow
is imported only inside the commands that need it, so ``--help`` is fast.
Errors a user can cause become ``click.ClickException`` (a message and exit
code 1, never a traceback).
"""

from __future__ import annotations

import functools
import json
import os
import sys

import click

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _quiet_tensorflow():
    # The application (not the library) decides how chatty TensorFlow's C++
    # logging is; users can still override it from their environment.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def handle_errors(func):
    """Turns library errors into click errors with the library's message."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        _quiet_tensorflow()
        try:
            return func(*args, **kwargs)
        except click.ClickException:
            raise
        except (ValueError, TypeError) as exc:
            raise click.ClickException(str(exc)) from None
        except FileNotFoundError as exc:
            raise click.ClickException(f"file not found: {exc.filename or exc}") from None
        except PermissionError as exc:
            raise click.ClickException(f"permission denied: {exc.filename or exc}") from None
        except OSError as exc:
            raise click.ClickException(f"{type(exc).__name__}: {exc}") from None

    return wrapper


def data_options(func):
    """--dataset / --data-dir / --tfds-data-dir, shared by train and evaluate."""
    func = click.option(
        "--tfds-data-dir", type=click.Path(file_okay=False), default=None,
        help="tensorflow-datasets data directory holding prepared data sets.",
    )(func)
    func = click.option(
        "--data-dir", type=click.Path(), default=None,
        help="A directory of MNIST-format IDX .gz files, or one .npz or .npy file.",
    )(func)
    func = click.option(
        "--dataset", default=None,
        help="mnist-10k (embedded, default), digits (scikit-learn), or a "
        "tensorflow-datasets name (mnist, fashion_mnist, binarized_mnist, kmnist...).",
    )(func)
    return func


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
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Run directory to create [default: a new folder under runs/].")
@handle_errors
def train(out, **options):
    """Train a model and write a run directory.

    The run directory holds config.json, checkpoints (last and best),
    metrics.csv/json, TensorBoard logs, evaluation.json and PNG figures.

    \b
    Examples:
      tfvae train
      tfvae train --latent-dim 2 --epochs 30 --out runs/z2
      tfvae train --data-dir /usr/share/datasets/fashion-mnist --binarize static
      tfvae train --dataset digits --likelihood gaussian --hidden 128
    """
    from tfvae.config import Config
    from tfvae.training import default_out, train as train_run

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
    verbose = 1 if sys.stdout.isatty() else 2
    try:
        run = train_run(config, out=out, verbose=verbose)
    except KeyboardInterrupt:
        raise click.ClickException(
            f"interrupted; completed epochs are saved in {out} (checkpoints/last.weights.h5)"
        ) from None
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
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
@handle_errors
def sample(run_dir, n, out, seed, overwrite):
    """Draw samples from a trained model's prior and decode them.

    \b
    Examples:
      tfvae sample runs/z2 --n 64 --out samples.png
      tfvae sample runs/z2 --n 1000 --out samples.npy --seed 3
    """
    import numpy as np

    from tfvae import runs

    suffix = os.path.splitext(out)[1].lower()
    if suffix not in (".png", ".npy"):
        raise click.ClickException(f"--out must end in .png or .npy, got {out!r}")
    if n <= 0:
        raise click.ClickException(f"--n must be a positive integer, got {n}")
    if os.path.exists(out) and not overwrite:
        raise click.ClickException(f"{out} exists; pass --overwrite to replace it")
    model, _ = runs.load_model(run_dir, "best")
    images = model.sample(n, seed=seed)
    if suffix == ".npy":
        np.save(out, images.astype(np.float32), allow_pickle=False)
    else:
        from tfvae.figures import save_grid

        save_grid(out, images, model.image_shape)
    click.echo(f"wrote {n} samples to {out}")


def main():
    cli(prog_name="tfvae")


if __name__ == "__main__":
    main()
