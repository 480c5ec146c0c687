"""Training runs: data, model, ``fit`` with callbacks, checkpoints, figures.

:func:`train` is what ``tfvae train`` calls; everything it does is also
available piece by piece (``tfvae.data``, the model classes, ``fit``,
:func:`tfvae.evaluate`) for users who write their own loop.
"""

from __future__ import annotations

import datetime
import math
import platform
import time
from pathlib import Path

import numpy as np

from tfvae import runs
from tfvae.config import Config
from tfvae.errors import ConfigError, RunDirError, TfvaeError


class TrainingError(TfvaeError):
    """Training stopped (non-finite loss); the last good checkpoint is kept."""


def default_out(config: Config, root: str | Path = "runs") -> Path:
    """A new run directory name under ``root``: ``runs/20261127-101500-gaussian``."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{stamp}-{config.model}"
    path, i = base, 1
    while path.exists():
        path = base.with_name(f"{base.name}-{i}")
        i += 1
    return path


def _prepare_out(out) -> Path:
    out = Path(out)
    if out.exists():
        if not out.is_dir():
            raise RunDirError(f"--out {out} exists and is not a directory; choose another --out")
        if any(out.iterdir()):
            what = "a tfvae run" if (out / runs.CONFIG).exists() else "files"
            raise RunDirError(
                f"--out {out} already holds {what}; tfvae never overwrites a run: "
                "choose a new --out (or leave it out for a fresh folder under runs/)"
            )
    out.mkdir(parents=True, exist_ok=True)
    (out / runs.CHECKPOINTS).mkdir(exist_ok=True)
    (out / runs.FIGURES).mkdir(exist_ok=True)
    return out


def resolve_likelihood(config: Config, dataset) -> str:
    """``bernoulli`` for pixel data, ``gaussian`` for real-valued data (digits, floats)."""
    if config.likelihood is not None:
        return config.likelihood
    if dataset.levels in (2, 256):
        return "bernoulli"
    return "gaussian"


def load_data(config: Config):
    """Loads and prepares the data a Config names; fills in its data fields.

    Returns:
      ``(dataset, splits)`` from :mod:`tfvae.data`.
    """
    from tfvae import data

    dataset = data.load_dataset(config.dataset, config.data_dir, config.tfds_data_dir)
    config.likelihood = resolve_likelihood(config, dataset)
    splits = data.prepare(
        dataset,
        likelihood=config.likelihood,
        binarize=config.binarize,
        val_fraction=config.val_fraction,
        seed=config.seed,
    )
    config.binarize = splits.train_mode if splits.train_mode in data.BINARIZE_MODES else "none"
    config.input_dim = int(dataset.dim)
    config.image_shape = tuple(int(s) for s in dataset.image_shape)
    if config.batch_size > len(splits.train):
        raise ConfigError(
            f"--batch-size {config.batch_size} is larger than the {len(splits.train)} "
            f"training examples; use --batch-size <= {len(splits.train)}"
        )
    # Keep only what the run needs: the raw arrays are not used after
    # prepare(), and holding them would keep a second copy of the data set.
    import dataclasses

    # (Empty arrays of their own, not [:0] views, which would keep the buffers alive.)
    dataset = dataclasses.replace(
        dataset, x_train=np.empty((0, dataset.dim), dataset.x_train.dtype),
        x_test=np.empty((0, dataset.dim), dataset.x_test.dtype), y_train=None, y_test=None,
    )
    return dataset, splits


def release_memory() -> None:
    """Hands freed heap memory back to the system (glibc's ``malloc_trim``).

    Preparing data, compiling the training step and tracing free hundreds of
    MiB in small pieces that the allocator keeps; returning them before the
    next large allocation lowers the run's resident peak. A no-op where the C
    library has no ``malloc_trim``.
    """
    import ctypes
    import ctypes.util
    import gc

    gc.collect()  # cycles left by tracing hold memory too
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _callbacks(model, config: Config, out: Path, has_val: bool, state: dict, data_info: dict,
               strategy=None, steps_per_call: int = 1, batches_per_epoch: int | None = None):
    """Warm-up, the run recorder (metrics, checkpoints, guard) and TensorBoard.

    Under a multi-worker strategy every worker saves (saving is collective),
    non-chief workers into a scratch folder they delete; only the chief writes
    metrics, status and TensorBoard logs.
    """
    from tfvae import distribute
    from tfvae._keras import keras, tf

    chief = distribute.is_chief(strategy)

    monitor = "val_loss" if has_val else "loss"
    checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer)

    class KLWarmup(keras.callbacks.Callback):
        """Linear KL warm-up over ``epochs`` epochs (Bowman et al. 2016)."""

        def on_epoch_begin(self, epoch, logs=None):
            weight = min(1.0, (epoch + 1) / config.kl_warmup) if config.kl_warmup else 1.0
            model.kl_weight.assign(weight)

    class RunRecorder(keras.callbacks.Callback):
        """Per-epoch metrics (CSV + JSON), full checkpoints, non-finite guard.

        Every completed epoch writes, in this order: the full training state
        (weights, optimizer slots, estimator state such as the moving-average
        baseline) under a new checkpoint prefix, ``last``/``best`` weights
        through temporary files and renames, the metrics, and last the
        ``resume.json`` pointer. A crash at any point leaves the previous
        epoch's pointer, and the files it names, intact. A non-chief worker
        saves the same way into a scratch folder and writes nothing else.
        """

        def __init__(self):
            super().__init__()
            self.history: list[dict] = list(state.get("history", []))
            self.best = state.get("best", math.inf)
            self.best_epoch = state.get("best_epoch")
            self.bad = None
            self.epoch = state.get("epoch", 0)
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            # With several steps per call this runs once per call: ``batch`` is
            # the last call of the range since the previous one, and each call
            # (a fused block) holds ``steps_per_call`` training steps.
            loss = (logs or {}).get("loss")
            if loss is not None and not math.isfinite(float(loss)):
                first = (self.last_batch + 1) * steps_per_call
                last = (batch + 1) * steps_per_call - 1
                if batches_per_epoch:
                    last = min(last, batches_per_epoch - 1)
                self.bad = (self.epoch, (first, last))
                self.model.stop_training = True
            self.last_batch = batch

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch
            self.last_batch = -1
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            logs = {k: float(v) for k, v in (logs or {}).items()}
            if self.bad is not None or not all(math.isfinite(v) for v in logs.values()):
                if self.bad is None:
                    self.bad = (epoch, None)
                self.model.stop_training = True
                return  # keep the last good checkpoint
            row = {"epoch": epoch + 1, "seconds": time.perf_counter() - self.t0, **logs}
            self.history.append(row)
            prefix = f"state/epoch-{epoch + 1:04d}"
            # Logs are reduced across workers, so all take the same branches here.
            with distribute.scratch_dir(strategy) as scratch:
                folder = out / runs.CHECKPOINTS if scratch is None else scratch
                checkpoint.write(str(folder / prefix))
                runs.atomic_save_weights(self.model, folder / runs.LAST)
                if logs.get(monitor, math.inf) < self.best:
                    self.best = logs[monitor]
                    self.best_epoch = epoch + 1
                    runs.atomic_save_weights(self.model, folder / runs.BEST)
            if not chief:
                return
            runs.atomic_write_json(out / runs.METRICS_JSON, self.history)
            columns = list(self.history[0])
            lines = [",".join(columns)] + [
                ",".join(repr(h.get(c, "")) for c in columns) for h in self.history
            ]
            runs.atomic_write_text(out / runs.METRICS_CSV, "\n".join(lines) + "\n")
            runs.atomic_write_json(folder / runs.RESUME, {
                "epoch": epoch + 1, "prefix": prefix, "history": self.history,
                "best": self.best, "best_epoch": self.best_epoch, "monitor": monitor,
            })
            for old in (folder / "state").glob("epoch-*"):
                if not old.name.startswith(f"epoch-{epoch + 1:04d}."):
                    old.unlink()
            _write_status(out, config, "training", self.history, self.best_epoch, monitor,
                          data=data_info)

    class ReleaseMemory(keras.callbacks.Callback):
        """Returns freed heap once compilation is done and once before validation.

        The first training call compiles the step (hundreds of MiB of scratch,
        freed but kept by the allocator); the first validation traces the test
        step. Handing the scratch back first keeps the two from stacking up in
        the run's peak memory.
        """

        def __init__(self):
            super().__init__()
            self.done = set()

        def _once(self, key):
            if key not in self.done:
                self.done.add(key)
                release_memory()

        def on_train_batch_end(self, batch, logs=None):
            self._once("train")

        def on_test_begin(self, logs=None):
            self._once("test")

    recorder = RunRecorder()
    if not chief:
        return recorder, [KLWarmup(), recorder, ReleaseMemory()]
    tensorboard = keras.callbacks.TensorBoard(
        log_dir=str(out / runs.TENSORBOARD), profile_batch=0, write_graph=False
    )
    return recorder, [KLWarmup(), recorder, ReleaseMemory(), tensorboard]


def versions() -> dict:
    import tensorflow as tf
    import tensorflow_probability as tfp
    import tf_keras

    import tfvae

    return {
        "tfvae": tfvae.__version__,
        "tensorflow": tf.__version__,
        "tensorflow_probability": tfp.__version__,
        "tf_keras": tf_keras.__version__,
        "python": platform.python_version(),
    }


def _write_status(out, config, status, history, best_epoch, monitor, **extra):
    runs.atomic_write_json(
        out / runs.STATUS,
        {
            "status": status,
            "model": config.model,
            "epochs_completed": len(history),
            "epochs_planned": config.epochs,
            "best_epoch": best_epoch,
            "monitor": monitor,
            "versions": versions(),
            **extra,
        },
    )


# Training steps per call into the TensorFlow runtime on the per-batch path
# (validation, multi-replica strategies). Measured on 2 cores (Fashion-MNIST,
# 784-400-20, batch 128): 15,000 images/s at 1 step per call, 21,000-23,000
# at 20-100. On one device tfvae.train feeds fused blocks instead (one call
# runs tfvae.data.BLOCK_STEPS steps in an XLA-compiled loop), which is what
# benchmarks/train_throughput.py measures.
STEPS_PER_EXECUTION = 50


def compile_model(model, config: Config, steps_per_execution: int = STEPS_PER_EXECUTION):
    """Compiles with Adam and the measured fast path (several steps per call)."""
    from tfvae._keras import keras

    model.compile(optimizer=keras.optimizers.Adam(config.lr),
                  steps_per_execution=steps_per_execution)
    return model


def train(
    config: Config | None = None,
    out: str | Path | None = None,
    verbose: int = 2,
    callbacks=None,
    figures: bool = True,
    resume: str | Path | None = None,
    **overrides,
):
    """Trains a model as a Config says and writes a run directory.

    Args:
      config: a :class:`tfvae.Config`; keyword ``overrides`` set its fields
        (``tfvae.train(latent_dim=2, epochs=5)``).
      out: run directory to create (must not hold files); default a new folder
        under ``runs/``.
      verbose: Keras ``fit`` verbosity (1 progress bar, 2 one line per epoch, 0 none).
      callbacks: extra ``tfvae.keras`` callbacks.
      figures: write PNG figures after training.
      resume: a run directory to continue from its last completed epoch
        (weights, optimizer and estimator state, metrics); ``config`` and
        ``out`` must then be left out, and only ``epochs`` (to train longer)
        and ``strategy`` may be overridden.

    ``strategy="mirrored"`` trains on every local GPU and ``"multiworker"``
    on the cluster that ``TF_CONFIG`` describes (see :mod:`tfvae.distribute`);
    ``batch_size`` is then the global batch. In a multi-worker run every
    worker runs the same call with the same ``out``; only the chief writes
    the run directory (resuming needs it readable by every worker).

    Returns:
      A :class:`tfvae.runs.Run` for the best checkpoint, with the test-split
      evaluation in ``run.evaluation``; None on the non-chief workers of a
      multi-worker run.

    Raises:
      TrainingError: the loss became non-finite; the run keeps its last good
        epoch and can be resumed.
    """
    import dataclasses

    from tfvae import distribute

    if resume is not None:
        return _resume(resume, verbose, callbacks, figures, **overrides)
    config = dataclasses.replace(config or Config(), **overrides)
    # Before any other TensorFlow work: a multi-worker strategy sets up the cluster.
    strategy = distribute.make_strategy(config.strategy)
    dataset, splits = load_data(config)
    out = Path(out if out is not None else default_out(config))
    if distribute.is_chief(strategy):
        _prepare_out(out)
        runs.atomic_write_text(out / runs.CONFIG, config.to_json() + "\n")
    return _fit(config, out, dataset, splits, {}, verbose, callbacks, figures, strategy)


def _resume(run_dir, verbose, callbacks, figures, **overrides):
    import dataclasses

    from tfvae import distribute

    unknown = sorted(set(overrides) - {"epochs", "strategy"})
    if unknown:
        raise ConfigError(
            "a resumed run keeps its configuration; only epochs and strategy can change, "
            f"got {unknown}"
        )
    out = runs.check_run_dir(run_dir)
    config = dataclasses.replace(runs.load_config(out), **overrides)
    state_path = out / runs.CHECKPOINTS / runs.RESUME
    if not state_path.is_file():
        raise RunDirError(
            f"{out} has no completed epoch to resume from; start a new run with tfvae train"
        )
    state = runs.read_json(state_path, "resume state")
    if state.get("epoch", 0) >= config.epochs:
        raise RunDirError(
            f"{out} already completed all {config.epochs} epochs; "
            "pass a larger --epochs to train longer"
        )
    strategy = distribute.make_strategy(config.strategy)
    if distribute.is_chief(strategy):
        runs.atomic_write_text(out / runs.CONFIG, config.to_json() + "\n")
    dataset, splits = load_data(config)
    return _fit(config, out, dataset, splits, state, verbose, callbacks, figures, strategy)


def _fit(config, out, dataset, splits, state, verbose, callbacks, figures, strategy):
    from tfvae import data as data_lib
    from tfvae import distribute
    from tfvae._keras import keras, tf

    initial_epoch = int(state.get("epoch", 0))
    # A resumed run draws fresh, reproducible noise from (seed, epoch).
    keras.utils.set_random_seed(config.seed + 1000 * initial_epoch)
    if config.deterministic:
        # Op determinism is process-wide in TensorFlow: the user asked for it.
        tf.config.experimental.enable_op_determinism()
    # One device: fused blocks of steps, each block one call (see
    # LatentVariableModel.train_step); several replicas: plain batches.
    fused = strategy.num_replicas_in_sync == 1
    # Variables created and optimizer compiled under the scope are mirrored.
    with strategy.scope():
        model = compile_model(runs.build_model(config), config,
                              1 if fused else STEPS_PER_EXECUTION)
        model.reseed(config.seed)
        if initial_epoch:
            _restore_state(model, out / runs.CHECKPOINTS / state["prefix"], out)
    pipeline_seed = config.seed + 1000 * initial_epoch
    steps_per_epoch, steps_per_call, batches_per_epoch = None, 1, None
    if fused:
        blocks = data_lib.make_block_pipeline(
            splits.train, splits.train_mode, config.batch_size, splits.levels,
            seed=pipeline_seed,
        )
        train_ds, steps_per_epoch = blocks.dataset, blocks.steps_per_epoch
        steps_per_call, batches_per_epoch = blocks.block_steps, blocks.batches_per_epoch
    else:
        train_ds = data_lib.make_pipeline(
            splits.train, splits.train_mode, config.batch_size, splits.levels,
            shuffle=True, seed=pipeline_seed,
        )
    val_ds = None
    if splits.val is not None and len(splits.val):
        val_ds = data_lib.make_pipeline(
            splits.val, "none", min(config.batch_size, len(splits.val)), None,
            shuffle=False, seed=config.seed,
        )
    info = _data_info(dataset, splits)
    if not model.fits_on_training_data:
        # The pipeline holds its own tensor copy; the numpy one is not needed again.
        splits.train = np.empty((0,) + splits.train.shape[1:], splits.train.dtype)
    release_memory()
    chief = distribute.is_chief(strategy)
    recorder, cbs = _callbacks(
        model, config, out, val_ds is not None, state, info, strategy, steps_per_call,
        batches_per_epoch,
    )
    monitor = "val_loss" if val_ds is not None else "loss"
    if chief:
        _write_status(out, config, "training", recorder.history, recorder.best_epoch, monitor,
                      data=info)
    try:
        model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=config.epochs,
            steps_per_epoch=steps_per_epoch,
            initial_epoch=initial_epoch,
            verbose=verbose,
            callbacks=cbs + list(callbacks or []),
        )
    except KeyboardInterrupt:
        if chief:
            _write_status(out, config, "interrupted", recorder.history, recorder.best_epoch,
                          monitor, data=info)
        raise
    if recorder.bad is not None:
        epoch, step = recorder.bad
        if chief:
            _write_status(out, config, "failed", recorder.history, recorder.best_epoch, monitor,
                          data=info)
        where = f"epoch {epoch + 1}"
        if step is not None:
            first, last = step[0] + 1, step[1] + 1
            where += f", step {last}" if first == last else f", steps {first}-{last}"
        kept = (
            f"the checkpoint of epoch {len(recorder.history)} is kept in {out} "
            f"(resume from it with `tfvae train --resume {out}`)"
            if recorder.history else "no epoch finished, so no checkpoint was written"
        )
        raise TrainingError(
            f"training stopped: the loss became non-finite (NaN or inf) at {where}; {kept}. "
            "Try a lower --lr, --kl-warmup, or check the data for extreme values."
        )
    if not chief:
        return None
    # On one device the trained model takes the best weights in place: a second
    # model (and its traces) would raise the run's peak memory.
    return finish_run(out, config, splits, dataset, figures=figures, data_info=info,
                      model=model if fused else None)


def _restore_state(model, prefix: Path, out: Path) -> None:
    from tfvae._keras import tf

    # Create the optimizer's slots first so every saved value has a home (under
    # the caller's strategy scope, so they are mirrored like the weights).
    model.optimizer.build(model.trainable_variables)
    try:
        status = tf.train.Checkpoint(model=model, optimizer=model.optimizer).read(str(prefix))
        status.assert_existing_objects_matched()
    except (tf.errors.OpError, AssertionError, ValueError) as exc:
        raise RunDirError(
            f"the training state {prefix} in {out} cannot be restored "
            f"({type(exc).__name__}: {str(exc).splitlines()[0]}); start a new run"
        ) from None


def _data_info(dataset, splits) -> dict:
    return {
        "name": dataset.name,
        "train": int(len(splits.train)),
        "val": int(0 if splits.val is None else len(splits.val)),
        "test": int(len(splits.test)),
        "binarize": splits.train_mode,
        "image_shape": list(dataset.image_shape),
    }


def finish_run(out: Path, config: Config, splits, dataset, figures: bool = True,
               data_info: dict | None = None, model=None):
    """Loads the best checkpoint, fits extras, evaluates on test, writes figures.

    ``model``: the trained model to load the best weights into, or None to
    build one.
    """
    from tfvae.evaluation import evaluate

    # Training's freed scratch (compilation, traces) goes back to the system
    # before evaluation allocates its own.
    release_memory()
    model, _ = runs.load_model(out, "best", extras=False, into=model)
    if model.fits_on_training_data:
        model.post_fit(train_float(splits, config.seed), seed=config.seed)
    model.save_extras(out)
    results = evaluate(model, splits.test, k=config.iwae_k, seed=config.seed)
    if config.model == "bernoulli" and config.estimator == "vimco":
        results["note"] = "trained with vimco, which targets the k-sample bound, not the ELBO"
    runs.atomic_write_json(out / runs.EVALUATION, results)
    history = runs.read_json(out / runs.METRICS_JSON, "metrics")
    status = runs.read_json(out / runs.STATUS, "run status")
    _write_status(out, config, "completed", history, status.get("best_epoch"),
                  status.get("monitor"), data=data_info or _data_info(dataset, splits),
                  test=results)
    if figures:
        write_figures(out, model, splits, history)
    # The model in hand is the best checkpoint with its extras: no need to rebuild it.
    status = runs.read_json(out / runs.STATUS, "run status")
    return runs.Run(path=out, config=config, model=model, status=status, history=history)


def train_float(splits, seed: int, limit: int = 20000) -> np.ndarray:
    """A float copy of (up to ``limit`` rows of) the training split, as the model sees it."""
    from tfvae import data as data_lib

    rows = splits.train[:limit]
    ds = data_lib.make_pipeline(rows, splits.train_mode, min(len(rows), 1000), splits.levels,
                                shuffle=False, seed=seed)
    return np.concatenate([b.numpy() for b in ds])


def write_figures(out: Path, model, splits, history) -> list[Path]:
    """Reconstructions, prior samples, training curves, latent manifold/scatter."""
    from tfvae import figures as fig

    folder = out / runs.FIGURES
    folder.mkdir(exist_ok=True)
    shape = model.image_shape
    x = splits.test[:10]
    paths = [
        fig.save_reconstructions(folder / "reconstructions.png", x, model.reconstruct(x), shape),
        fig.save_grid(folder / "samples.png", model.sample(64, seed=0), shape, "samples"),
    ]
    if history:
        paths.append(fig.save_curves(folder / "curves.png", history))
    if model.latent_dim == 2:
        quantiles = model.latent_quantiles()
        if quantiles is not None:
            paths.append(fig.save_manifold(folder / "manifold.png", model.decode_mean_numpy,
                                           shape, quantiles))
        codes = model.posterior_code(splits.test[:2000].astype(np.float32))
        codes = np.asarray(codes)
        paths.append(fig.save_latent_scatter(
            folder / "latent.png", codes,
            None if splits.y_test is None else splits.y_test[:2000]))
    paths += model.extra_figures(folder, splits)
    return paths
