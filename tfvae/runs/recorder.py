"""The run recorder: a Keras callback that writes a run directory every epoch.

:class:`RunRecorder` is what ``tfvae train`` uses to make a run resumable;
it works in your own ``fit`` too.

Example:
  >>> from tfvae.runs import RunRecorder
  >>> model.fit(x, epochs=10, callbacks=[RunRecorder("runs/mine", monitor="loss")])
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import time
from pathlib import Path

from tfvae import distribute, files
from tfvae._keras import keras, tf
from tfvae.runs import layout, record
from tfvae.runs.store import weights_digest


def cut_short(callbacks) -> bool:
    """Whether any of ``callbacks`` (``stopped`` properties) marks the epoch as cut short."""
    return any(getattr(c, "stopped", False) for c in callbacks)


def _copy(source: Path, target: Path) -> None:
    """``target``, the new file :func:`tfvae.files.atomic_path` made, gets ``source``'s bytes.

    A copy, not a second link: a file edited in place must leave the other
    checkpoint as it was. Opened without following links, like every run file.
    """
    fd = os.open(target, os.O_WRONLY | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0))
    with open(source, "rb") as src, os.fdopen(fd, "wb") as dst:
        shutil.copyfileobj(src, dst)


class RunRecorder(keras.callbacks.Callback):
    """Writes a run directory's checkpoints and metrics after every completed epoch.

    Each epoch writes, in this order: the full training state (weights,
    optimizer slots, estimator state, the noise generator) under
    ``checkpoints/state/epoch-NNNN``, the ``last`` (and, when the monitored
    value improved, ``best``) weights with Keras' ``save_weights`` through
    temporary files and renames, the training record
    ``checkpoints/resume.json`` (the commit point, with the SHA-256 of both
    weights files), then ``metrics.csv``/``metrics.json`` and ``run.json``,
    and last removes the previous epoch's state. An epoch cut short (by a
    stop request or a non-finite loss: any callback in ``skip`` with
    ``stopped`` true) is not recorded. A full disk removes the new epoch's
    partial files and raises :class:`tfvae.files.StorageError`; the previous
    epoch stays resumable, its weights files as its record names them.
    Ctrl-C or SIGTERM while an epoch is written takes effect once its record
    is written (:func:`tfvae.files.uninterrupted`), so the weights files are
    always the ones the record names. A run whose entries are links is
    refused (:func:`tfvae.runs.layout.check_entries`).

    Under a multi-worker strategy every worker saves (saving is collective),
    non-chief workers into a scratch folder they delete; only the chief writes
    the run directory.

    Args:
      run_dir: the run directory (made if missing).
      monitor: ``"val_loss"`` (with validation data) or ``"loss"``.
      previous: the :class:`tfvae.runs.record.Record` to continue, or None.
      config: the run's :class:`tfvae.Config`, to keep ``run.json`` current
        (None: ``run.json`` is not written).
      data: what ``run.json`` records about the data.
      strategy: the ``tf.distribute`` strategy (None: the current one).
      skip: callbacks whose ``stopped`` property marks an epoch not to record.
    """

    def __init__(self, run_dir, monitor: str = "val_loss", previous=None, config=None,
                 data=None, strategy=None, skip=()):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.monitor = monitor
        self.record = previous
        self.config = config
        self.data = data
        self.strategy = strategy
        self.skip = tuple(skip)
        self.chief = distribute.is_chief(strategy)
        self._t0 = time.perf_counter()

    def on_train_begin(self, logs=None):
        if self.chief:
            layout.check_entries(self.run_dir)
        (self.run_dir / layout.CHECKPOINTS).mkdir(parents=True, exist_ok=True)
        self._checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.model.optimizer)

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.perf_counter()

    @property
    def history(self) -> list:
        return [] if self.record is None else list(self.record.history)

    def on_epoch_end(self, epoch, logs=None):
        logs = {k: float(v) for k, v in (logs or {}).items()}
        if cut_short(self.skip) or not all(
                math.isfinite(v) for v in logs.values()):
            return  # keep the last good epoch
        row = {"epoch": epoch + 1, "seconds": time.perf_counter() - self._t0, **logs}
        previous = self.record
        best, best_epoch = (math.inf, None) if previous is None else (previous.best,
                                                                      previous.best_epoch)
        improved = logs.get(self.monitor, math.inf) < best
        if improved:
            best, best_epoch = logs[self.monitor], epoch + 1
        # The weights files and the record that names their digests change together.
        with files.uninterrupted():
            new = self._commit(epoch + 1, row, best, best_epoch, improved)
        if not self.chief:
            return
        for old in (self.run_dir / layout.CHECKPOINTS / layout.STATE).glob("epoch-*"):
            if not old.name.startswith(f"epoch-{new.epoch:04d}."):
                old.unlink()

    def _commit(self, epoch: int, row: dict, best, best_epoch, improved: bool):
        """Writes the state, the weights and the record of ``epoch`` (from 1); returns the
        new record."""
        previous = self.record
        prefix = record.Record.prefix_for(epoch)
        # Logs are reduced across workers, so every worker takes the same branches.
        with distribute.scratch_dir(self.strategy) as scratch:
            folder = self.run_dir / layout.CHECKPOINTS if scratch is None else scratch
            written = self._save(folder, prefix, improved)
        weights = {} if previous is None else dict(previous.weights)
        weights.update(written)
        new = record.Record(epoch, prefix, self.history + [row], best, best_epoch,
                            self.monitor, weights)
        self.record = new
        if not self.chief:
            return new
        with files.disk_errors(self.run_dir, f"the record of epoch {new.epoch}",
                               f"resume with `tfvae train --resume {self.run_dir}`"):
            record.write(self.run_dir, new)
            record.write_metrics(self.run_dir, new.history)
            if self.config is not None:
                # Rewritten from the record every epoch: not flushed to the disk.
                record.write_status(self.run_dir, self.config, "training", new, durable=False,
                                    data=self.data)
        return new

    def _save(self, folder: Path, prefix: str, improved: bool) -> dict:
        """State, last and best weights of a new epoch; partial files removed on failure.

        Returns the digests of the weights files written (``{name: {"sha256", "bytes"}}``).
        """
        try:
            self._checkpoint.write(str(folder / prefix))
            # Both files are complete before either is renamed: a full disk leaves the
            # previous epoch's files, which its record's digests name.
            with files.atomic_path(folder / layout.LAST) as last:
                self.model.save_weights(str(last))
                digest = weights_digest(last)
                if improved:  # the same weights: a copy costs less than serializing again
                    with files.atomic_path(folder / layout.BEST) as best:
                        _copy(last, best)
            return {layout.LAST: digest, **({layout.BEST: digest} if improved else {})}
        except BaseException as exc:
            for partial in (folder / prefix).parent.glob(Path(prefix).name + ".*"):
                with contextlib.suppress(OSError):
                    partial.unlink()
            # TensorFlow writes the state's shards into PREFIX_temp/ first.
            shutil.rmtree(f"{folder / prefix}_temp", ignore_errors=True)
            if files.no_space(exc):
                kept = "no completed epoch is kept" if self.record is None else \
                    f"epoch {self.record.epoch} is kept"
                raise files.storage_error(
                    folder, f"the checkpoint of the next epoch ({kept})",
                    f"resume with `tfvae train --resume {self.run_dir}`") from None
            raise
