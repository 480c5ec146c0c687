"""Loading a run back: its configuration, its model and weights, its record.

Nothing is loaded with pickle: configs and status are JSON, weights Keras'
own ``.weights.h5`` read by ``load_weights`` into a model rebuilt from its
config (after their SHA-256 is checked against the run's record), extras
(the autoencoder's mixture) ``.npz`` + JSON through
:mod:`tfvae.runs.families`.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

from tfvae import files
from tfvae.errors import ConfigError, RunDirError
from tfvae.runs import layout, record
from tfvae.runs.families import family_for


@dataclasses.dataclass
class Run:
    """A training run on disk, with its configuration, metrics and model.

    Attributes:
      path: the run directory.
      config: its :class:`tfvae.Config`.
      model: the trained model (best checkpoint unless asked otherwise).
      status: ``run.json``.
      history: per-epoch metrics.
      role: ``"chief"`` for the process that wrote the run; in a multi-worker
        run the other workers get ``"worker N"`` (they write nothing).

    Example:
      >>> run = tfvae.load_run("runs/my-run")
      >>> run.model.sample(16, seed=0).shape
      (16, 784)
    """

    path: Path
    config: object
    model: object
    status: dict
    history: list
    role: str = "chief"

    @property
    def evaluation(self) -> dict | None:
        """``evaluation.json`` (test figures), or None before the run finished (or when the
        file is damaged: a warning says so)."""
        return record.read_evaluation(self.path)


def load_config(run_dir):
    """The :class:`tfvae.Config` of a run directory."""
    from tfvae.config import Config

    run_dir = layout.check_run_dir(run_dir)
    data = files.read_json(run_dir / layout.CONFIG, "configuration")
    try:
        return Config.from_dict(data)
    except ConfigError as exc:
        reason = str(exc)
    except RecursionError:  # JSON that loads, nested deeper than a check can follow
        reason = "it is nested too deeply"
    raise RunDirError(f"{run_dir / layout.CONFIG} is not a valid tfvae configuration: {reason}")


def build_model(config):
    """Builds an untrained model from a Config whose data fields are set."""
    return family_for(config).build(config)


def save_weights(model, path) -> dict:
    """Saves the weights with Keras' ``save_weights`` to ``path``, never a half-written file.

    The file is Keras' own ``.weights.h5`` (its optimizers' state included),
    written under a temporary name and renamed; ``model.load_weights`` reads it.

    Returns:
      ``{"sha256": hex digest, "bytes": size}`` of the file as written: what
      a run's record keeps to refuse the file if it is edited later.
    """
    with files.atomic_path(path) as tmp:
        model.save_weights(str(tmp))
        return weights_digest(tmp)


def weights_digest(path) -> dict:
    """``{"sha256": hex digest, "bytes": size}`` of a whole weights file, as a run's record
    keeps it (the form of an export manifest's entries)."""
    return {"sha256": files.sha256(path), "bytes": os.path.getsize(path)}


class WeightsChanged(RunDirError):
    """A run's weights file whose SHA-256 is not the one its record keeps."""


#: How long a reader waits in all for a run being trained to record the
#: digests of weights files it has just replaced.
RECORD_WAIT = 5.0
#: How often a reader checks a weights file against the record before it refuses it.
ATTEMPTS = 4
_POLL = 0.02
_pause, _clock = time.sleep, time.monotonic  # (tests replace them)


def load_weights(model, path, digest: dict | None = None) -> None:
    """Loads a ``.weights.h5`` file (tfvae's or Keras' own) into ``model``.

    Args:
      model: a model of the configuration the file was saved from.
      path: the weights file.
      digest: ``{"sha256", "bytes"}`` the file must have (from a run's
        record), or None to load it as it is.

    Raises:
      WeightsChanged: the file does not have ``digest``.
    """
    with open(path, "rb") as handle:
        if digest is not None and not _matches(handle, digest):
            raise WeightsChanged(f"{path} does not have the SHA-256 digest it was written with")
        model.load_weights(str(path))


def _matches(handle, digest: dict) -> bool:
    return (os.fstat(handle.fileno()).st_size == digest["bytes"]
            and files.sha256(handle) == digest["sha256"])


def _same_file(handle, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``handle`` (not one renamed onto it)."""
    mine = os.fstat(handle.fileno())
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return False
    return (mine.st_dev, mine.st_ino) == (now.st_dev, now.st_ino)


def _record_stamp(run_dir: Path):
    try:  # the record is replaced by a rename: a new file each time it is written
        stat = os.stat(run_dir / layout.CHECKPOINTS / layout.RESUME)
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def _await_record(run_dir: Path, stamp, deadline: float) -> None:
    """Waits, while a process holds the run's lock, until the record is written again."""
    while (_clock() < deadline and layout.RunLock.is_held(run_dir)
           and _record_stamp(run_dir) == stamp):
        _pause(_POLL)


def _load_checked(model, run_dir: Path, ckpt: Path) -> None:
    """Loads ``ckpt`` into ``model`` once its SHA-256 is the one the run's record keeps.

    A run being trained replaces its weights files first and writes the
    record that holds their digests next, so a reader can meet new weights
    with the previous record (or weights replaced between its digest and its
    load). So a mismatch is checked again, after the record was written anew
    when a process holds the run's lock, and only a file that still differs
    is refused. The file loaded is the one digested: still under its name
    after the load, as no writer edits a file in place.
    """
    deadline = _clock() + RECORD_WAIT
    for _ in range(ATTEMPTS):
        stamp = _record_stamp(run_dir)
        with open(ckpt, "rb") as handle:
            digest = record.weights_digest(run_dir, ckpt.name)
            if digest is None or _matches(handle, digest):
                model.load_weights(str(ckpt))
                if _same_file(handle, ckpt):
                    return
                continue  # replaced while it loaded: check the new one
        _await_record(run_dir, stamp, deadline)
    other = "last" if ckpt.name == layout.BEST else "best"
    raise WeightsChanged(
        f"checkpoint {ckpt} was changed after tfvae wrote it: its SHA-256 is not the one in "
        f"{layout.CHECKPOINTS}/{layout.RESUME} (the file was edited or damaged); nothing was "
        f"removed. Use the {other} checkpoint if it is intact (`--checkpoint {other}` of "
        f"evaluate and export), train the run further (`tfvae train --resume {run_dir} "
        "--epochs N` writes new weights), or train again"
    )


def checkpoint_path(run_dir, which: str) -> Path:
    """``best`` (falling back to ``last``) or ``last`` weights of a run."""
    if which not in ("best", "last"):
        raise RunDirError(f"which must be 'best' or 'last', got {which!r}")
    name = layout.BEST if which == "best" else layout.LAST
    ckpt = layout.inside(run_dir, f"{layout.CHECKPOINTS}/{name}")
    if not ckpt.is_file() and which == "best":
        ckpt = layout.inside(run_dir, f"{layout.CHECKPOINTS}/{layout.LAST}")
    if not ckpt.is_file():
        raise RunDirError(
            f"{run_dir} has no checkpoint: the run never finished an epoch; train it again"
        )
    return ckpt


def load_model(run_dir, which: str = "best", extras: bool = True, into=None):
    """Rebuilds the model of a run from its config and loads its weights.

    Args:
      run_dir: a tfvae run directory.
      which: ``"best"`` (lowest validation loss) or ``"last"`` (last completed epoch).
      extras: also load what the model keeps outside its weights (the
        autoencoder's mixture); training turns this off before it fits them.
      into: a model of the run's configuration to load the weights into
        instead of building one (training reuses the model it trained).

    Returns:
      ``(model, config)``.
    """
    run_dir = layout.check_run_dir(run_dir)
    config = load_config(run_dir)
    ckpt = checkpoint_path(run_dir, which)
    model = build_model(config) if into is None else into
    try:
        _load_checked(model, run_dir, ckpt)
    except RunDirError:
        raise
    except Exception as exc:  # h5py/Keras raise many types for a bad file
        raise RunDirError(
            f"checkpoint {ckpt} cannot be read ({type(exc).__name__}: {exc}); "
            "it is corrupt or from another model configuration"
        ) from None
    spec = family_for(config)
    if extras and spec.load_extras is not None:
        spec.load_extras(model, run_dir)
    return model, config


def load_run(run_dir, which: str = "best") -> Run:
    """Loads a run directory: its config, status, metric history and trained model.

    Args:
      run_dir: the ``--out`` of ``tfvae train`` (or of :func:`tfvae.train`).
      which: ``"best"`` or ``"last"`` checkpoint.

    Returns:
      A :class:`Run`; ``run.model`` is ready for ``sample``, ``reconstruct`` and
      :func:`tfvae.evaluate`.
    """
    run_dir = layout.check_run_dir(run_dir)
    model, config = load_model(run_dir, which)
    history = record.read_metrics(run_dir) or []
    return Run(path=run_dir, config=config, model=model, status=record.read_status(run_dir),
               history=history)
