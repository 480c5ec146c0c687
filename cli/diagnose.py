"""``tfvae diagnose``: gradient-estimator variance of a Bernoulli-latent run (bernoulli, sbn)."""

from __future__ import annotations

import json
import math

import click
from tfvae_cli.common import CONTEXT, handle_errors

from tfvae.config import check_seed

#: ``--model`` -> how messages name a run of that family, article included.
RUN_NAMES = {
    "gaussian": "a Gaussian VAE",
    "bernoulli": "a Bernoulli VAE",
    "sbn": "a sigmoid belief network",
    "ae-gmm": "an autoencoder",
}


def run_name(model: str) -> str:
    """``"a Gaussian VAE"``, ``"an autoencoder"``: a family's run, named for a sentence."""
    return RUN_NAMES.get(model, f"a --model {model}")


def _or(names) -> str:
    names = list(names)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


@click.command(context_settings=CONTEXT)
@click.argument("run_dir", type=click.Path())
@click.option("--n-examples", type=int, default=256, show_default=True,
              help="Test (or validation) examples in the fixed batch.")
@click.option("--draws", type=int, default=50, show_default=True,
              help="Gradient draws per estimator.")
@click.option("--checkpoint", type=click.Choice(["best", "last"]), default="best",
              show_default=True,
              help="Weights to diagnose: best (lowest validation loss) or last (last epoch).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@handle_errors
def diagnose(run_dir, n_examples, draws, checkpoint, seed, as_json):
    """Compare gradient estimators on a trained Bernoulli-latent run (--model bernoulli or sbn).

    At the run's parameters and on a fixed batch of its test split, draws the
    encoder gradient --draws times per estimator and prints its variance
    (trace of the covariance) and signal-to-noise ratios: norm snr with the
    draws' own noise taken out, snr not (compare it only at equal --draws);
    rank estimators with 50 draws or more. ema uses the run's own running
    baseline (a run without one: the batch's leave-one-out mean);
    nvil and relax appear only for runs trained with them (their
    baseline network, their learned control variate); vimco's gradient is of
    the k-sample bound, the others' of the ELBO.

    \b
    Examples:
      tfvae diagnose runs/bern
      tfvae diagnose runs/bern --draws 100 --n-examples 512 --json
      tfvae diagnose runs/sbn --checkpoint last
    """
    from tfvae.runs.families import FAMILIES, family
    from tfvae.runs.store import load_config

    check_seed(seed)
    if n_examples <= 0:
        raise click.ClickException(f"--n-examples must be a positive integer, got {n_examples}")
    if draws < 2:
        raise click.ClickException(f"--draws must be an integer >= 2, got {draws}")
    config = load_config(run_dir)
    if config.inference != "amortized":
        raise click.ClickException(
            f"{run_dir} was trained by --inference {config.inference}, without an encoder or a "
            "gradient estimator; diagnose compares estimators of --inference amortized runs")
    if not family(config.model).estimators:
        accepted = [name for name, spec in FAMILIES.items() if spec.estimators]
        raise click.ClickException(
            f"{run_dir} is {run_name(config.model)} run (--model {config.model}): it has no "
            "gradient estimators to compare; diagnose is for Bernoulli-latent runs, "
            f"trained with --model {_or(accepted)}"
        )
    from tfvae.diagnostics import gradient_variance
    from tfvae.runs.run_data import load_data
    from tfvae.runs.store import load_model

    model, config = load_model(run_dir, checkpoint)
    _, splits = load_data(config)
    x = splits.test_rows(n_examples)
    results = gradient_variance(model, x, num_draws=draws, seed=seed)
    values = model.baseline_mean.numpy()  # one per stochastic layer for an sbn
    baseline = float(values) if values.ndim == 0 else [float(v) for v in values]
    started = bool(float(model.baseline_initialized.numpy()) > 0)
    shown = f"{baseline:.2f}" if values.ndim == 0 else ", ".join(f"{v:.2f}" for v in baseline)
    if as_json:  # strict JSON: a non-finite figure (draws that never vary) is null
        figures = {name: {key: None if isinstance(v, float) and not math.isfinite(v) else v
                          for key, v in r.items()} for name, r in results.items()}
        click.echo(json.dumps({"run": str(run_dir), "trained_with": config.estimator,
                               "baseline": baseline if started else None,
                               "baseline_started": started, "n_examples": int(len(x)),
                               "draws": draws, "estimators": figures}))
        return
    # A run trained without a running baseline never started one: ema then takes each
    # example's leave-one-out batch mean, as on a first batch.
    held = (f"running baseline {shown}" if started else
            "no running baseline: ema takes the batch's leave-one-out mean")
    click.echo(f"run trained with {config.estimator} ({held}); {len(x)} examples, "
               f"{draws} draws")
    width = max([10, *map(len, results)])
    click.echo(f"{'estimator':>{width}} {'samples':>7} {'variance':>12} {'mean |g|^2':>12} "
               f"{'snr':>8} {'norm snr':>9}  objective")
    for name, r in results.items():
        objective = r["objective"] + (" (biased)" if r["biased"] else "")
        click.echo(f"{name:>{width}} {r['num_samples']:7d} {r['variance']:12.4g} "
                   f"{r['mean_sq_norm']:12.4g} {r['snr']:8.3f} {r['norm_snr']:9.3f}  "
                   f"{objective}")
