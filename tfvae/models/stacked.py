"""Sigmoid belief networks with several layers of binary units (``--model sbn``).

Generation ``p(z_L) p(z_{L-1}|z_L) ... p(x|z_1)`` and inference
``q(z_1|x) ... q(z_L|z_{L-1})``, every conditional a factorised Bernoulli
(Neal 1992; the layered SBNs of Mnih & Gregor 2014 and Dong et al. 2020).
Between layers the networks are linear (``hidden=()``) or dense with hidden
layers. Training uses the layered estimators of :mod:`tfvae.estimators.layered`, whose
learning signals are local to each layer.

``z_1``, the layer next to the data, is the model's code: ``encode`` gives
``q(z_1|x)``, ``decode`` takes ``z_1``, active units count its units. The
sampler takes one uniform tensor per layer (``u1`` for ``z_1`` ... ``uL``).
"""

from __future__ import annotations

import numpy as np

from tfvae import estimators, heads, networks, objectives
from tfvae._keras import keras, tf
from tfvae.errors import ConfigError
from tfvae.estimators import layered, relax
from tfvae.models.base import BASE_METRICS, LatentVariableModel, order_key
from tfvae.models.bernoulli import BinaryPrior
from tfvae.sampler_noise import Noise


def _flat(net, training=None):
    """``net`` on inputs with leading (chain) axes: folded into the batch and back.

    Its logits come out in float32 whatever the mixed-precision policy the net
    computes in (the layered estimators' log-probabilities and signals are float32).
    """

    def call(h):
        lead = tf.shape(h)[:-1]
        out = tf.cast(net(tf.reshape(h, [-1, h.shape[-1]]), training=training), tf.float32)
        return tf.reshape(out, tf.concat([lead, [out.shape[-1]]], 0))

    return call


@keras.saving.register_keras_serializable(package="tfvae")
class StackedBernoulliVAE(BinaryPrior, LatentVariableModel):
    """A sigmoid belief network / Bernoulli VAE with ``stochastic_layers`` binary layers.

    Every layer has ``latent_dim`` units. ``hidden`` are the hidden sizes of
    each inference network (``x -> z_1``, ``z_1 -> z_2``, ...),
    ``decoder_hidden`` those of each generative one (``z_1 -> x``, ``z_2 ->
    z_1``, ...); ``()`` makes them linear.

    Args:
      stochastic_layers: number of binary layers ``L`` (1 is a one-layer SBN).
      estimator: a name in :data:`tfvae.estimators.layered.LAYERED_ESTIMATORS`.
      baseline_decay: decay of the per-layer running averages (``ema``, ``nvil``).
      num_samples: chains per example (``rloo``, ``vimco``).
      temperature: Concrete temperature of ``gumbel`` and ``straight-through``.
      learn_prior: learn the top layer's prior logits.
      nvil_hidden: hidden units of NVIL's per-layer baseline networks.
      control_hidden: hidden units of ``relax``'s per-layer control networks.
      **kwargs: see :class:`tfvae.models.base.LatentVariableModel`.

    Example:
      >>> model = tfvae.StackedBernoulliVAE(latent_dim=200, stochastic_layers=2, hidden=(),
      ...                                   estimator="disarm")
      >>> model.compile(optimizer=tfvae.keras.optimizers.Adam(1e-4))
    """

    model_type = "sbn"
    metric_names = BASE_METRICS + ("baseline", "signal_mean", "signal_std")

    def __init__(self, *args, stochastic_layers: int = 2, estimator: str = "ema",
                 baseline_decay: float = 0.9, num_samples: int = 4, learn_prior: bool = False,
                 nvil_hidden: int = 100, temperature: float = 0.5,
                 control_hidden: int = relax.HIDDEN, **kwargs):
        super().__init__(*args, **kwargs)
        from tfvae import options

        self.stochastic_layers = int(stochastic_layers)
        if self.stochastic_layers < 1:
            raise ConfigError(f"stochastic_layers must be at least 1, got {stochastic_layers!r}")
        self.estimator = str(estimator)
        self._estimate_fn = layered.get(self.estimator)
        needed = options.ESTIMATORS[self.estimator].min_samples
        if int(num_samples) < needed:
            raise ConfigError(f"estimator {self.estimator!r} needs num_samples >= {needed}, "
                              f"got {num_samples!r}")
        self.baseline_decay, self.num_samples = float(baseline_decay), int(num_samples)
        self.learn_prior, self.nvil_hidden = bool(learn_prior), int(nvil_hidden)
        self.temperature = estimators.check_temperature(temperature)
        self.control_hidden = int(control_hidden)
        self._build_networks(options.ESTIMATORS[self.estimator].input_baseline)
        self.controls = None  # relax's learned control variate per layer, c_l(z_{l-1}, z_l)
        if options.ESTIMATORS[self.estimator].control_variate:
            self.controls = [relax.RelaxControl(size, self.latent_dim, self.control_hidden,
                                                name=f"relax_control_{i + 1}")
                             for i, size in enumerate(self._layer_inputs())]
        layers = self.stochastic_layers

        def state(name, shape):
            return tf.Variable(tf.zeros(shape), trainable=False, name=name,
                               aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

        self.baseline_mean = state("baseline_mean", [layers])
        self.baseline_var = state("baseline_var", [layers])
        self.baseline_initialized = state("baseline_initialized", [])
        self._finish_build()

    def _build_networks(self, nvil: bool) -> None:
        k = self.latent_dim
        self.encoder = self._build_encoder(heads.bernoulli_latent_head(k))
        self.decoder = self._build_decoder()

        def net(size_in, sizes, name):  # z -> logits, no distribution head
            return networks.build_encoder(size_in, sizes, (k, None), name=name,
                                          activation=self.activation, center=self.center_input,
                                          binary_input=True, init=self.init,
                                          head_init=self.head_init)

        upper = range(2, self.stochastic_layers + 1)
        self.upper_encoders = [net(k, self.hidden, f"encoder_{i}") for i in upper]
        self.generators = [net(k, self.decoder_sizes, f"generator_{i}") for i in upper]
        self._make_prior()
        self.baseline_nets = None
        if nvil:  # NVIL's c_l(z_{l-1}), one tanh layer each (Mnih & Gregor 2014)
            sizes = self._layer_inputs()
            self.baseline_nets = [keras.Sequential(
                [keras.layers.InputLayer(input_shape=(size,)),
                 keras.layers.Dense(self.nvil_hidden, activation="tanh"),
                 keras.layers.Dense(1)], name=f"baseline_net_{i + 1}")
                for i, size in enumerate(sizes)]

    def _layer_inputs(self) -> list:
        """Width of each layer's input ``z_{l-1}`` (``x`` for the first)."""
        return [self.input_dim] + [self.latent_dim] * (self.stochastic_layers - 1)

    # ------------------------------------------------------------------ parts
    @property
    def control_variables(self) -> list:
        return [v for control in self.controls or () for v in control.trainable_variables]

    @property
    def inference_variables(self) -> list:
        return self.encoder.trainable_variables + [
            v for net in self.upper_encoders for v in net.trainable_variables]

    def _encoders(self, training=None):
        bottom = [lambda x: self.encode(x, training=training).distribution.logits]
        return tuple(bottom + [_flat(net, training) for net in self.upper_encoders])

    def chain(self, x, seed=None, training=None, num_samples=None) -> layered.Chain:
        """The :class:`tfvae.estimators.layered.Chain` of a batch (what the estimators take)."""
        baselines = None
        if self.baseline_nets is not None:
            baselines = tuple(
                lambda h, net=net: tf.cast(tf.squeeze(net(h, training=training), -1), tf.float32)
                for net in self.baseline_nets)
        return layered.Chain(
            x=x, encoders=self._encoders(training),
            likelihood=lambda z: self.log_likelihood(z, x, training=training),
            generators=tuple(_flat(net, training) for net in self.generators),
            prior_logits=self.prior_logits(), kl_weight=tf.convert_to_tensor(self.kl_weight),
            seed=seed, num_samples=self.num_samples if num_samples is None else num_samples,
            decay=self.baseline_decay, baselines=baselines,
            sizes=(self.latent_dim,) * self.stochastic_layers, temperature=self.temperature,
            controls=None if self.controls is None else tuple(self.controls))

    # -------------------------------------------------------------- training
    @property
    def estimator_state(self) -> layered.LayerState:
        return layered.LayerState(tf.convert_to_tensor(self.baseline_mean),
                                  tf.convert_to_tensor(self.baseline_var),
                                  tf.convert_to_tensor(self.baseline_initialized))

    def estimate(self, x, estimator=None, seed=None, training=True, state=None,
                 num_samples=None):
        """One batch's surrogate under a layered estimator; ``(estimate, None)``."""
        fn = self._estimate_fn if estimator is None else layered.get(estimator)
        chain = self.chain(x, seed=seed, training=training, num_samples=num_samples)
        return fn(chain, self.estimator_state if state is None else state), None

    def objective(self, x, training=True, seed=None):
        est, _ = self.estimate(x, seed=seed, training=training)
        for name, value in est.updates.items():
            getattr(self, f"baseline_{name}").assign(value)
        signal = tf.reshape(est.signal, [-1])
        return est.loss, {
            "reconstruction": -est.log_likelihood,
            "kl": -est.rest,  # the bound's other terms: -(log p(z) - log q(z|x)), sampled
            "baseline": tf.reduce_mean(est.baseline),
            "signal_mean": tf.reduce_mean(signal),
            "signal_std": tf.math.reduce_std(signal),
        }

    # ------------------------------------------------------- evaluation hooks
    def _joint(self, x, k=None, seed=None, training=None):
        """Per chain: ``log p(x|z_1)`` and the rest of ``log p(x, z) - log q(z|x)``."""
        chain = self.chain(x, seed=seed, training=training)
        u = layered.uniforms(chain, chain.sizes, n=k)
        zs, logits = layered.sample(chain, u)
        gen, inf, _ = layered.terms(chain, zs, logits)
        log_q = tf.add_n(inf + [layered.log_bernoulli(logits[-1], zs[-1])])
        prior = layered.log_bernoulli(
            tf.broadcast_to(chain.prior_logits, tf.shape(zs[-1])), zs[-1])
        return gen[0], tf.add_n(gen[1:] + [prior]) - log_q, zs, logits

    def elbo_terms(self, x, seed=None, training=None):
        """Single-sample terms of one chain: ``reconstruction`` and ``kl`` (sampled)."""
        fit, rest, zs, _ = self._joint(x, seed=seed, training=training)
        return {"reconstruction": -fit, "kl": -rest, "z": zs[0], "q": self.encode(x)}

    def log_weights(self, x, k, seed=None):
        fit, rest, _, _ = self._joint(x, k=k, seed=seed)
        return fit + rest  # [k, batch]

    def posterior_mean(self, x):
        return tf.sigmoid(self.encode(x).distribution.logits)

    def posterior_code(self, x):
        return tf.cast(self.encode(x).distribution.logits > 0.0, tf.float32)

    def kl_per_dim(self, x):
        """Per unit of ``z_1``: ``KL(q(z_1|x) || p(z_1|z_2))`` at one ``z_2`` draw."""
        q = self.encode(x).distribution.logits
        if self.stochastic_layers == 1:
            return objectives.kl_bernoulli(q, self.prior_logits())
        z1 = tf.cast(tf.random.stateless_uniform(tf.shape(q), [0, 0]) < tf.sigmoid(q),
                     tf.float32)
        a2 = tf.cast(self.upper_encoders[0](z1), tf.float32)
        z2 = tf.cast(tf.random.stateless_uniform(tf.shape(a2), [0, 1]) < tf.sigmoid(a2),
                     tf.float32)
        return objectives.kl_bernoulli(q, tf.cast(self.generators[0](z2), tf.float32))

    # ------------------------------------------------------------ sampler
    @property
    def sampler_networks(self) -> list:
        return list(self.generators)

    def noise_inputs(self):
        return tuple(Noise(f"u{i}", (self.latent_dim,), "uniform")
                     for i in range(1, self.stochastic_layers + 1))

    def sampler_params(self):
        probs = tf.math.sigmoid(self.prior_logits()).numpy().astype(np.float32)
        return {"prior_keys": probs.view(np.int32)}

    @staticmethod
    def codes_from_noise(params, inputs, nets=()):
        # Top layer against the prior (int keys, see order_key), then down the generators.
        top = len(nets) + 1
        z = tf.cast(order_key(inputs[f"u{top}"]) < params["prior_keys"], tf.float32)
        for layer in range(top - 1, 0, -1):
            logits = tf.cast(nets[layer - 1](z), tf.float32)  # a mixed-precision net's too
            z = tf.cast(inputs[f"u{layer}"] < tf.sigmoid(logits), tf.float32)
        return z  # z_1 [n, latent]

    @staticmethod
    def prior_description(params):
        probs = np.asarray(params["prior_keys"], np.int32).view(np.float32)
        return {"kind": "bernoulli-layers", "top_probs": probs.tolist()}

    # --------------------------------------------------------- serialization
    def get_config(self):
        return {**super().get_config(), "stochastic_layers": self.stochastic_layers,
                "estimator": self.estimator, "baseline_decay": self.baseline_decay,
                "num_samples": self.num_samples, "learn_prior": self.learn_prior,
                "nvil_hidden": self.nvil_hidden, "temperature": self.temperature,
                "control_hidden": self.control_hidden}
