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
resumes). None of the entries tfvae writes may be a link (:func:`check_entries`):
a run's files are written in its folder, never through a link to a file or
folder elsewhere. Only the standard library (and :mod:`tfvae.files`) is
imported here, so the CLI checks paths, and takes the run's lock, before it
imports TensorFlow.
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

#: The folders of a run that tfvae writes into.
FOLDERS = (CHECKPOINTS, f"{CHECKPOINTS}/{STATE}", FIGURES, TENSORBOARD)
#: Every entry of a run that tfvae writes (files are replaced whole, folders written into).
WRITTEN = (LOCK, CONFIG, STATUS, METRICS_CSV, METRICS_JSON, EVALUATION,
           f"{CHECKPOINTS}/{RESUME}", f"{CHECKPOINTS}/{LAST}", f"{CHECKPOINTS}/{BEST}") + FOLDERS


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


def check_entries(run_dir, extra=()) -> None:
    """Refuses a run whose entries tfvae writes are links, or not files or folders as they
    should be.

    Checked before anything is written to a run: the entries of :data:`WRITTEN`
    (and ``extra``, a family's own files), and what the folders of
    :data:`FOLDERS` hold directly. The run directory itself may be a link.
    """
    run_dir = Path(run_dir)
    for name in WRITTEN + tuple(extra):
        path = run_dir / name
        if path.is_symlink():
            raise files.link_refused(path)
        if name in FOLDERS and path.exists() and not path.is_dir():
            raise RunDirError(f"{path} is not a folder; tfvae keeps its {name} there: move it "
                              "away and try again")
        if name not in FOLDERS and path.exists() and not path.is_file():
            raise RunDirError(f"{path} is not a file; tfvae writes its {name} there: move it "
                              "away and try again")
    for name in FOLDERS:
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(run_dir / name):
                if entry.is_symlink():
                    raise files.link_refused(entry.path)


def check_new_out(out, check_lock: bool = True) -> Path:
    """Refuses an ``--out`` that exists and holds files (TensorFlow-free, for the CLI).

    A folder that another process writes now (it holds the lock) is refused
    as in use, naming that process, whatever it holds; ``check_lock=False``
    skips that probe (for the process that holds the lock itself).
    """
    out = Path(out)
    if out.exists():
        if not out.is_dir():
            raise RunDirError(f"--out {out} exists and is not a directory; choose another --out")
        if (out / LOCK).is_symlink():
            raise files.link_refused(out / LOCK)
        if check_lock:
            RunLock.check_free(out)
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
    cannot outlive its process. A second writer gets a RunDirError at once,
    naming the process that holds the lock.

    Args:
      run_dir: the run directory.
      made: whether the caller made the directory (:func:`create_run_dir`):
        :meth:`abandon` then removes it again.

    Example:
      >>> with RunLock("runs/z2"):
      ...     pass  # train, resume or finish the run
    """

    def __init__(self, run_dir, made: bool = False):
        self.run_dir = Path(run_dir)
        self.made = made
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

    @property
    def held(self) -> bool:
        """Whether this object holds the lock now."""
        return self._lock.held

    def abandon(self) -> None:
        """Releases the lock; for a run that never started (no config.json) also removes
        what :func:`create_run_dir` made: the empty folders, the lock file, and the run
        directory when it made it. A run that started is only released."""
        try:
            if self.held and not os.path.lexists(self.run_dir / CONFIG):
                for name in (CHECKPOINTS, FIGURES):
                    with contextlib.suppress(OSError):
                        (self.run_dir / name).rmdir()  # only when empty
                with contextlib.suppress(OSError):
                    if not any(e.name != LOCK for e in os.scandir(self.run_dir)):
                        (self.run_dir / LOCK).unlink()
                        if self.made:
                            self.run_dir.rmdir()
        finally:
            self.release()

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def _in_use(run_dir: Path, owner: str) -> RunDirError:
    return RunDirError(
        f"{run_dir} is in use by {owner or 'another process'} (it holds {LOCK}); wait for it "
        "to finish, or stop it, before writing to this run"
    )


def _make_dir(out: Path) -> bool:
    """Makes ``out`` and its parents; whether this call made ``out``. RunDirError saying
    why when it cannot be made."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.mkdir()
        return True
    except FileExistsError:
        if out.is_dir():
            return False
        reason = "it exists and is not a directory"
    except OSError as exc:
        reason = exc.strerror or str(exc)
    for parent in out.parents:  # the nearest that exists says more than the OS's reason
        if os.path.lexists(parent):
            if not parent.is_dir():
                reason = f"{parent} is not a directory"
            break
    raise RunDirError(f"cannot create the run directory {out}: {reason}; choose another --out")


def create_run_dir(out) -> RunLock:
    """Creates (or takes an empty) run directory and locks it; returns the held lock.

    The directory is made with one ``mkdir`` and then locked before it is
    checked for files, so of two processes given the same new ``--out``
    exactly one proceeds; the other is refused, naming the process that holds
    it. A run that then never starts gives the directory back with
    :meth:`RunLock.abandon`.
    """
    out = Path(out)
    check_new_out(out)
    for attempt in range(3):
        lock = RunLock(out, made=_make_dir(out))
        try:
            lock.acquire()
            break
        except FileNotFoundError:  # an abandoned run's folder, removed meanwhile: again
            if attempt == 2:
                raise
    try:
        check_new_out(out, check_lock=False)  # again, now that we hold the lock
        (out / CHECKPOINTS).mkdir(exist_ok=True)
        (out / FIGURES).mkdir(exist_ok=True)
    except BaseException:
        lock.release()
        raise
    return lock
