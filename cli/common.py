"""What the tfvae commands share: context settings, error handling, data options."""

from __future__ import annotations

import functools
import os

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
