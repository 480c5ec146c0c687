"""The training record of a run and the files derived from it.

``checkpoints/resume.json`` is the one authoritative record of training
progress: the last completed epoch, the prefix of its full training state,
the metric history and the best epoch. Each epoch writes, in this order, the
state, the ``last``/``best`` weights, then the record (the commit point),
then the derived files (``metrics.csv``, ``metrics.json``, ``run.json``). A
crash between the record and the derived files leaves them one epoch behind;
they are rewritten from the record when the run resumes.

A record read back is validated before anything trusts it: keys and types,
a state prefix confined to this run's own ``checkpoints/state/`` and naming
the recorded epoch, a history of finite numbers as long as the epoch count,
and a best value that is the lowest monitored value of that history, at the
best epoch (so that a resumed run keeps the best weights it should).

The files derived from the record (``run.json``, ``evaluation.json``,
``metrics.json``) are read by :func:`read_status`, :func:`read_evaluation` and
:func:`read_metrics`: a damaged one is treated as missing, with a warning,
and written again when the run resumes.

The record also keeps the SHA-256 digest and size of each weights file
(``"weights": {"last.weights.h5": {"sha256": HEX, "bytes": N}, ...}``, the
form of an export manifest's entries), so that a weights file edited or
damaged after it was written is refused when a run is loaded. Records of
earlier versions have no ``weights``: their files are loaded as they are.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import reprlib
import shutil
import warnings
from pathlib import Path

from tfvae import files
from tfvae.errors import RunDirError, TfvaeWarning
from tfvae.runs import layout
from tfvae.runtime import versions

#: Columns that lead ``metrics.csv``, in this order; the metrics follow, sorted.
LEADING_COLUMNS = ("epoch", "seconds")
_KEYS = ("epoch", "prefix", "history", "best", "best_epoch", "monitor")
_MONITORS = ("loss", "val_loss")
_WEIGHTS_FILES = (layout.LAST, layout.BEST)
_HEX64 = re.compile(r"[0-9a-f]{64}")
#: Shows a value of a record in a message, however long or deeply nested it is.
_SHOW = reprlib.Repr()
_SHOW.maxlevel, _SHOW.maxstring, _SHOW.maxother = 3, 80, 80


@dataclasses.dataclass
class Record:
    """Training progress after the last completed epoch.

    Attributes:
      epoch: completed epochs (>= 1).
      prefix: the full training state, ``state/epoch-NNNN`` under ``checkpoints/``.
      history: one dict of metrics per completed epoch (``epoch`` 1, 2, ...).
      best: the best monitored value so far (``inf`` before any).
      best_epoch: the epoch of ``best`` (None before any).
      monitor: ``val_loss`` with a validation split, ``loss`` without.
      weights: ``{file name: {"sha256": hex digest, "bytes": size}}`` of the
        ``last`` and ``best`` weights files as written (empty in records of
        earlier versions).
    """

    epoch: int
    prefix: str
    history: list
    best: float
    best_epoch: int | None
    monitor: str
    weights: dict = dataclasses.field(default_factory=dict)

    @staticmethod
    def prefix_for(epoch: int) -> str:
        return f"{layout.STATE}/epoch-{epoch:04d}"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _invalid(path: Path, what: str) -> RunDirError:
    return RunDirError(
        f"{path} is not a valid training record: {what}. It was edited or damaged; restore "
        "it from a backup, or start a new run (completed epochs cannot be trusted without it)"
    )


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_history(path, history, epoch):
    if not isinstance(history, list) or len(history) != epoch:
        raise _invalid(path, f"'history' must list one entry per completed epoch ({epoch})")
    for i, row in enumerate(history):
        if not isinstance(row, dict) or row.get("epoch") != i + 1:
            raise _invalid(path, f"history entry {i} is not the metrics of epoch {i + 1}")
        # The recorder records no epoch with a non-finite metric.
        bad = [k for k, v in row.items() if not _number(v) or not math.isfinite(v)]
        if bad:
            raise _invalid(path, f"history entry {i} holds values that are not finite numbers "
                                 f"under {bad}")


def _check_best(path, data, epoch) -> float:
    """``best`` as the recorder keeps it: the lowest monitored value of the history, that of
    ``best_epoch``; ``inf`` (or null) with no best epoch before any value."""
    best, best_epoch, monitor = data["best"], data["best_epoch"], data["monitor"]
    if best_epoch is not None and (isinstance(best_epoch, bool) or not isinstance(best_epoch, int)
                                   or not 1 <= best_epoch <= epoch):
        raise _invalid(path, f"'best_epoch' must be an epoch in 1..{epoch}, got "
                             f"{_SHOW.repr(best_epoch)}")
    best = math.inf if best is None else best
    if not _number(best):
        raise _invalid(path, f"'best' must be a number, got {_SHOW.repr(best)}")
    values = [row[monitor] for row in data["history"] if monitor in row]
    if best_epoch is None:
        if best != math.inf or values:
            raise _invalid(path, f"'best' is {best!r} but 'best_epoch' names no epoch")
        return math.inf
    if best != data["history"][best_epoch - 1].get(monitor) or best > min(values):
        raise _invalid(path, f"'best' ({best!r}) is not the lowest {monitor} of the history, "
                             f"that of its 'best_epoch' ({best_epoch})")
    return float(best)


def _check_weights(path, weights) -> dict:
    if not isinstance(weights, dict) or set(weights) - set(_WEIGHTS_FILES):
        raise _invalid(path, f"'weights' must map {list(_WEIGHTS_FILES)} to their digests")
    for name, entry in weights.items():
        if not (isinstance(entry, dict) and set(entry) == {"sha256", "bytes"}
                and isinstance(entry["sha256"], str) and _HEX64.fullmatch(entry["sha256"])
                and isinstance(entry["bytes"], int) and not isinstance(entry["bytes"], bool)
                and entry["bytes"] >= 0):
            raise _invalid(path, f"the digest of {name} is not a SHA-256 and a size")
    return weights


def validate(data, run_dir) -> Record:
    """A :class:`Record` from the JSON of ``resume.json``, or RunDirError saying what is wrong."""
    run_dir = Path(run_dir)
    path = run_dir / layout.CHECKPOINTS / layout.RESUME
    if not isinstance(data, dict):
        raise _invalid(path, f"it holds a {type(data).__name__}, not a JSON object")
    missing = [k for k in _KEYS if k not in data]
    if missing:
        raise _invalid(path, f"it lacks {missing}")
    epoch = data["epoch"]
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
        raise _invalid(path, f"'epoch' must be a positive integer, got {_SHOW.repr(epoch)}")
    expected = Record.prefix_for(epoch)
    if data["prefix"] != expected:
        raise _invalid(path, f"'prefix' is {_SHOW.repr(data['prefix'])}; the state of epoch "
                             f"{epoch} is {expected!r} in this run's {layout.CHECKPOINTS}/")
    state = layout.inside(run_dir, f"{layout.CHECKPOINTS}/{expected}.index")
    if not state.is_file():
        raise _invalid(path, f"the training state of epoch {epoch} ({state.name}) is missing")
    _check_history(path, data["history"], epoch)
    if not isinstance(data["monitor"], str) or data["monitor"] not in _MONITORS:
        raise _invalid(path, f"'monitor' must be one of {_MONITORS}, got "
                             f"{_SHOW.repr(data['monitor'])}")
    best = _check_best(path, data, epoch)
    weights = _check_weights(path, data.get("weights", {}))
    return Record(epoch, expected, data["history"], best, data["best_epoch"], data["monitor"],
                  weights)


def read(run_dir) -> Record | None:
    """The run's validated record, or None when no epoch has completed."""
    path = Path(run_dir) / layout.CHECKPOINTS / layout.RESUME
    if not path.exists():
        return None
    data = files.read_json(path, "training record")
    try:
        return validate(data, run_dir)
    except RecursionError:  # JSON that loads, nested deeper than a check can follow
        raise _invalid(path, "it is nested too deeply") from None


def weights_digest(run_dir, name: str) -> dict | None:
    """The recorded ``{"sha256", "bytes"}`` of weights file ``name``, or None if there is none.

    None for a run with no record, a record of an earlier version, or a file
    the record does not name. Only this entry is checked: a reader may meet
    the record while the run trains, when the state it names can be gone.
    """
    path = Path(run_dir) / layout.CHECKPOINTS / layout.RESUME
    if not path.is_file():
        return None
    data = files.read_json(path, "training record")
    if not isinstance(data, dict):
        raise _invalid(path, f"it holds a {type(data).__name__}, not a JSON object")
    try:
        return _check_weights(path, data.get("weights", {})).get(name)
    except RecursionError:
        raise _invalid(path, "it is nested too deeply") from None


def write(run_dir, record: Record) -> None:
    """Commits an epoch: writes ``resume.json`` atomically."""
    files.atomic_write_json(Path(run_dir) / layout.CHECKPOINTS / layout.RESUME, record.to_dict())


def write_metrics(run_dir, history: list) -> None:
    """``metrics.json`` and ``metrics.csv`` (``epoch`` first, then ``seconds``, then sorted).

    Both are copies of the record's history (rewritten from it on resuming),
    so they are not flushed to the disk one by one.
    """
    run_dir = Path(run_dir)
    files.atomic_write_json(run_dir / layout.METRICS_JSON, history, durable=False)
    names = sorted({k for row in history for k in row} - set(LEADING_COLUMNS))
    columns = [c for c in LEADING_COLUMNS if any(c in row for row in history)] + names
    lines = [",".join(columns)] + [
        ",".join(repr(row[c]) if c in row else "" for c in columns) for row in history
    ]
    files.atomic_write_text(run_dir / layout.METRICS_CSV, "\n".join(lines) + "\n", durable=False)


def write_status(run_dir, config, status: str, record: Record | None, durable: bool = True,
                 **extra) -> dict:
    """Writes ``run.json``: ``status`` plus what the record says; returns it.

    ``durable``: flush it to the disk (see :func:`tfvae.files.atomic_write_bytes`).
    """
    data = {
        "status": status,
        "model": config.model,
        "epochs_completed": 0 if record is None else record.epoch,
        "epochs_planned": config.epochs,
        "best_epoch": None if record is None else record.best_epoch,
        "monitor": None if record is None else record.monitor,
        "versions": versions(),
        **extra,
    }
    files.atomic_write_json(Path(run_dir) / layout.STATUS, data, durable)
    return data


def _derived(run_dir, name: str, what: str, kind: type):
    """A file derived from the record, or None when it is missing; one that cannot be read
    or is not a JSON ``kind`` is treated as missing, with a warning."""
    path = Path(run_dir) / name
    if not path.is_file():
        return None
    try:
        data = files.read_json(path, what)
        if isinstance(data, kind):
            return data
        problem = f"{path} is corrupt (the {what} is a JSON {type(data).__name__})"
    except (OSError, RunDirError) as exc:
        problem = str(exc)
    warnings.warn(f"{problem}; treated as missing (it is derived from the training record: "
                  f"`tfvae train --resume {run_dir}` writes it again)", TfvaeWarning,
                  stacklevel=3)
    return None


def read_status(run_dir) -> dict:
    """``run.json``, or an empty dict for a run that has none yet (or a damaged one, with a
    warning)."""
    return _derived(run_dir, layout.STATUS, "run status", dict) or {}


def read_evaluation(run_dir) -> dict | None:
    """``evaluation.json`` (the test figures), or None before the run finished (or for a
    damaged one, with a warning: it is evaluated again when the run resumes)."""
    return _derived(run_dir, layout.EVALUATION, "evaluation", dict)


def read_metrics(run_dir) -> list | None:
    """``metrics.json`` (one dict per epoch), or None when missing (or damaged: a warning)."""
    return _derived(run_dir, layout.METRICS_JSON, "metrics", list)


def check_resume(run_dir, config, state: Record | None, epochs: int | None) -> None:
    """Refuses a resume that would do nothing, saying what to pass instead.

    Args:
      run_dir: the run directory.
      config: its configuration, with the ``epochs`` asked for.
      state: its record (None before the first epoch completed).
      epochs: the ``--epochs`` given, or None.
    """
    if state is None or state.epoch < config.epochs:
        return
    if epochs is not None and epochs < state.epoch:
        raise RunDirError(f"{run_dir} has completed {state.epoch} epochs; --epochs {epochs} is "
                          f"fewer: pass --epochs above {state.epoch} to train longer")
    # A damaged run.json or evaluation.json (derived data) is made again: not finished.
    if read_status(run_dir).get("status") == "completed" and \
            read_evaluation(run_dir) is not None:
        raise RunDirError(f"{run_dir} has completed all {state.epoch} epochs and its evaluation; "
                          f"pass --epochs above {state.epoch} to train longer")


def prepare_resume(run_dir, config, state: Record | None) -> None:
    """Brings the derived files in line with the record before training goes on."""
    run_dir = Path(run_dir)
    files.atomic_write_text(run_dir / layout.CONFIG, config.to_json() + "\n")
    if state is None:
        # No completed epoch: nothing to keep but the configuration; start again.
        for name in (layout.TENSORBOARD, f"{layout.CHECKPOINTS}/{layout.STATE}"):
            shutil.rmtree(run_dir / name, ignore_errors=True)
        for name in (layout.METRICS_CSV, layout.METRICS_JSON, layout.STATUS):
            with contextlib.suppress(FileNotFoundError):
                (run_dir / name).unlink()
        (run_dir / layout.CHECKPOINTS).mkdir(exist_ok=True)
        return
    write_metrics(run_dir, state.history)
    write_status(run_dir, config, "training", state)
