"""Run directory layout, checks and the lock that keeps one writer per run.

A run directory holds::

    config.json                 the Config (JSON), written before training
    run.json                    status, epochs completed, best epoch, data, versions
    checkpoints/resume.json     the training record: epoch, metric history, best
                                epoch, the state prefix and the SHA-256 of the
                                weights files (written last each epoch)
    checkpoints/state/          full training state of that epoch (weights,
                                optimizer, estimator state), for --resume
    checkpoints/last.weights.h5 weights after the last completed epoch (Keras' format)
    checkpoints/best.weights.h5 weights with the best validation loss
    metrics.csv, metrics.json   per-epoch training and validation metrics
    evaluation.json             test-split figures after training
    tensorboard/                TensorBoard logs
    figures/*.png               reconstructions, samples, curves, latent plots
    .lock                       held by the process writing the run

``checkpoints/resume.json`` is authoritative: ``metrics.*`` and the epoch
counts of ``run.json`` are derived from it (and rewritten from it when a run
resumes). Only the standard library (and :mod:`tfvae.files`) is imported
here, so the CLI checks paths before it imports TensorFlow.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from pathlib import Path

from tfvae import files
from tfvae.errors import RunDirError

CONFIG = "config.json"
STATUS = "run.json"
CHECKPOINTS = "checkpoints"
STATE = "state"
LAST = "last.weights.h5"
BEST = "best.weights.h5"
RESUME = "resume.json"
METRICS_CSV = "metrics.csv"
METRICS_JSON = "metrics.json"
EVALUATION = "evaluation.json"
FIGURES = "figures"
TENSORBOARD = "tensorboard"
LOCK = ".lock"


def default_out(model: str, root: str | Path = "runs") -> Path:
    """A new run directory name under ``root``: ``runs/20261127-101500-gaussian``."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{stamp}-{model}"
    path, i = base, 1
    while path.exists():
        path = base.with_name(f"{base.name}-{i}")
        i += 1
    return path


def inside(run_dir: Path, name: str) -> Path:
    """``run_dir / name``, refusing a name that points outside the run directory."""
    root = Path(run_dir).resolve()
    path = (root / name).resolve()
    if root not in path.parents and path != root:
        raise RunDirError(f"{name!r} points outside the run directory {run_dir}")
    return path


def check_run_dir(run_dir) -> Path:
    """Returns the run directory as a Path, or raises RunDirError saying what is wrong."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise RunDirError(
            f"run directory {run_dir} does not exist; give the --out of a tfvae train"
        )
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir} is not a directory; give a tfvae run directory")
    if not (run_dir / CONFIG).is_file():
        raise RunDirError(
            f"{run_dir} is not a tfvae run: it has no {CONFIG} (made by `tfvae train --out DIR`)"
        )
    return run_dir


def check_new_out(out) -> Path:
    """Refuses an ``--out`` that exists and holds files (TensorFlow-free, for the CLI)."""
    out = Path(out)
    if out.exists():
        if not out.is_dir():
            raise RunDirError(f"--out {out} exists and is not a directory; choose another --out")
        if any(p.name != LOCK for p in out.iterdir()):
            what = "a tfvae run" if (out / CONFIG).exists() else "files"
            advice = (f"continue it with `tfvae train --resume {out}`, or choose a new --out"
                      if (out / CONFIG).exists() else "choose a new --out")
            raise RunDirError(
                f"--out {out} already holds {what}; tfvae never overwrites a run: {advice} "
                "(or leave --out out for a fresh folder under runs/)"
            )
    return out


class RunLock:
    """An exclusive lock on a run directory, held by this process.

    A :class:`tfvae.files.FileLock` on ``DIR/.lock``: the kernel drops it when
    the process ends however it ends (``kill -9`` included), so a stale lock
    cannot outlive its process. A second writer gets a RunDirError at once.

    Example:
      >>> with RunLock("runs/z2"):
      ...     pass  # train, resume or finish the run
    """

    def __init__(self, run_dir):
        self.run_dir = Path(run_dir)
        self._lock = files.FileLock(self.run_dir / LOCK, note=f"tfvae process {os.getpid()}")

    def acquire(self) -> RunLock:
        try:
            self._lock.acquire()
        except files.LockHeld as exc:
            raise _in_use(self.run_dir, exc.owner) from None
        return self

    @staticmethod
    def check_free(run_dir) -> None:
        """Raises the RunDirError of :meth:`acquire` if another process holds the lock now.

        A probe that creates nothing: the command calls it before importing
        TensorFlow, so that a second writer is refused before anything loads.
        Holding the lock is still :meth:`acquire`'s job (the other process may
        start or end in between).
        """
        owner = files.FileLock.holder(Path(run_dir) / LOCK)
        if owner is not None:
            raise _in_use(Path(run_dir), owner)

    @staticmethod
    def is_held(run_dir) -> bool:
        """Whether a process (this one included) holds the run's lock now: it is being written."""
        return files.FileLock.holder(Path(run_dir) / LOCK) is not None

    def release(self) -> None:
        self._lock.release()

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def _in_use(run_dir: Path, owner: str) -> RunDirError:
    return RunDirError(
        f"{run_dir} is in use by {owner or 'another process'} (it holds {LOCK}); wait for it "
        "to finish, or stop it, before writing to this run"
    )


def create_run_dir(out) -> RunLock:
    """Creates (or takes an empty) run directory and locks it; returns the held lock.

    The directory is made with one ``mkdir`` and then locked before it is
    checked for files, so of two processes given the same new ``--out``
    exactly one proceeds.
    """
    out = Path(out)
    check_new_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        out.mkdir()
    lock = RunLock(out).acquire()
    try:
        check_new_out(out)  # again, now that we hold the lock
        (out / CHECKPOINTS).mkdir(exist_ok=True)
        (out / FIGURES).mkdir(exist_ok=True)
    except BaseException:
        lock.release()
        raise
    return lock
