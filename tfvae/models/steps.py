"""``compile``, ``train_step`` and ``test_step`` shared by every tfvae model.

Keras' own ``fit`` drives them (the keras.io VAE pattern): metric trackers
exposed through ``metrics``, a dict of named scalars returned per step. A
batch ``x`` (or ``(x, ...)``) takes one optimizer step. A fused block from
:func:`tfvae.data.blocks` takes all its batches in one XLA-compiled loop,
which is what ``tfvae train`` feeds on one device.
"""

from __future__ import annotations

import contextlib

from tfvae import distribute
from tfvae._keras import keras, tf
from tfvae.errors import ConfigError
from tfvae.fused_blocks import KINDS, ROWS_KEY, block_data, is_block, noisy_bits, unpack_bits
from tfvae.models import inputs

#: ``compile``'s default ``steps_per_execution``: Keras runs this many training
#: steps per call into the runtime, which spreads the cost of each call over many
#: small steps (``benchmarks/user_fit.py`` compares settings).
STEPS_PER_EXECUTION = 32
#: Keras traces ``train_step``/``test_step`` with AutoGraph, which rewrites
#: every Python function they call before tracing it. tfvae's steps use
#: ``tf.cond``/``tf.while_loop`` where they branch on tensors, so they are
#: traced as written, which spares AutoGraph's rewriting and makes the first
#: compiled step come sooner (``benchmarks/train_throughput.py --main-job``).
plain_trace = tf.autograph.experimental.do_not_convert
#: ``compile``'s default ``jit_compile`` per architecture (``benchmarks/user_fit.py``
#: compares both): XLA speeds up dense steps on a CPU and slows down convolutions.
JIT_COMPILE = {"mlp": True, "conv": False}


class TrainingSteps:
    """Mixin of :class:`tfvae.models.base.LatentVariableModel`: Keras training hooks.

    A model using it defines ``metric_names`` (its trackers), ``objective``
    (loss and per-example metrics of a batch), ``elbo_terms``, ``next_seed``
    and ``input_dim``.
    """

    #: ``tf.function`` methods of training alone. SavedModel saving saves every
    #: ``tf.function`` that ``dir(model)`` lists (tracing those with an input
    #: signature); these apply the optimizer, which an uncompiled model lacks and
    #: a saved model does not serve, so ``dir`` leaves them out.
    _TRAINING_FUNCTIONS = frozenset({"_block_step", "_run_block"})

    def __dir__(self):
        return [name for name in super().__dir__() if name not in self._TRAINING_FUNCTIONS]

    @property
    def control_variables(self) -> list:
        """Variables of a learned control variate (``relax``'s), which the training step
        fits to minimise the squared gradient of ``inference_variables``; none by default."""
        return []

    def compile(self, optimizer="adam", steps_per_execution=None, jit_compile=None,
                prior_optimizer=None, control_optimizer=None, **kwargs):
        """Keras ``compile`` with the defaults that train this model fastest on a CPU.

        ``steps_per_execution`` defaults to :data:`STEPS_PER_EXECUTION` and
        ``jit_compile`` to :data:`JIT_COMPILE` for the model's architecture (off
        under a ``tf.distribute`` strategy). Both mean what Keras documents:
        with ``steps_per_execution=N`` batch callbacks run every N batches.
        Pass ``steps_per_execution=1`` or ``jit_compile=False`` for Keras' own
        defaults.

        The loss is the model's own objective and the metrics its own
        trackers (``metric_names``): ``loss``, ``metrics``, ``loss_weights``
        and ``weighted_metrics`` are refused (a ConfigError), as are Keras 3
        optimizers (a TypeError: use ``tfvae.keras.optimizers``).

        ``prior_optimizer`` (e.g. ``tfvae.keras.optimizers.SGD(1e-2)``) trains
        the model's ``prior_variables`` (a learned prior) apart from the rest.

        ``control_optimizer`` trains the model's ``control_variables`` (the
        learned control variate of ``relax``): each step it descends the
        gradient, with respect to them, of the summed square of the gradient
        the step applies to the inference networks, that gradient's
        single-sample variance up to a constant (Grathwohl et al. 2018).
        Default: Adam at the optimizer's learning rate with ``beta_1=0.999``,
        as the official DisARM code trains RELAX's control.
        """
        given = [name for name in ("loss", "metrics", "loss_weights", "weighted_metrics")
                 if kwargs.get(name) is not None]
        if given:
            raise ConfigError(
                f"compile({given[0]}=...): a tfvae model's loss is its own objective (the "
                f"negative ELBO or its estimator's surrogate) and it reports its own metrics "
                f"({', '.join(self.metric_names)}); leave {' and '.join(given)} out"
            )
        inputs.refuse_keras3(optimizer=optimizer, prior_optimizer=prior_optimizer,
                             control_optimizer=control_optimizer)
        self.prior_optimizer = prior_optimizer
        if steps_per_execution is None:
            steps_per_execution = STEPS_PER_EXECUTION
        if jit_compile is None:
            jit_compile = JIT_COMPILE.get(self.arch, False) and not (
                tf.distribute.has_strategy() or kwargs.get("run_eagerly"))
        super().compile(optimizer=optimizer, steps_per_execution=steps_per_execution,
                        jit_compile=jit_compile, **kwargs)
        if control_optimizer is None and self.control_variables:
            rate = self.optimizer.learning_rate
            if not isinstance(rate, keras.optimizers.schedules.LearningRateSchedule):
                rate = float(rate.numpy())
            control_optimizer = keras.optimizers.Adam(rate, beta_1=0.999)
        self.control_optimizer = control_optimizer

    def build_optimizers(self) -> None:
        """Creates the optimizers' variables (Adam's moments, step counts) now.

        Keras creates them in the first traced training function otherwise, and
        a ``tf.function`` that creates variables on its first call is traced a
        second time, which delays the first step; ``tfvae.train`` calls this
        after ``compile``. Building twice is a no-op, and a model without
        variables yet is left for Keras to build at its first step.
        """
        if not self.trainable_variables:
            return
        self.optimizer.build(self.trainable_variables)
        if getattr(self, "prior_optimizer", None) is not None and self.prior_variables:
            self.prior_optimizer.build(self.prior_variables)
        if getattr(self, "control_optimizer", None) is not None and self.control_variables:
            self.control_optimizer.build(self.control_variables)

    def compile_block(self, element_spec) -> bool:
        """Compiles the fused training loop for blocks of ``element_spec`` now.

        ``fit`` compiles it in its first step otherwise, while the memory of
        its own tracing is held: XLA's scratch then comes on top of it.
        Compiled first, the scratch can be handed back
        (:func:`tfvae.runtime.release_memory`) before ``fit``, which reuses the
        trace and the compiled program, so the two never add up in the run's
        peak memory. ``tfvae.train`` calls this for the fused path; the loop
        runs zero batches, so no variable changes.

        Args:
          element_spec: ``dataset.element_spec`` of :func:`tfvae.data.blocks`.

        Returns:
          True; False when nothing is compiled ahead: the model was compiled
          with ``jit_compile=True``, so XLA compiles the loop inside Keras'
          whole training function at its first step (``tfvae.train`` compiles
          fused models with ``jit_compile=False``, ``steps_per_execution=1``).
        """
        if not is_block(element_spec):
            raise ConfigError("compile_block takes the element_spec of tfvae.data.blocks(...)"
                              f".dataset, got {element_spec!r}")
        if getattr(self, "_jit_compile", False):
            return False
        specs, kind = block_data(element_spec)
        self._check_block(specs, kind)
        self.build_optimizers()

        # Called from a graph, as Keras' training function calls it: the same
        # trace, and the same entry of XLA's compilation cache (an eager call
        # would compile a second program).
        @tf.function(autograph=False)
        def compile_only(parts, full):
            return self._run_block(parts, full, kind)

        compile_only(tuple(tf.zeros(spec.shape, spec.dtype) for spec in specs), tf.constant(0))
        return True

    @contextlib.contextmanager
    def _one_step_per_execution(self):
        # Keras' *_on_batch calls hand over one batch, yet a function compiled
        # for N steps per execution would ask for N: run one (the step count is
        # a variable that the compiled loop reads at run time, so nothing retraces).
        steps = getattr(self, "_steps_per_execution", None)
        if steps is None:
            yield
            return
        before = int(steps.numpy())
        steps.assign(1)
        try:
            yield
        finally:
            steps.assign(before)

    # Data enter through these calls: checked and converted (rows or images,
    # uint8 pixels, value ranges; :mod:`tfvae.models.inputs`) before Keras traces
    # a step, so a wrong input fails with tfvae's message, not from inside a trace.
    def fit(self, *args, **kwargs):
        """Keras ``fit``; ``x`` may be rows ``(N, D)`` or images ``(N, H, W, C)``, float or uint8.

        See :mod:`tfvae.models.inputs` for what is accepted and refused.
        """
        call = inputs.bind(keras.Model.fit, args, kwargs)
        inputs.refuse_keras3(callbacks=call.get("callbacks"))
        call["x"] = inputs.model_input(self, call.get("x"), "fit")
        if call.get("validation_data") is not None:
            call["validation_data"] = inputs.validation_data(self, call["validation_data"])
        with inputs.range_errors(self):
            return super().fit(**call)

    def evaluate(self, *args, **kwargs):
        """Keras ``evaluate``, with ``x`` taken as :meth:`fit` takes it."""
        call = inputs.bind(keras.Model.evaluate, args, kwargs)
        if not call.get("_use_cached_eval_dataset"):  # fit's validation: converted already
            inputs.refuse_keras3(callbacks=call.get("callbacks"))
            call["x"] = inputs.model_input(self, call.get("x"), "evaluate")
        with inputs.range_errors(self):
            return super().evaluate(**call)

    def predict(self, *args, **kwargs):
        """Keras ``predict``: decoder means at each example's posterior code (deterministic)."""
        call = inputs.bind(keras.Model.predict, args, kwargs)
        inputs.refuse_keras3(callbacks=call.get("callbacks"))
        call["x"] = inputs.model_input(self, call["x"], "predict", check=False)
        return super().predict(**call)

    def train_on_batch(self, *args, **kwargs):
        call = inputs.bind(keras.Model.train_on_batch, args, kwargs)
        call["x"] = inputs.model_input(self, call["x"], "train_on_batch")
        with self._one_step_per_execution():
            return super().train_on_batch(**call)

    def test_on_batch(self, *args, **kwargs):
        call = inputs.bind(keras.Model.test_on_batch, args, kwargs)
        call["x"] = inputs.model_input(self, call["x"], "test_on_batch")
        with self._one_step_per_execution():
            return super().test_on_batch(**call)

    def predict_on_batch(self, *args, **kwargs):
        call = inputs.bind(keras.Model.predict_on_batch, args, kwargs)
        call["x"] = inputs.model_input(self, call["x"], "predict_on_batch", check=False)
        with self._one_step_per_execution():
            return super().predict_on_batch(**call)

    def compile_from_config(self, config):
        # Loading a compiled .keras file: compile again with what was saved.
        self.compile(**keras.saving.deserialize_keras_object(config))
        self.build_optimizers()

    @property
    def metrics(self):
        # Listing the trackers here lets fit/evaluate reset them every epoch.
        return list(self._trackers.values())

    def get_metrics_result(self):
        """The trackers' results, for the trackers that measured something since their reset.

        Keras compares these names with the names a step returned to decide
        whether to report these (cross-replica) results or the step's own
        (summed over workers under a multi-worker strategy): test steps measure
        fewer trackers than training steps, so only measured ones are listed.
        """
        results = {}
        for name, tracker in self._trackers.items():
            if tf.executing_eagerly() and float(tracker.count.numpy()) == 0.0:
                continue
            results[name] = tracker.result()
        return results

    def _make_trackers(self, names):
        self._trackers = {name: keras.metrics.Mean(name=name) for name in names}

    def _measured(self, loss, values) -> dict:
        """Per tracker name, what one step measured (only the names it measured)."""
        measured = {"loss": loss, **values}
        if "elbo" in self._trackers and "kl" in values:
            measured["elbo"] = -(values["reconstruction"] + values["kl"])
        # Keras weighs a batch's loss by its rows: a partial last batch counts for its
        # rows, not as a whole batch (the epoch's loss is then -elbo at kl_weight 1).
        rows = values.get("reconstruction")  # [batch] in every model
        if rows is not None and rows.shape.rank == 1 and loss.shape.rank == 0:
            measured["loss"] = tf.fill(tf.shape(rows), loss)
        return {k: v for k, v in measured.items() if k in self._trackers}

    def _record(self, loss, values) -> dict:
        measured = self._measured(loss, values)
        for name, value in measured.items():
            self._trackers[name].update_state(value)
        return {name: self._trackers[name].result() for name in measured}

    @staticmethod
    def _unpack(data):
        # fit() may hand us x, (x,), (x, y) or (x, y, w); labels are ignored.
        if isinstance(data, (tuple, list)):
            return data[0]
        return data

    def _step(self, x):
        """One optimizer step on the batch ``x``; returns ``(loss, metrics)``."""
        seed = self.next_seed()
        # Under a mixed_float16 policy compile wraps the optimizer in a
        # LossScaleOptimizer: the loss is scaled up before the gradient so that
        # small float16 gradients do not flush to zero, and scaled back down
        # (Keras' mixed-precision guide, for a custom training step).
        scaling = isinstance(self.optimizer, keras.mixed_precision.LossScaleOptimizer)
        controls = self.control_variables
        # A learned control variate's fit needs the gradient of the gradient: an
        # outer tape records the step's own gradient computation.
        with tf.GradientTape() if controls else contextlib.nullcontext() as outer:
            with tf.GradientTape() as tape:
                loss, values = self.objective(x, training=True, seed=seed)
                # Under a strategy this replica's share of the global-batch mean.
                scaled = distribute.replica_share(loss)
                if scaling:
                    scaled = self.optimizer.get_scaled_loss(scaled)
            grads = tape.gradient(scaled, self.trainable_variables)
            if scaling:
                # The prior's gradients are unscaled here too (they flow through
                # float32 ops only); the LossScaleOptimizer skips a step whose
                # float16 gradients overflowed and lowers its scale.
                grads = self.optimizer.get_unscaled_gradients(grads)
            pairs = list(zip(grads, self.trainable_variables, strict=True))
            if controls:  # the summed square of the inference networks' gradient
                inference = {id(v) for v in self.inference_variables}
                square = tf.add_n([tf.reduce_sum(tf.square(g)) for g, v in pairs
                                   if id(v) in inference and g is not None])
        if controls:
            # RELAX's variance step (Grathwohl et al. 2018, discrete case): the control
            # variables get their own optimizer and this gradient, not the loss's.
            # A step whose float16 gradients overflowed (loss scaling) gives zeros.
            fitted = outer.gradient(square, controls)
            finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in fitted])
            fitted = [tf.where(finite, g, tf.zeros_like(g)) for g in fitted]
            self.control_optimizer.apply_gradients(zip(fitted, controls, strict=True))
            own = {id(v) for v in controls}
            pairs = [(g, v) for g, v in pairs if id(v) not in own]
        separate = getattr(self, "prior_optimizer", None)
        if separate is not None and self.prior_variables:
            own = {id(v) for v in self.prior_variables}
            separate.apply_gradients([(g, v) for g, v in pairs if id(v) in own])
            pairs = [(g, v) for g, v in pairs if id(v) not in own]
        self.optimizer.apply_gradients(pairs)
        return loss, values

    @tf.function(autograph=False, input_signature=[tf.TensorSpec([None, None], tf.float32)])
    def _block_step(self, x):
        """``_step`` for a batch of any size, traced once per model.

        A block's compiled loop and its partial batch (run outside XLA) both
        call it, so the step is traced once rather than twice.
        """
        return self._step(tf.ensure_shape(x, [None, self.input_dim]))

    def _check_block(self, parts, kind: str) -> None:
        """Refuses blocks whose rows are not ``input_dim`` wide (packed: its bytes)."""
        packed = kind == "bits"
        for block in parts[:len(KINDS[kind])]:
            if block.shape.rank != 3 or block.shape[1] is None:
                raise ConfigError(f"a training block must be (steps, batch, D), got {block.shape}")
            width = -(-self.input_dim // 8) if packed else self.input_dim
            if block.shape[-1] != width:
                unit = "bytes of packed bits" if packed else "values"
                raise ConfigError(
                    f"the training blocks hold rows of {block.shape[-1]} {unit}, but the model "
                    f"takes {self.input_dim} inputs ({width} {unit}); make the blocks from rows of "
                    "the model's input size"
                )

    @plain_trace
    def train_step(self, data):
        """One training step, or a fused block of them (see :func:`tfvae.data.blocks`)."""
        if is_block(data):
            parts, kind = block_data(data)
            return self._train_block(parts, data[ROWS_KEY], kind)
        loss, values = self._step(self._unpack(data))
        return self._record(loss, values)

    @plain_trace
    def test_step(self, data):
        x = self._unpack(data)
        terms = self.elbo_terms(x, seed=self.next_seed(), training=False)
        values = {"reconstruction": terms["reconstruction"], "kl": terms["kl"]}
        loss = tf.reduce_mean(terms["reconstruction"] + terms["kl"])
        return self._record(loss, values)

    # ------------------------------------------------------------ fused blocks
    def _batch_of(self, parts, kind: str, index):
        """float32 batch ``index`` (an index or a slice) of a block's parts: bit-unpacked
        (``pack_bits`` order), bits drawn from binarization noise (``noisy_bits``), or cast."""
        if kind == "bits":
            return unpack_bits(parts[0][index], self.input_dim, tf.float32)
        if kind == "noisy":
            return noisy_bits(parts[0][index], parts[1][index], parts[2])
        return tf.cast(parts[0][index], tf.float32)

    def _train_block(self, parts, rows, kind="float"):
        """The ``rows // B`` full batches in one compiled loop, then the partial one."""
        inputs.refuse_blocks_under_strategy(self)  # fit refuses them first, eagerly
        self._check_block(parts, kind)
        batch = int(parts[0].shape[1])
        rows = tf.cast(rows, tf.int32)
        full = rows // batch
        with tf.init_scope():
            self.build_optimizers()
        self._run_block(parts, full, kind)
        flat = tuple(tf.reshape(p, [-1, p.shape[-1]]) if p.shape.rank == 3 else p for p in parts)

        def tail():
            loss, values = self._block_step(self._batch_of(flat, kind, slice(full * batch, rows)))
            for name, value in self._measured(loss, values).items():
                self._trackers[name].update_state(value)
            return tf.constant(0)

        tf.cond(rows > full * batch, tail, lambda: tf.constant(0))
        # Training measures every tracker (test steps only the ELBO terms).
        return {name: t.result() for name, t in self._trackers.items()}

    def _metric_sums(self, loss, values):
        """Per tracker, the ``(sum, count)`` that ``update_state`` would add."""
        measured = self._measured(loss, values)
        sums, counts = [], []
        for name in self._trackers:
            value = measured.get(name)
            if value is None:
                sums.append(tf.constant(0.0))
                counts.append(tf.constant(0.0))
                continue
            value = tf.cast(value, tf.float32)
            sums.append(tf.reduce_sum(value))
            counts.append(tf.cast(tf.size(value), tf.float32))
        return tf.stack(sums), tf.stack(counts)

    @tf.function(jit_compile=True, autograph=False)
    def _run_block(self, parts, full, kind):
        # The first ``full`` batches of the block, one optimizer step each. The
        # metrics' sums ride along in the loop and reach the trackers once,
        # instead of an update per step.
        size = len(self._trackers)

        def body(i, sums, counts):
            loss, values = self._block_step(self._batch_of(parts, kind, i))
            step_sums, step_counts = self._metric_sums(loss, values)
            return i + 1, sums + step_sums, counts + step_counts

        zeros = tf.zeros([size])
        _, sums, counts = tf.while_loop(
            lambda i, *_: i < full, body, (tf.constant(0), zeros, zeros)
        )
        for j, tracker in enumerate(self._trackers.values()):
            tracker.total.assign_add(sums[j])
            tracker.count.assign_add(counts[j])
        return full
