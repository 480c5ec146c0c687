"""Shared machinery of tfvae's latent-variable models.

A model composes an encoder ``q(z|x)``, a decoder ``p(x|z)`` and a prior
``p(z)`` (see :mod:`tfvae.networks`) with an objective (see
:mod:`tfvae.objectives`). This base class owns what every model needs for
``compile`` + ``fit`` + ``evaluate`` in user code: metric trackers exposed
through ``metrics``, ``train_step``/``test_step`` returning named scalars (the
keras.io VAE pattern), sampling and reconstruction helpers, and the hooks that
:func:`tfvae.evaluate` uses to compare models on the same quantities.
"""

from __future__ import annotations

import numpy as np

from tfvae import distribute, networks, objectives
from tfvae._keras import keras, tf

# Metrics every model reports, in nats per example.
BASE_METRICS = ("loss", "elbo", "reconstruction", "kl")


def stateless_seed(seed, salt: int = 0):
    """A TFP stateless seed (shape [2] int32 tensor) from an int, or None."""
    if seed is None:
        return None
    return tf.constant([int(seed), int(salt)], dtype=tf.int32)


class LatentVariableModel(keras.Model):
    """Base class: a VAE-like model with ``encode``, ``decode`` and ``prior``.

    Subclasses set ``model_type``, build ``self.encoder`` / ``self.decoder``
    and implement ``prior``, ``posterior_mean``, ``kl_per_dim`` and, when
    training differs from the plain reparameterized ELBO, ``objective``.

    Args:
      input_dim: flat data size D (784 for 28x28 images).
      image_shape: ``(H, W)`` with ``H * W == input_dim``; for figures and conv.
      latent_dim: size of the latent code.
      hidden: encoder hidden layer sizes.
      decoder_hidden: decoder hidden sizes; ``None`` mirrors the encoder, ``()``
        gives a linear decoder.
      likelihood: observation model, ``"bernoulli"`` (binary data, logits) or
        ``"gaussian"`` (real-valued data, learned per-pixel scale).
      arch: ``"mlp"`` or ``"conv"``.
      min_scale: floor of the Gaussian observation scale.
    """

    model_type = "base"
    extra_metrics: tuple[str, ...] = ()
    # Whether post_fit needs the training data (the AE fits its mixture on it).
    fits_on_training_data = False

    def __init__(
        self,
        input_dim: int = 784,
        image_shape=None,
        latent_dim: int = 20,
        hidden=(400,),
        decoder_hidden=None,
        likelihood: str = "bernoulli",
        arch: str = "mlp",
        min_scale: float = 1e-3,
        **kwargs,
    ):
        super().__init__(**kwargs)
        from tfvae.config import parse_sizes  # validated once, at the boundary

        self.input_dim = int(input_dim)
        if image_shape is None:
            side = int(round(self.input_dim**0.5))
            image_shape = (side, side) if side * side == self.input_dim else (1, self.input_dim)
        self.image_shape = tuple(int(s) for s in image_shape)
        if int(np.prod(self.image_shape)) != self.input_dim:
            raise ValueError(
                f"image_shape {self.image_shape} does not match input_dim {self.input_dim}"
            )
        if int(latent_dim) <= 0:
            raise ValueError(f"latent_dim must be a positive integer, got {latent_dim!r}")
        self.latent_dim = int(latent_dim)
        self.hidden = parse_sizes(hidden, "hidden")
        self.decoder_hidden = None if decoder_hidden is None else parse_sizes(
            decoder_hidden, "decoder_hidden"
        )
        if likelihood not in ("bernoulli", "gaussian"):
            raise ValueError(f"unknown likelihood {likelihood!r}; choose bernoulli or gaussian")
        self.likelihood = likelihood
        self.arch = arch
        self.min_scale = float(min_scale)
        # KL weight for warm-up (Bowman et al. 2016); 1 gives the ELBO. Kept in a
        # non-trainable variable so a callback can change it without retracing.
        self.kl_weight = tf.Variable(1.0, trainable=False, name="kl_weight")
        # Training noise comes from stateless ops seeded by this generator: XLA's
        # stateful random ops are not reproducible, while the generator's state
        # is a variable that checkpoints (and so resumes) with the model.
        self.seed_generator = tf.random.Generator.from_seed(0)
        self._trackers = {
            name: keras.metrics.Mean(name=name) for name in BASE_METRICS + self.extra_metrics
        }

    # ------------------------------------------------------------------ parts
    @property
    def decoder_sizes(self) -> tuple[int, ...]:
        if self.decoder_hidden is not None:
            return tuple(self.decoder_hidden)
        return tuple(reversed(self.hidden))

    def _build_encoder(self, head):
        """``x -> q(z|x)`` (or a code) ending in ``head`` from a ``networks.*_head``."""
        return networks.build_encoder(
            self.input_dim, self.hidden, head, arch=self.arch, image_shape=self.image_shape
        )

    def _build_decoder(self):
        return networks.build_decoder(
            self.latent_dim,
            self.decoder_sizes,
            networks.observation_head(self.likelihood, self.input_dim, self.min_scale),
            arch=self.arch,
            image_shape=self.image_shape,
        )

    def prior(self):
        """The prior ``p(z)``: a distribution with event shape ``[latent]``."""
        raise NotImplementedError

    def encode(self, x, training=None):
        """``q(z|x)`` for a batch ``x`` of shape ``[batch, D]``."""
        return self.encoder(x, training=training)

    def decode(self, z, training=None):
        """``p(x|z)`` for codes of shape ``[..., latent]``; batch shape ``z.shape[:-1]``.

        Leading sample dimensions are folded into the batch so the same
        decoder (conv included) serves IWAE's ``[k, batch, latent]`` codes.
        """
        z = tf.convert_to_tensor(z)
        if z.shape.rank == 2:
            return self.decoder(z, training=training)
        flat = tf.reshape(z, [-1, self.latent_dim])
        return self.decoder(flat, training=training)

    def log_likelihood(self, z, x, training=None):
        """``log p(x|z)`` for codes ``[..., batch, latent]``, shape ``[..., batch]``."""
        z = tf.convert_to_tensor(z)
        lead = tf.shape(z)[:-1]
        p = self.decode(z, training=training)
        if z.shape.rank == 2:
            return objectives.log_likelihood(p, x)
        x_rep = tf.broadcast_to(x, tf.concat([lead, [self.input_dim]], axis=0))
        flat = tf.reshape(x_rep, [-1, self.input_dim])
        return tf.reshape(objectives.log_likelihood(p, flat), lead)

    # ------------------------------------------------------- evaluation hooks
    def elbo_terms(self, x, seed=None, training=None):
        """Single-sample ELBO terms per example: ``reconstruction`` (-log p(x|z)), ``kl``."""
        q = self.encode(x, training=training)
        z = q.sample(seed=seed)
        reconstruction = -self.log_likelihood(z, x, training=training)
        kl = self.rate(q)
        return {"reconstruction": reconstruction, "kl": kl, "z": z, "q": q}

    def rate(self, q):
        """``KL(q(z|x) || p(z))`` per example (analytic)."""
        return objectives.rate(q, self.prior())

    def log_weights(self, x, k, seed=None):
        """Importance log-weights ``log p(x, z_i) - log q(z_i|x)``, shape ``[k, batch]``."""
        q = self.encode(x)
        z = q.sample(k, seed=seed)  # [k, batch, latent]
        return self.log_likelihood(z, x) + self.prior().log_prob(z) - q.log_prob(z)

    def posterior_mean(self, x):
        """``E_q[z]``, shape ``[batch, latent]`` (for active units)."""
        return self.encode(x).mean()

    def kl_per_dim(self, x):
        """Analytic KL per latent dimension, shape ``[batch, latent]``."""
        raise NotImplementedError

    # -------------------------------------------------------------- training
    def reseed(self, seed: int) -> None:
        """Restarts the training noise: the same seed gives the same draws."""
        self.seed_generator.reset_from_seed(int(seed))

    def next_seed(self):
        """A fresh stateless seed (``[2]`` int32) from the model's generator."""
        return tf.cast(self.seed_generator.make_seeds(1)[:, 0], tf.int32)

    def objective(self, x, training=True, seed=None):
        """The training loss and the metrics of one batch.

        Args:
          x: ``[batch, D]`` data.
          training: passed to the networks.
          seed: stateless seed of this batch's draws (``train_step`` passes
            one from :meth:`next_seed`).

        Returns:
          ``(loss, metrics)``: a scalar to minimise and a dict of ``[batch]``
          tensors (or scalars) named as in ``metrics_names``.
        """
        terms = self.elbo_terms(x, seed=seed, training=training)
        loss = tf.reduce_mean(terms["reconstruction"] + self.kl_weight * terms["kl"])
        return loss, {"reconstruction": terms["reconstruction"], "kl": terms["kl"]}

    @property
    def metrics(self):
        # Listing the trackers here lets fit/evaluate reset them every epoch.
        return list(self._trackers.values())

    def _update_metrics(self, loss, values):
        self._record(loss, values)
        # Only what this step measured: test_step has no estimator metrics.
        shown = set(BASE_METRICS) | set(values)
        return {name: t.result() for name, t in self._trackers.items() if name in shown}

    def _record(self, loss, values):
        self._trackers["loss"].update_state(loss)
        self._trackers["elbo"].update_state(-(values["reconstruction"] + values["kl"]))
        for name, value in values.items():
            if name in self._trackers:
                self._trackers[name].update_state(value)

    @staticmethod
    def _unpack(data):
        # fit() may hand us x, (x,), (x, y) or (x, y, w); labels are ignored.
        if isinstance(data, (tuple, list)):
            return data[0]
        return data

    def _step(self, x):
        """One optimizer step on the batch ``x``; returns ``(loss, metrics)``."""
        seed = self.next_seed()
        with tf.GradientTape() as tape:
            loss, values = self.objective(x, training=True, seed=seed)
            # Under a strategy this replica's share of the global-batch mean.
            scaled = distribute.replica_share(loss)
        grads = tape.gradient(scaled, self.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.trainable_variables, strict=True))
        return loss, values

    def train_step(self, data):
        """One training step, or a fused block of them.

        A batch ``x`` (or ``(x, ...)``) takes one step. A dict
        ``{"block": (K, B, D), "rows": n}`` (or ``{"bits": (K, B, ceil(D / 8)),
        "rows": n}``, rows bit-packed by :func:`tfvae.data.pack_bits`) from
        :func:`tfvae.data.make_block_pipeline` (what :meth:`fit` builds from
        arrays and :func:`tfvae.train` uses) takes the ``n // B`` full batches in
        one XLA-compiled loop and the last, partial batch, if any, as one more
        step: the same updates as ``ceil(n / B)`` calls, at a fraction of the
        per-call and per-op cost.
        """
        if isinstance(data, dict) and ("block" in data or "bits" in data):
            packed = "bits" in data
            return self._train_block(data["bits" if packed else "block"], data["rows"], packed)
        loss, values = self._step(self._unpack(data))
        return self._update_metrics(loss, values)

    def _batch_of(self, rows, packed: bool):
        """float32 batch from block rows: bit-unpacked (``pack_bits`` order) or cast."""
        from tfvae.data import unpack_bits

        return tf.cast(unpack_bits(rows, self.input_dim) if packed else rows, tf.float32)

    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None,
            validation_split=0.0, validation_data=None, shuffle=True, class_weight=None,
            sample_weight=None, initial_epoch=0, steps_per_epoch=None, **kwargs):
        """Keras ``fit``; an array ``x`` trains on the fast path by default.

        When ``x`` is a ``[N, D]`` array (numpy or tensor) with no labels,
        weights, ``validation_split`` or ``steps_per_epoch``, on one device,
        the rows are held once (bit-packed when they are binary) and fed as
        fused blocks of :data:`tfvae.data.BLOCK_STEPS` batches of
        ``batch_size`` (see :meth:`train_step`): the same steps, shuffled each
        epoch when ``shuffle``, several times faster than Keras' per-batch
        loop on a CPU. Callbacks' batch hooks then run once per block. Every
        other input goes to Keras' ``fit`` unchanged.
        """
        plain = dict(
            batch_size=batch_size, validation_split=validation_split, shuffle=shuffle,
            class_weight=class_weight, sample_weight=sample_weight,
            steps_per_epoch=steps_per_epoch,
        )
        common = dict(epochs=epochs, verbose=verbose, callbacks=callbacks,
                      validation_data=validation_data, initial_epoch=initial_epoch, **kwargs)
        blocks = self._blocks_for(x, y, **plain)
        if blocks is None:
            return super().fit(x, y, **plain, **common)
        return super().fit(blocks.dataset, steps_per_epoch=blocks.steps_per_epoch, **common)

    def _blocks_for(self, x, y, batch_size, validation_split, shuffle, class_weight,
                    sample_weight, steps_per_epoch):
        """A :class:`tfvae.data.BlockPipeline` for ``fit``'s arguments, or None."""
        from tfvae import data as data_lib

        if not isinstance(x, (np.ndarray, tf.Tensor)) or y is not None:
            return None
        if validation_split or class_weight is not None or sample_weight is not None \
                or steps_per_epoch is not None or shuffle not in (True, False):
            return None
        if self.distribute_strategy.num_replicas_in_sync != 1:
            return None
        x = x.numpy() if isinstance(x, tf.Tensor) else x
        if x.ndim != 2 or x.shape[1] != self.input_dim or len(x) == 0:
            return None  # Keras reports the shape error
        if batch_size is None:
            batch_size = 32  # Keras' default
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
                or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if data_lib.is_binary(x):
            mode = "static"  # bits: held packed, 8 per byte
        else:
            mode, x = "none", np.asarray(x, np.float32)
        return data_lib.make_block_pipeline(
            x, mode, min(int(batch_size), len(x)), None,
            seed=int(np.random.randint(2**31 - 1)), shuffle=bool(shuffle),
        )

    def _train_block(self, block, rows, packed=False):
        if tf.distribute.has_strategy() and \
                tf.distribute.get_strategy().num_replicas_in_sync > 1:
            raise ValueError(
                "fused training blocks run on one device; under a multi-replica strategy "
                "train on plain batches (tfvae.data.make_pipeline)"
            )
        if block.shape.rank != 3 or block.shape[1] is None:
            raise ValueError(f"a training block must be (steps, batch, D), got {block.shape}")
        batch = int(block.shape[1])
        rows = tf.cast(rows, tf.int32)
        full = rows // batch
        with tf.init_scope():
            self.optimizer.build(self.trainable_variables)
        self._run_block(block, full, packed)
        flat = tf.reshape(block, [-1, block.shape[-1]])

        def tail():
            loss, values = self._step(self._batch_of(flat[full * batch:rows], packed))
            self._record(loss, values)
            return tf.constant(0)

        tf.cond(rows > full * batch, tail, lambda: tf.constant(0))
        # Every tracker but the test-only ones is measured in training.
        return {name: t.result() for name, t in self._trackers.items()}

    def _metric_sums(self, loss, values):
        """Per tracker, the ``(sum, count)`` that ``update_state`` would add."""
        measured = {"loss": loss, "elbo": -(values["reconstruction"] + values["kl"]), **values}
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

    @tf.function(jit_compile=True)
    def _run_block(self, block, full, packed):
        # The first ``full`` batches of the block, one optimizer step each. The
        # metrics' sums ride along in the loop and reach the trackers once:
        # updating them every step costs a quarter of the step time.
        size = len(self._trackers)

        def body(i, sums, counts):
            loss, values = self._step(self._batch_of(block[i], packed))
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

    def test_step(self, data):
        x = self._unpack(data)
        terms = self.elbo_terms(x, seed=self.next_seed(), training=False)
        values = {"reconstruction": terms["reconstruction"], "kl": terms["kl"]}
        loss = tf.reduce_mean(terms["reconstruction"] + terms["kl"])
        return self._update_metrics(loss, values)

    def call(self, x, training=None):
        """Reconstruction means at a posterior sample, ``[batch, D]``."""
        q = self.encode(x, training=training)
        return self.decode(q.sample(), training=training).mean()

    # ------------------------------------------------------------ generation
    def sample(self, n: int, seed: int | None = None) -> np.ndarray:
        """Draws ``n`` codes from the prior and returns decoder means ``[n, D]``.

        The means are pixel probabilities for a Bernoulli likelihood and pixel
        means for a Gaussian one. The same ``seed`` gives the same images.
        """
        if int(n) <= 0:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        z = self.prior().sample(int(n), seed=stateless_seed(seed, 1))
        return self.decode(z).mean().numpy()

    def reconstruct(self, x) -> np.ndarray:
        """Decoder means at the posterior mean code, ``[batch, D]``."""
        x = tf.convert_to_tensor(np.asarray(x, dtype=np.float32).reshape(-1, self.input_dim))
        return self.decode(self.posterior_code(x)).mean().numpy()

    def posterior_code(self, x):
        """A representative code for ``x``: the posterior mean (or mode for binary codes)."""
        return self.posterior_mean(x)

    def decode_mean(self, z):
        """Decoder means for codes ``[batch, latent]`` (probabilities or pixel means)."""
        return self.decode(z).mean()

    def decode_mean_numpy(self, z) -> np.ndarray:
        """:meth:`decode_mean` on a numpy array of codes, returning numpy."""
        return self.decode_mean(tf.convert_to_tensor(np.asarray(z, np.float32))).numpy()

    def latent_quantiles(self):
        """Maps probabilities to prior coordinates for the 2-D manifold figure, or None."""
        return None

    def extra_figures(self, folder, splits) -> list:
        """Model-specific figures written after training; returns their paths."""
        return []

    # ------------------------------------------------------ run integration
    @classmethod
    def config_kwargs(cls, config) -> dict:
        """Constructor keyword arguments from a :class:`tfvae.config.Config`."""
        return config.model_kwargs()

    def check_ready(self) -> None:
        """Raises a TfvaeError if the model cannot be evaluated or sampled yet."""

    def post_fit(self, x_train, seed: int = 0) -> None:
        """Called by :func:`tfvae.train` after ``fit`` (the AE fits its mixture here)."""

    def save_extras(self, run_dir) -> None:
        """Saves state that is not a Keras weight (none for VAEs)."""

    def load_extras(self, run_dir) -> None:
        """Loads what :meth:`save_extras` wrote."""

    # --------------------------------------------------------- serialization
    def get_config(self):
        return {
            "input_dim": self.input_dim,
            "image_shape": list(self.image_shape),
            "latent_dim": self.latent_dim,
            "hidden": list(self.hidden),
            "decoder_hidden": None if self.decoder_hidden is None else list(self.decoder_hidden),
            "likelihood": self.likelihood,
            "arch": self.arch,
            "min_scale": self.min_scale,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        return cls(**config)

    def _finish_build(self):
        # Create every weight now, so save/load and weight counts work before
        # the first batch.
        x = tf.zeros([1, self.input_dim])
        self.elbo_terms(x)
        self.built = True
