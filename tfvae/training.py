"""Training runs: data, model, Keras ``fit`` with callbacks, checkpoints, evaluation.

:func:`train` is what ``tfvae train`` calls; its pieces (:mod:`tfvae.data`, the
models, ``fit``, :mod:`tfvae.callbacks`, :func:`tfvae.evaluate`) serve own loops.

Ctrl-C and SIGTERM stop training at a clean point (after the step in
progress; an epoch cut short is not recorded, one whose steps all ran is)
and raise :class:`tfvae.errors.Interrupted`, whose message says what was
kept and how to continue. Once a stop is under way, further signals are
ignored, so that it records itself (``run.json`` says ``interrupted``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import signal
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tfvae import budget, distribute, files
from tfvae.config import RESUMABLE_FIELDS, Config, check_text_path
from tfvae.errors import ConfigError, Interrupted, RunDirError, TfvaeError
from tfvae.final_evaluation import finish_run
from tfvae.fused_blocks import is_block
from tfvae.runs import layout, record
from tfvae.runs.families import family_for, with_precision
from tfvae.runs.recorder import RunRecorder
from tfvae.runs.run_data import data_info, load_data
from tfvae.runs.store import Run, build_model, load_config
from tfvae.runtime import release_memory


class TrainingError(TfvaeError):
    """Training stopped (non-finite loss); the last good checkpoint is kept."""


# ------------------------------------------------------------------ paths


@dataclasses.dataclass
class Feed:
    """What one training path gives ``fit``: the data and the compile options."""

    dataset: object
    steps_per_epoch: int
    batches_per_epoch: int
    steps_per_call: int
    images_per_epoch: int
    compile: dict


def _fused_feed(config, splits, seed) -> Feed:
    from tfvae import data

    blocks = data.blocks(splits.train, config.batch_size, seed=seed, mode=splits.train_mode,
                         levels=splits.levels)
    # The block runs its own XLA loop: one block per Keras step, no outer XLA.
    return Feed(blocks.dataset, blocks.steps_per_epoch, blocks.batches_per_epoch,
                blocks.block_steps, blocks.rows, {"steps_per_execution": 1, "jit_compile": False})


def _keras_feed(config, splits, seed, indices=False) -> Feed:
    from tfvae import data

    batches = -(-len(splits.train) // config.batch_size)
    if splits.streamed and indices:
        raise ConfigError(f"--inference {config.inference} needs the training data in memory, "
                          "not a folder of images read file by file: save them as an .npz file")
    if splits.streamed:  # image files, decoded batch by batch
        dataset = splits.train.dataset(config.batch_size, shuffle=True, seed=seed, repeat=True)
    else:  # with indices: (batch, row indices) pairs
        dataset = data.make_pipeline(splits.train, splits.train_mode, config.batch_size,
                                     splits.levels, shuffle=True, seed=seed, repeat=True,
                                     indices=indices)
    # compile's own defaults (steps per execution, XLA by architecture).
    return Feed(dataset, batches, batches, 1, len(splits.train), {})


@dataclasses.dataclass(frozen=True)
class TrainingPath:
    """A way to feed ``fit``: ``make(config, splits, seed) -> Feed``."""

    summary: str
    make: Callable


#: Training paths: the same batches and updates per epoch, different engines.
PATHS = {
    "fused": TrainingPath("blocks of 50 batches, each block one XLA-compiled loop", _fused_feed),
    "keras": TrainingPath("Keras' per-batch loop, several steps per execution", _keras_feed),
    "indexed": TrainingPath("Keras' loop on (batch, row indices): for per-example parameters",
                            functools.partial(_keras_feed, indices=True)),
}
#: The faster path on one device, per architecture, as ``benchmarks/user_fit.py``
#: compares them (``--settings default blocks``): XLA speeds up dense layers on a
#: CPU and slows down convolutions.
FASTEST_PATH = {"mlp": "fused", "conv": "keras"}


def choose_path(config: Config, streamed: bool = False) -> str:
    """The training path ``tfvae.train`` takes for a configuration.

    Under any ``tf.distribute`` strategy other than the default (even with
    one device) the fused blocks cannot run (the optimizer's cross-replica
    update does not fit in the compiled loop): Keras' loop. Data read file by
    file (``streamed``) are not held as one tensor: Keras' loop. A family that
    needs its own path (:attr:`tfvae.runs.families.Family.training_path`) takes
    it. Otherwise the faster path for the architecture (:data:`FASTEST_PATH`).
    """
    own = family_for(config).training_path
    if own is not None:
        return own
    if config.strategy != "default" or streamed:
        return "keras"
    return FASTEST_PATH[config.arch]


# ------------------------------------------------------------------ session


@dataclasses.dataclass
class Session:
    """Everything one training call works with."""

    config: Config
    out: Path
    strategy: object
    chief: bool
    splits: object
    data: dict
    previous: record.Record | None = None
    verbose: int = 2
    callbacks: list = dataclasses.field(default_factory=list)
    figures: bool = True
    progress: Callable | None = None


class _Signals:
    """While active: SIGINT/SIGTERM request a stop while fitting, raise Interrupted otherwise;
    once a stop is under way (``stopping``), they are ignored."""

    def __init__(self):
        self.fitting = None  # the StopOnRequest of the fit in progress
        self.stopping = False
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.stopping:  # a second Ctrl-C would cut short the writing of the final status
            return
        if self.fitting is not None and not self.fitting.requested:
            self.fitting.request()  # a clean stop after the step in progress
            return
        self.stopping = True
        raise Interrupted("interrupted")

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def _advice_on_interrupt(out: Path, config: Config):
    """Turns any KeyboardInterrupt into an Interrupted that says what was kept."""
    try:
        yield
    except KeyboardInterrupt as exc:
        raise Interrupted(interruption_advice(out, config)) from exc


def interruption_advice(out: Path, config: Config) -> str:
    """What an interrupted run kept, and the command that continues it."""
    if not (out / layout.CONFIG).is_file():
        return f"interrupted before the run started; nothing was written to {out}"
    try:
        state = record.read(out)
    except RunDirError as exc:
        return f"interrupted; {exc}"
    if state is None:
        return (f"interrupted before the first epoch completed; `tfvae train --resume {out}` "
                "starts it again from the beginning")
    if state.epoch < config.epochs:
        return (f"interrupted after {state.epoch} of {config.epochs} epochs, all saved in {out}; "
                f"continue with: tfvae train --resume {out}")
    return (f"interrupted during the final evaluation (all {state.epoch} epochs are saved); "
            f"`tfvae train --resume {out}` finishes it")


# ------------------------------------------------------------------ entry


def train(
    config: Config | None = None,
    out: str | Path | None = None,
    verbose: int = 2,
    callbacks=None,
    figures: bool = True,
    resume: str | Path | None = None,
    progress: Callable | None = None,
    lock: layout.RunLock | None = None,
    **overrides,
) -> Run:
    """Trains a model as a Config says and writes a run directory.

    Args:
      config: a :class:`tfvae.Config`; keyword ``overrides`` set its fields
        (``tfvae.train(latent_dim=2, epochs=5)``).
      out: run directory to create (must not hold files); default a new folder
        under ``runs/``.
      verbose: 0 silent, 1 a live progress line, 2 one line per epoch.
      callbacks: extra ``tfvae.keras`` callbacks.
      figures: write PNG figures after training.
      resume: a run directory to continue from its last completed epoch
        (weights, optimizer and estimator state, metrics); ``config`` and
        ``out`` must then be left out, and only ``epochs`` (to train longer)
        and ``strategy`` may be overridden. A run with no completed epoch
        starts again; a run interrupted during its final evaluation finishes it.
      progress: ``progress(phase, done, total)`` during the final evaluation.
      lock: the run's :class:`tfvae.runs.RunLock`, held already (``tfvae train``
        takes it before importing TensorFlow, to refuse a second writer at once);
        released at the end, a new run's folder removed if the run never started.

    ``strategy="mirrored"`` trains on every local GPU and ``"multiworker"``
    on the cluster that ``TF_CONFIG`` describes (see :mod:`tfvae.distribute`);
    ``batch_size`` is then the global batch. In a multi-worker run every
    worker runs the same call with the same ``out``; only the chief writes
    the run directory (resuming needs it readable by every worker).

    Returns:
      A :class:`tfvae.runs.Run` for the best checkpoint, with the test-split
      evaluation in ``run.evaluation``; on the non-chief workers of a
      multi-worker run, a Run with ``role`` ``"worker N"`` and no model.

    Raises:
      TrainingError: the loss became non-finite; the run keeps its last good
        epoch and can be resumed.
      tfvae.errors.Interrupted: Ctrl-C or SIGTERM; the message says how to continue.
      tfvae.files.StorageError: the disk is full; the last good epoch is kept.
    """
    options = dict(verbose=verbose, callbacks=list(callbacks or []), figures=figures,
                   progress=progress)
    if resume is not None:
        if config is not None or out is not None:
            if lock is not None:
                lock.release()
            raise ConfigError("a resumed run keeps its configuration and directory; "
                              "give only resume= (and epochs= or strategy=)")
        return _resume(Path(resume), overrides, options, lock)
    config = dataclasses.replace(config or Config(), **overrides)
    out = layout.default_out(config.model) if out is None else Path(check_text_path(out, "out"))
    return _new_run(config, out, options, lock)


def _new_run(config: Config, out: Path, options: dict, lock=None) -> Run:
    if lock is None and config.strategy != "multiworker":  # a cluster's workers share --out
        lock = layout.create_run_dir(out)  # first: a second writer is refused at once
    try:
        config = with_precision(config)  # recorded: resumed and loaded runs build alike
        with _Signals() as signals, _advice_on_interrupt(out, config):
            strategy = distribute.make_strategy(config.strategy)
            chief = distribute.is_chief(strategy)
            dataset, splits = load_data(config)
            budget.check_feasible(config, splits)  # before a model is built or a file written
            if chief and lock is None:
                lock = layout.create_run_dir(out)
            if chief:
                files.atomic_write_text(out / layout.CONFIG, config.to_json() + "\n")
            session = Session(config, out, strategy, chief, splits,
                              data_info(dataset, splits), **options)
            return _run(session, signals)
    finally:
        if lock is not None:
            lock.abandon()  # a run that never started leaves no folder; others are released


def _resume(out: Path, overrides: dict, options: dict, lock=None) -> Run:
    try:
        unknown = sorted(set(overrides) - set(RESUMABLE_FIELDS))
        if unknown:
            raise ConfigError(
                f"a resumed run keeps its configuration; only {' and '.join(RESUMABLE_FIELDS)} "
                f"can change, got {unknown}"
            )
        layout.check_run_dir(out)
        config = dataclasses.replace(load_config(out), **overrides)
        with _Signals() as signals, _advice_on_interrupt(out, config):
            if lock is None and config.strategy != "multiworker":
                lock = layout.RunLock(out).acquire()
            layout.check_entries(out, family_for(config).extra_files)  # before any write
            state = record.read(out)  # validated before anything trusts it
            record.check_resume(out, config, state, overrides.get("epochs"))
            strategy = distribute.make_strategy(config.strategy)
            chief = distribute.is_chief(strategy)
            if lock is None and chief:
                lock = layout.RunLock(out).acquire()
            if chief:
                record.prepare_resume(out, config, state)
            dataset, splits = load_data(config)
            budget.check_feasible(config, splits)
            session = Session(config, out, strategy, chief, splits, data_info(dataset, splits),
                              previous=state, **options)
            return _run(session, signals)
    finally:
        if lock is not None:
            lock.release()


# ------------------------------------------------------------------ running


def _run(session: Session, signals: _Signals) -> Run:
    """Fits (when epochs remain), then finishes the run; statuses on every way out."""
    config, out = session.config, session.out
    done = session.previous is not None and session.previous.epoch >= config.epochs
    try:
        model = None if done else _fit(session, signals)
        if not session.chief:
            return Run(path=out, config=config, model=model, status={}, history=[],
                       role=_role(session.strategy))
        return finish_run(out, config, session.splits, session.data, session.figures,
                          model=model if config.strategy == "default" else None,
                          progress=session.progress)
    except KeyboardInterrupt:
        signals.stopping = True
        if session.chief:
            _set_status(session, "interrupted")
        raise
    except (TrainingError, files.StorageError) as exc:
        signals.stopping = True
        if session.chief:
            _set_status(session, "failed")
        raise files.advised(exc, f"resume with `tfvae train --resume {out}`") from None


def _set_status(session: Session, status: str) -> None:
    # Best effort: on a full disk even this small file may not be writable.
    with contextlib.suppress(OSError, TfvaeError):
        if (session.out / layout.CONFIG).is_file():
            record.write_status(session.out, session.config, status, record.read(session.out),
                                data=session.data)


def _role(strategy) -> str:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return "chief"
    return f"{resolver.task_type} {resolver.task_id}"


def _fit(session: Session, signals: _Signals):
    """Builds, compiles and fits the model from the session's record; returns it."""
    from tfvae import callbacks as cb
    from tfvae._keras import keras, tf

    config, previous = session.config, session.previous
    initial_epoch = 0 if previous is None else previous.epoch
    # A resumed run draws fresh, reproducible noise from (seed, epoch).
    keras.utils.set_random_seed(config.seed + 1000 * initial_epoch)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()  # process-wide: the user asked
    feed = PATHS[choose_path(config, session.splits.streamed)].make(
        config, session.splits, config.seed + 1000 * initial_epoch)
    model = _build(session, feed)
    if family_for(config).post_fit is None and not session.splits.streamed:
        # The pipeline holds its own tensor copy; the numpy one is needed again
        # only by families that fit something on the training rows afterwards.
        # (No local name for them: it would keep them alive through fit.)
        splits = session.splits
        splits.train = np.empty((0,) + splits.train.shape[1:], splits.train.dtype)
    val_ds = _validation(session)
    guard = cb.StopOnNonFinite(feed.steps_per_call, feed.batches_per_epoch)
    stop = cb.StopOnRequest()
    callbacks = _callbacks(session, feed, val_ds is not None, guard, stop)
    if is_block(feed.dataset.element_spec):
        # Compiled with the training rows already dropped, its scratch returned next.
        model.compile_block(feed.dataset.element_spec)
    release_memory()
    signals.fitting = stop
    try:
        model.fit(feed.dataset, validation_data=val_ds, epochs=config.epochs,
                  steps_per_epoch=feed.steps_per_epoch, initial_epoch=initial_epoch, verbose=0,
                  callbacks=callbacks + session.callbacks)
    finally:
        signals.fitting = None
    if stop.requested:
        signals.stopping = True
        raise KeyboardInterrupt
    if guard.where is not None:
        raise TrainingError(_non_finite_message(session, guard.where, callbacks))
    return model


def _build(session: Session, feed: Feed):
    """The compiled model: restored from the record, or started (from data if asked)."""
    from tfvae._keras import keras

    config, previous = session.config, session.previous
    with session.strategy.scope():  # variables and optimizer mirrored under a strategy
        model = build_model(config)
        prior_optimizer = None if config.prior_lr is None else \
            keras.optimizers.SGD(config.prior_lr)
        model.compile(optimizer=keras.optimizers.Adam(config.lr),
                      prior_optimizer=prior_optimizer, **feed.compile)
        model.reseed(config.seed)
        model.build_optimizers()
        if previous is not None:
            _restore_state(model, session.out / layout.CHECKPOINTS / previous.prefix, session.out)
        elif config.center_input or config.output_bias_from_data:
            mean, std = session.splits.train_moments(config.seed)
            model.init_from_data(mean, center=config.center_input,
                                 output_bias=config.output_bias_from_data, std=std)
    return model


#: Rows per validation batch of dense models held in memory (convolutional and
#: streamed ones validate in training batches): each batch is one call of Keras'
#: test function, and the validation loss is a mean over examples whatever the
#: batch size.
VAL_BATCH = 4096


def _validation(session: Session):
    """The fixed validation batches, or None without a validation split."""
    config, val = session.config, session.splits.val
    if val is None or not len(val):
        return None
    if session.splits.streamed:
        return val.dataset(min(config.batch_size, len(val)))
    size = max(config.batch_size, VAL_BATCH) if config.arch == "mlp" else config.batch_size
    from tfvae._keras import tf
    from tfvae.models.inputs import checked

    rows = np.asarray(val, np.float32)  # sliced, no map or autotuning: a cheap iterator
    # Prepared by the data layer, so its values need no check in every batch.
    return checked(tf.data.Dataset.from_tensor_slices(rows).batch(min(size, len(val))))


def _callbacks(session: Session, feed: Feed, has_val: bool, guard, stop) -> list:
    from tfvae import callbacks as cb
    from tfvae._keras import keras

    config, out = session.config, session.out
    recorder = RunRecorder(out, "val_loss" if has_val else "loss", session.previous,
                              config, session.data, session.strategy, skip=(guard, stop))
    found = [cb.KLWarmup(config.kl_warmup), guard, stop]
    if config.eval_k:  # before the recorder, which records the logs it adds
        splits = session.splits
        sets = {"test": splits.test} if splits.val is None else \
            {"val": splits.val, "test": splits.test}
        found.append(cb.BoundEvaluation(sets, config.eval_k, config.eval_every, config.seed,
                                        splits.dequantized_levels))
    found += [recorder, cb.ReleaseMemory()]
    if session.verbose:
        found.append(cb.Progress(feed.batches_per_epoch, config.batch_size,
                                 feed.images_per_epoch, feed.steps_per_call,
                                 live=session.verbose == 1, skip=(guard, stop)))
    if session.chief:
        found.append(keras.callbacks.TensorBoard(log_dir=str(out / layout.TENSORBOARD),
                                                 profile_batch=0, write_graph=False))
    return found


def _non_finite_message(session: Session, where, callbacks) -> str:
    epoch, steps = where
    recorder = next(c for c in callbacks if hasattr(c, "record"))
    text = f"epoch {epoch + 1}"
    if steps is not None:
        first, last = steps[0] + 1, steps[1] + 1
        text += f", step {last}" if first == last else f", steps {first}-{last}"
    state = recorder.record
    kept = (f"the checkpoint of epoch {state.epoch} is kept in {session.out} (resume from it "
            f"with `tfvae train --resume {session.out}`)" if state is not None
            else "no epoch finished, so no checkpoint was written")
    return (f"training stopped: the loss became non-finite (NaN or inf) at {text}; {kept}. "
            "Try a lower --lr, --kl-warmup, or check the data for extreme values.")


def _restore_state(model, prefix: Path, out: Path) -> None:
    from tfvae._keras import tf

    # The optimizers' slots exist (``_build``), so every saved value has a home.
    try:
        status = tf.train.Checkpoint(model=model, optimizer=model.optimizer).read(str(prefix))
        status.assert_existing_objects_matched()
    except (tf.errors.OpError, AssertionError, ValueError, IndexError) as exc:  # Index: cut short
        raise RunDirError(
            f"the training state {prefix} in {out} cannot be restored "
            f"({type(exc).__name__}: {str(exc).splitlines()[0]}); start a new run"
        ) from None
