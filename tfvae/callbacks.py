"""Keras callbacks for tfvae models, usable in your own ``fit`` as in ``tfvae train``.

* :class:`KLWarmup`: linear KL warm-up (Bowman et al. 2016);
* :class:`StopOnNonFinite`: stops at the first non-finite loss and says where;
* :class:`StopOnRequest`: stops at the next step when asked (Ctrl-C, SIGTERM);
* :class:`BoundEvaluation`: logs the k-sample bound of fixed data every few epochs;
* :class:`ReleaseMemory`: hands freed heap back after compilation;
* :class:`Progress`: batches, images, throughput and metrics, one line per epoch.

Example:
  >>> from tfvae.callbacks import KLWarmup
  >>> model.fit(x, epochs=10, callbacks=[KLWarmup(5)])
"""

from __future__ import annotations

import math
import sys
import time

from tfvae._keras import keras
from tfvae.runs.recorder import cut_short as _cut_short
from tfvae.runtime import release_memory


class KLWarmup(keras.callbacks.Callback):
    """Linear KL warm-up: the KL term's weight is ``min(1, epoch / epochs)``.

    Epoch ``e`` (counting from 1) trains with weight ``min(1, e / epochs)``, so
    the ELBO itself is optimised from epoch ``epochs`` on; 0 epochs is no
    warm-up. Reported ``elbo`` metrics always use weight 1.

    Args:
      epochs: warm-up length in epochs.
    """

    def __init__(self, epochs: int):
        super().__init__()
        self.epochs = int(epochs)

    def on_epoch_begin(self, epoch, logs=None):
        weight = min(1.0, (epoch + 1) / self.epochs) if self.epochs > 0 else 1.0
        self.model.kl_weight.assign(weight)




class StopOnNonFinite(keras.callbacks.Callback):
    """Stops training at the first non-finite loss and records where it appeared.

    Args:
      steps_per_call: training steps per Keras step (a fused block's batches).
      batches_per_epoch: training steps per epoch, to bound the reported range.

    Attributes:
      where: None, or ``(epoch, (first_step, last_step))`` 0-based, the step
        range being the one call in which the loss became non-finite (None
        when only the epoch's metrics were non-finite).
    """

    def __init__(self, steps_per_call: int = 1, batches_per_epoch: int | None = None):
        super().__init__()
        self.steps_per_call = int(steps_per_call)
        self.batches_per_epoch = batches_per_epoch
        self.where = None
        self._epoch, self._last = 0, -1

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch, self._last = epoch, -1

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            first = (self._last + 1) * self.steps_per_call
            last = (batch + 1) * self.steps_per_call - 1
            if self.batches_per_epoch:
                last = min(last, self.batches_per_epoch - 1)
            self.where = (self._epoch, (first, last))
            self.model.stop_training = True
        self._last = batch

    def on_epoch_end(self, epoch, logs=None):
        values = [float(v) for v in (logs or {}).values()]
        if self.where is None and not all(math.isfinite(v) for v in values):
            self.where = (epoch, None)
            self.model.stop_training = True

    @property
    def stopped(self) -> bool:
        return self.where is not None


class StopOnRequest(keras.callbacks.Callback):
    """Stops training after the current step once :meth:`request` was called.

    ``tfvae.train`` calls :meth:`request` from its Ctrl-C and SIGTERM
    handlers, so training stops at a clean point: an epoch cut short is not
    recorded (:attr:`stopped`), every epoch whose steps all ran is (a request
    during its last step or its validation stops training after it).
    """

    def __init__(self):
        super().__init__()
        self.requested = False
        self._done = 0

    def request(self) -> None:
        self.requested = True
        if self.model is not None:
            self.model.stop_training = True

    def on_epoch_begin(self, epoch, logs=None):
        self._done = 0

    def on_train_batch_end(self, batch, logs=None):
        self._done = batch + 1
        if self.requested:
            self.model.stop_training = True

    @property
    def stopped(self) -> bool:
        """True once a stop was requested and the epoch in progress was cut short."""
        steps = (self.params or {}).get("steps")
        return self.requested and (steps is None or self._done < steps)


class BoundEvaluation(keras.callbacks.Callback):
    """Logs the k-sample bound (IWAE) of fixed data sets every few epochs.

    For each named data set, ``{name}_iwae_k{k}`` (nats per example) joins the
    epoch's logs, so :class:`tfvae.runs.RunRecorder` (placed after this callback) records
    it in ``metrics.csv`` and the training record. Evaluating reuses
    :func:`tfvae.evaluate` with a fixed seed, so the figures of two epochs are
    comparable.

    Args:
      data: ``{name: data}`` (arrays, or splits of image files).
      k: importance samples.
      every: epochs between evaluations (the last epoch is always evaluated).
      seed: seed of the evaluation's draws.
      dequantized_levels: see :func:`tfvae.evaluate`.
    """

    def __init__(self, data: dict, k: int = 100, every: int = 1, seed: int = 0,
                 dequantized_levels: int | None = None):
        super().__init__()
        self.data, self.k, self.every, self.seed = dict(data), int(k), int(every), int(seed)
        self.dequantized_levels = dequantized_levels

    def on_epoch_end(self, epoch, logs=None):
        from tfvae.evaluation import evaluate

        last = epoch + 1 == self.params.get("epochs")
        if logs is None or ((epoch + 1) % self.every and not last):
            return
        for name, data in self.data.items():
            result = evaluate(self.model, data, k=self.k, seed=self.seed,
                              dequantized_levels=self.dequantized_levels)
            logs[f"{name}_iwae_k{self.k}"] = result["log_likelihood"]


class ReleaseMemory(keras.callbacks.Callback):
    """Returns freed heap once compilation is done and once before validation.

    The first training call compiles the step (XLA's scratch memory, freed
    but kept by the allocator); the first validation traces the test
    step. Handing the scratch back first keeps the two from stacking up in
    the run's peak memory.
    """

    def __init__(self):
        super().__init__()
        self._done = set()

    def _once(self, key):
        if key not in self._done:
            self._done.add(key)
            release_memory()

    def on_train_batch_end(self, batch, logs=None):
        self._once("train")

    def on_test_begin(self, logs=None):
        self._once("test")


class Progress(keras.callbacks.Callback):
    """Training progress in batches, images and throughput, then one line per epoch.

    On a terminal the current epoch's line updates in place; otherwise only
    the finished epochs are printed. Counts are batches and images, whatever
    the training path (a fused block holds many batches; Keras'
    ``steps_per_execution`` runs several per call).

    Args:
      batches_per_epoch: training steps per epoch.
      batch_size: images per step.
      images_per_epoch: training images per epoch.
      steps_per_call: batches per Keras step (a fused block's; 1 otherwise).
      live: update a line on a terminal (None: when ``stream`` is a terminal).
      stream: where to write (default ``sys.stdout``).
      skip: callbacks whose ``stopped`` property marks an epoch cut short
        (as :class:`tfvae.runs.RunRecorder`'s): its line says so instead.
    """

    def __init__(self, batches_per_epoch: int, batch_size: int, images_per_epoch: int,
                 steps_per_call: int = 1, live: bool | None = None, stream=None, skip=()):
        super().__init__()
        self.skip = tuple(skip)
        self._done = 0
        self.batches = int(batches_per_epoch)
        self.batch_size = int(batch_size)
        self.images = int(images_per_epoch)
        self.steps_per_call = int(steps_per_call)
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty() if live is None else bool(live)
        self._epochs = None

    def on_train_begin(self, logs=None):
        self._epochs = self.params.get("epochs")

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._done = 0
        self._t0 = self._t_last = time.perf_counter()

    def _head(self) -> str:
        return f"epoch {self._epoch + 1}/{self._epochs}"

    def on_train_batch_end(self, batch, logs=None):
        self._t_last = time.perf_counter()  # training time, validation left out
        done = self._done = min((batch + 1) * self.steps_per_call, self.batches)
        if not self.live:
            return
        images = min(done * self.batch_size, self.images)
        rate = images / max(self._t_last - self._t0, 1e-9)
        loss = (logs or {}).get("loss")
        shown = "" if loss is None else f"  loss {float(loss):.4g}"
        self.stream.write(f"\r{self._head()}  batch {done:,}/{self.batches:,}  "
                          f"{images:,}/{self.images:,} images  {rate:,.0f} images/s{shown}   ")
        self.stream.flush()

    def on_epoch_end(self, epoch, logs=None):
        seconds = self._t_last - self._t0
        metrics = ", ".join(f"{k} {float(v):.4g}" for k, v in (logs or {}).items())
        end = "\r" if self.live else ""
        if _cut_short(self.skip):
            self.stream.write(f"{end}{self._head()}: stopped after {self._done:,} of "
                              f"{self.batches:,} batches; this epoch is not recorded\n")
            self.stream.flush()
            return
        self.stream.write(f"{end}{self._head()}: {self.images:,} images in {seconds:.2f} s "
                          f"({self.images / max(seconds, 1e-9):,.0f} images/s); {metrics}\n")
        self.stream.flush()
