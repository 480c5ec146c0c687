"""What the tfvae commands share: error handling, quiet logs, options made from Config.

The application (not the library) decides how chatty TensorFlow is: by
default the commands hide TensorFlow's and LiteRT's native log lines (CUDA
probing on a CPU machine, XNNPACK notices) and Python warnings that are not
tfvae's own; ``-v``/``--verbose`` shows them all.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import io
import logging
import os
import sys
import time
import warnings

import click

from tfvae.config import Config
from tfvae.errors import Interrupted, TfvaeError, TfvaeWarning

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class InterruptedByUser(click.ClickException):
    """Ctrl-C or SIGTERM: the message says what was kept; exit code 130 as shells expect."""

    exit_code = 130

    def show(self, file=None):
        # The user asked for the stop: the message, without click's "Error: ".
        click.echo(self.format_message(), file=file, err=file is None)


@contextlib.contextmanager
def _native_stderr_silenced():
    """Points file descriptor 2 at /dev/null; Python's ``sys.stderr`` keeps the real one.

    TensorFlow's and LiteRT's C++ logs go straight to descriptor 2 (some
    before TensorFlow reads any setting); tfvae's messages, warnings and
    tracebacks go through ``sys.stderr`` and still show.
    """
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    old = sys.stderr
    try:
        real = old.fileno() == 2
    except (AttributeError, OSError, io.UnsupportedOperation):
        real = False  # e.g. click's CliRunner: its own stream, not descriptor 2
    if real:
        old.flush()
        sys.stderr = io.TextIOWrapper(os.fdopen(os.dup(saved), "wb", buffering=0),
                                      write_through=True)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        if real:
            sys.stderr = old


def _show_warning(message, category, filename, lineno, file=None, line=None):
    click.echo(f"warning: {message}", err=True)


@contextlib.contextmanager
def _quiet(verbose: bool):
    with warnings.catch_warnings():
        if verbose:
            yield
            return
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        warnings.simplefilter("ignore")
        warnings.simplefilter("default", TfvaeWarning)
        warnings.showwarning = _show_warning
        for name in ("tensorflow", "absl", "h5py"):
            logging.getLogger(name).setLevel(logging.ERROR)
        with _native_stderr_silenced():
            yield


def _os_message(exc: OSError) -> str:
    where = exc.filename or ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"the disk is full{' at ' + str(where) if where else ''}: free some space"
    if isinstance(exc, PermissionError):
        return f"permission denied: {where or exc}"
    if isinstance(exc, FileNotFoundError):
        return f"file not found: {where or exc}"
    return f"{exc.strerror or exc}{': ' + str(where) if where else ''}"


def _printable(text: str) -> str:
    """A message with the undecodable bytes of file names escaped, so it can be printed."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def handle_errors(func):
    """Library errors become one-line click errors; programming errors keep their traceback.

    Errors a user can cause (:class:`tfvae.errors.TfvaeError`, operating-system
    errors such as a full disk) print their message and exit with 1; Ctrl-C or
    SIGTERM exits with 130 after saying what was kept. Adds ``-v/--verbose``.
    """

    @click.option("-v", "--verbose", is_flag=True,
                  help="Show TensorFlow's own log lines and every Python warning.")
    @functools.wraps(func)
    def wrapper(*args, verbose=False, **kwargs):
        try:
            with _quiet(verbose):
                return func(*args, **kwargs)
        except click.ClickException:
            raise
        except Interrupted as exc:
            raise InterruptedByUser(str(exc)) from None
        except KeyboardInterrupt:
            raise InterruptedByUser("interrupted") from None
        except TfvaeError as exc:
            raise click.ClickException(_printable(str(exc))) from None
        except OSError as exc:
            raise click.ClickException(_printable(_os_message(exc))) from None

    return wrapper


def _option_for(f: dataclasses.Field, default_override=...):
    """A click option made from a :class:`tfvae.Config` field and its metadata."""
    meta = f.metadata
    default = f.default if default_override is ... else default_override
    kwargs = {"help": meta["help"], "show_default": meta["show_default"] and default is not None}
    if meta["flag"]:
        decls = [meta["flag"], f.name]
        if "/" not in meta["flag"]:
            kwargs["is_flag"] = True
        return click.option(*decls, default=default, **kwargs)
    if meta["choices"] is not None:
        kwargs["type"] = click.Choice(list(meta["choices"]))
    elif meta["kind"] == "path":
        kwargs["type"] = click.Path()
    elif meta["kind"] in ("int", "float"):
        kwargs["type"] = {"int": int, "float": float}[meta["kind"]]
    elif meta["kind"] in ("sizes", "str", "shape"):
        kwargs["type"] = str
        if isinstance(default, tuple):
            default = ",".join(str(v) for v in default)
        elif default is not None:
            default = str(default)
    elif isinstance(default, bool):
        kwargs["type"] = bool
    elif isinstance(default, (int, float)):
        kwargs["type"] = type(default)
    return click.option(f"--{f.name.replace('_', '-')}", f.name, default=default, **kwargs)


def config_options(names=None, defaults=...):
    """Decorator adding the ``Config`` fields (all CLI fields, or ``names``) as click options.

    Args:
      names: the fields to offer (default: every field marked for the CLI).
      defaults: ``...`` for the fields' own defaults, or a value (None) for all.
    """
    fields = [f for f in dataclasses.fields(Config) if f.metadata.get("cli")]
    if names is not None:
        fields = [f for f in fields if f.name in names]

    def decorate(func):
        for f in reversed(fields):
            func = _option_for(f, defaults)(func)
        return func

    return decorate


#: The fields that name a data set (shared by train, evaluate and diagnose).
DATA_FIELDS = ("dataset", "data_dir", "tfds_data_dir")


class EvaluationProgress:
    """Prints an evaluation's progress on stderr when it takes a while.

    Nothing for evaluations under ``after`` seconds; then, per phase, the
    examples done and the expected time left, updated in place on a
    terminal and every ``every`` seconds otherwise.
    """

    def __init__(self, after: float = 2.0, every: float = 10.0):
        self.after, self.every = after, every
        self.t0 = self.phase_t0 = None
        self.phase = None
        self.last = 0.0
        self.live = click.get_text_stream("stderr").isatty()

    def __call__(self, phase: str, done: int, total: int) -> None:
        now = time.perf_counter()
        if self.t0 is None:  # the evaluation's first batch is done
            self.t0 = now
        if phase != self.phase:
            self.phase, self.phase_t0 = phase, now
        if now - self.t0 < self.after or (not self.live and now - self.last < self.every
                                          and done < total):
            return
        self.last = now
        rate = done / max(now - self.phase_t0, 1e-9)
        left = (total - done) / rate if rate > 0 else float("inf")
        text = f"{phase}: {done:,}/{total:,} examples, about {_duration(left)} left"
        if self.live:
            click.echo(f"\r{text}   ", err=True, nl=done >= total)
        else:
            click.echo(text, err=True)


def _duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min"
