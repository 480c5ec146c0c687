"""``tfvae evaluate``: test figures of a run, as in training or on other data."""

from __future__ import annotations

import json

import click
from tfvae_cli.common import CONTEXT, DATA_FIELDS, EvaluationProgress, config_options, handle_errors


@click.command(context_settings=CONTEXT)
@click.argument("run_dir", type=click.Path())
@click.option("--k", type=int, default=1000, show_default=True,
              help="Importance samples for the log-likelihood estimate.")
@config_options(DATA_FIELDS, defaults=None)
@click.option("--checkpoint", type=click.Choice(["best", "last"]), default="best",
              show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@handle_errors
def evaluate(run_dir, k, dataset, data_dir, tfds_data_dir, checkpoint, seed, as_json):
    """Evaluate a run: ELBO, reconstruction, KL, IWAE log-likelihood, active units.

    All figures are nats per example; by default on the run's own test split,
    prepared exactly as in training. Long evaluations (large --k) show their
    progress and the expected time on stderr.

    \b
    Examples:
      tfvae evaluate runs/z2
      tfvae evaluate runs/z2 --k 5000 --json
      tfvae evaluate runs/z2 --data-dir /usr/share/datasets/fashion-mnist
    """
    import dataclasses

    from tfvae.evaluation import check_k
    from tfvae.runs.layout import check_run_dir
    from tfvae.runs.store import load_config

    check_run_dir(run_dir)
    check_k(k)
    config = load_config(run_dir)
    if dataset is not None or data_dir is not None or tfds_data_dir is not None:
        config = dataclasses.replace(config, dataset=dataset, data_dir=data_dir,
                                     tfds_data_dir=tfds_data_dir)
    from tfvae.evaluation import evaluate as evaluate_model
    from tfvae.runs.run_data import load_data
    from tfvae.runs.store import load_model

    model, trained = load_model(run_dir, checkpoint)
    _, splits = load_data(config)
    if (config.input_dim, config.image_shape) != (trained.input_dim, trained.image_shape):
        raise click.ClickException(
            f"the data have images of shape {config.image_shape} but the run was trained on "
            f"{trained.image_shape}; evaluate on data of the same kind"
        )
    results = evaluate_model(model, splits.test, k=k, seed=seed, progress=EvaluationProgress(),
                             dequantized_levels=splits.dequantized_levels)
    if as_json:
        click.echo(json.dumps(results))
        return
    for name in ("elbo", "reconstruction", "kl", "log_likelihood"):
        click.echo(f"{name:>15}: {results[name]:.3f}")
    if "bits_per_dim" in results:
        click.echo(f"{'bits_per_dim':>15}: {results['bits_per_dim']:.4f} (elbo), "
                   f"{results['bits_per_dim_iwae']:.4f} (k={k}); bits of "
                   f"{results['bits_per_dim_of']}")
    click.echo(f"{'k':>15}: {results['k']}")
    click.echo(f"{'active_units':>15}: {results['active_units']} of {len(results['kl_per_dim'])}")
    click.echo(f"{'examples':>15}: {results['n']}")
