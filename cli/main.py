"""The ``tfvae`` command: a thin click layer over the library.

Commands parse options, call library functions and print results. The
``train`` options are made from :class:`tfvae.Config`'s fields, so names,
defaults and help exist once. TensorFlow is imported only inside the
commands that need it, after paths are checked (and ``train`` has taken the
run's lock), so ``--help`` and refusals are fast. Errors a user can cause
become ``click.ClickException`` (a message and exit code 1, never a
traceback). SIGTERM is Ctrl-C from the process's start.
"""

from __future__ import annotations

import atexit
import gc
import os
import signal
import sys

import click
from tfvae_cli.common import CONTEXT, config_options, handle_errors
from tfvae_cli.diagnose import diagnose
from tfvae_cli.evaluate import evaluate
from tfvae_cli.export import export
from tfvae_cli.sample import sample

from tfvae.errors import Interrupted


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
      tfvae export runs/z2 --out export/z2
    """


@cli.command(context_settings=CONTEXT)
@config_options()
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
    Ctrl-C stops at a clean point and says how to continue.

    \b
    Examples:
      tfvae train
      tfvae train --latent-dim 2 --epochs 30 --out runs/z2
      tfvae train --data-dir /usr/share/datasets/fashion-mnist --binarize static
      tfvae train --dataset digits --hidden 256 --latent-dim 4 --epochs 300 \\
          --kl-warmup 30 --batch-size 64 --output-bias-from-data
      tfvae train --data-dir photos/ --image-size 32,32 --arch conv
      tfvae train --model sbn --stochastic-layers 2 --estimator disarm
      tfvae train --model sbn --inference mean-field --hidden ''
      tfvae train --resume runs/z2 --epochs 50
      tfvae train --strategy mirrored --batch-size 512   # every local GPU
    """
    from tfvae.config import RESUMABLE_FIELDS, Config, check_text_path
    from tfvae.data.sources import check_path
    from tfvae.runs.layout import check_run_dir, create_run_dir, default_out

    verbose = 1 if sys.stdout.isatty() else 2
    progress = _evaluation_progress()
    if resume is not None:
        if out is not None:
            raise click.ClickException("--resume continues a run in place; leave out --out")
        ctx = click.get_current_context()
        given = {name: options[name] for name in options
                 if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE}
        others = sorted(set(given) - set(RESUMABLE_FIELDS))
        if others:
            flags = ", ".join("--" + n.replace("_", "-") for n in others)
            raise click.ClickException(
                f"a resumed run keeps its configuration: {flags} cannot change; only "
                f"{' and '.join('--' + n for n in RESUMABLE_FIELDS)} can")
        check_run_dir(resume)
        lock = _resume_lock(resume, given)  # a second writer is refused before TensorFlow loads
        click.echo(f"resuming run {resume}", err=True)
        _report(_library_train(resume=resume, verbose=verbose, progress=progress, lock=lock,
                               **given))
        return
    config = Config(**options)
    if out is not None:
        check_text_path(out, "--out")
    if config.data_dir is not None:
        check_path(config.data_dir)
    if out is None:
        out = str(default_out(config.model))
    # The folder is made and locked before TensorFlow loads: a second `tfvae train` into
    # it is refused at once, naming this process (every worker of a cluster shares it).
    lock = None if config.strategy == "multiworker" else create_run_dir(out)
    click.echo(f"training {config.model} model; run directory: {out}", err=True)
    _report(_library_train(config, out=out, verbose=verbose, progress=progress, lock=lock))


def _resume_lock(run_dir, given: dict):
    """The held lock of a run to resume, or None for a multi-worker run (every worker
    resumes it; only the chief takes the lock, once TensorFlow says which it is)."""
    from tfvae.runs.layout import RunLock
    from tfvae.runs.store import load_config

    strategy = given.get("strategy") or load_config(run_dir).strategy
    if strategy == "multiworker":
        RunLock.check_free(run_dir)
        return None
    return RunLock(run_dir).acquire()


def _evaluation_progress():
    from tfvae_cli.common import EvaluationProgress

    return EvaluationProgress()


#: True in the console script, which owns its process; False when ``cli`` is
#: called in another program's (click's CliRunner, the tests): freezing the
#: collector there would keep that program's pending garbage for good.
_OWN_PROCESS = False


def _library_train(*args, lock=None, **kwargs):
    try:
        from tfvae.training import train as train_run  # TensorFlow loads here
    except BaseException as exc:
        if lock is not None:
            lock.abandon()  # a new run directory made for nothing is removed
        if isinstance(exc, KeyboardInterrupt):
            raise Interrupted("interrupted while TensorFlow loaded; nothing was written") \
                from None
        raise

    if _OWN_PROCESS:
        # The objects TensorFlow and the library make at import live as long as
        # the command: frozen, they leave the cyclic collector's full passes
        # during training, which would walk them all again and again.
        gc.freeze()
    return train_run(*args, lock=lock, **kwargs)  # which releases the lock


def _report(run):
    if run.role != "chief":
        epochs = run.config.epochs
        click.echo(f"{run.role}: took part in training ({epochs} epochs); the chief wrote the "
                   f"run to {run.path}")
        return
    ev = run.evaluation or {}
    click.echo(
        f"done: test elbo {ev.get('elbo', float('nan')):.2f}, "
        f"log-likelihood (k={ev.get('k')}) {ev.get('log_likelihood', float('nan')):.2f} nats; "
        f"run in {run.path}"
    )


cli.add_command(evaluate)
cli.add_command(sample)
cli.add_command(export)
cli.add_command(diagnose)


def main():
    # SIGTERM stops the command as Ctrl-C does, from the start: while TensorFlow loads
    # too, with what was kept and exit code 130 (a handler set to ignore it is kept).
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    # TensorFlow turns its oneDNN kernels on by default only on some Intel CPUs;
    # on the others (AMD's, for one) they make convolutions and the evaluation's
    # matrix products faster (benchmarks/user_fit.py). The variable
    # must be set before TensorFlow is imported; a user's own value wins.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    # tfvae uses Keras 2 (tf_keras) only. Without this, `import tensorflow`
    # also imports Keras 3 (and scikit-learn through it) for `tf.keras`: a
    # large part of the command's start-up, for nothing.
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    # At exit CPython's last collection walks every object TensorFlow made, a
    # long walk; everything is written and closed by then, so the walk is
    # skipped. atexit runs this last, after TensorFlow's own exit handlers.
    atexit.register(gc.freeze)
    global _OWN_PROCESS
    _OWN_PROCESS = True
    cli(prog_name="tfvae")


if __name__ == "__main__":
    main()
