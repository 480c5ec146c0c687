"""Bernoulli-latent VAE, trained with score-function gradient estimators.

``q(z|x) = prod_u Bernoulli(z_u; sigmoid(a_u(x)))`` over binary codes, prior
``Bernoulli(0.5)`` per unit (or learned logits), analytic KL. Binary samples
cannot be reparameterized, so the encoder's gradient of ``E_q[log p(x|z)]``
comes from an estimator in :mod:`tfvae.estimators` (REINFORCE with a
baseline by default).
"""

from __future__ import annotations

import numpy as np

from tfvae import estimators, heads, objectives
from tfvae._keras import keras, tf, tfd
from tfvae.errors import ConfigError
from tfvae.estimators import relax
from tfvae.models.base import BASE_METRICS, LatentVariableModel, order_key
from tfvae.sampler_noise import Noise


class BinaryPrior:
    """The factorised Bernoulli prior of binary-code models, fixed or learned.

    Shared by :class:`BernoulliVAE` and the stacked model
    (:class:`tfvae.models.stacked.StackedBernoulliVAE`, whose top layer it is);
    the models call :meth:`_make_prior` while building.
    """

    binary_code = True

    def _make_prior(self) -> None:
        """The prior's logits: a trainable weight with ``learn_prior``, else none (zeros)."""
        self._prior_logits = None
        if self.learn_prior:
            self._prior_logits = self.add_weight(
                name="prior_logits", shape=(self.latent_dim,), initializer="zeros",
                trainable=True,
            )

    def prior_logits(self):
        """Prior logits, float32 ``[latent]`` (zeros for the fixed Bernoulli(0.5) prior)."""
        if self._prior_logits is None:
            return tf.zeros([self.latent_dim], tf.float32)
        return tf.convert_to_tensor(self._prior_logits)

    @property
    def prior_variables(self) -> list:
        return [] if self._prior_logits is None else [self._prior_logits]

    def prior(self):
        """The factorised Bernoulli prior ``p(z)`` (the top layer's, for stacked models)."""
        return tfd.Independent(
            tfd.Bernoulli(logits=self.prior_logits(), dtype=tf.float32),
            reinterpreted_batch_ndims=1,
        )


@keras.saving.register_keras_serializable(package="tfvae")
class BernoulliVAE(BinaryPrior, LatentVariableModel):
    """Variational autoencoder with a factorised Bernoulli (binary) latent.

    The encoder ends in ``tfp.layers.IndependentBernoulli`` (logits; float32
    samples in {0, 1}), the decoder is the Gaussian VAE's. With
    ``decoder_hidden=()`` the generative model ``p(z) p(x|z)`` is a one-layer
    sigmoid belief network (Neal 1992): binary units with a logistic linear map
    to the pixels' logits.

    Training maximises ``E_q[log p(x|z)] - KL(q(z|x) || p(z))`` with the KL
    analytic; the gradient of the first term with respect to the encoder is
    estimated by ``estimator`` (see :data:`tfvae.estimators.ESTIMATORS`):
    the REINFORCE surrogate ``stop(log p(x|z) - c(x)) * log q(z|x)`` with a
    baseline ``c``, leave-one-out, or DisARM's antithetic pairs. ``vimco``
    instead targets the ``num_samples``-sample importance-weighted bound.
    The reported ``elbo`` metric is always the single-sample ELBO.

    Estimator state (the moving-average baseline, NVIL's running mean and
    variance and an ``initialized`` flag) lives in non-trainable variables,
    so ``save_weights``/``load_weights`` keep it. The first training batch
    starts the running mean at its own mean (see :func:`tfvae.estimators.ema`).
    ``relax``'s learned control variate (:attr:`control`, whose
    ``control_variables`` the training step fits to the estimator's variance)
    is saved with the model's weights too.

    Args:
      estimator: name in :data:`tfvae.estimators.ESTIMATORS` (``reinforce``,
        ``ema``, ``nvil``, ``rloo``, ``disarm``, ``vimco``, ``arm``, ``gumbel``,
        ``straight-through``, ``relax``).
      baseline_decay: decay of the running averages (``ema``, ``nvil``).
      num_samples: samples per example (``rloo``, ``vimco``; at least 2).
      temperature: Concrete temperature of ``gumbel`` and ``straight-through``.
      learn_prior: learn the prior logits (initialised at 0, i.e. p = 0.5).
      nvil_hidden: hidden units (tanh) of NVIL's baseline network ``c(x)``.
      control_hidden: hidden units of ``relax``'s control network (its learned
        control variate, :class:`tfvae.estimators.relax.RelaxControl`).
      nvil_normalize: NVIL's variance normalisation of the signal. Off by
        default: with Adam (already scale-free) it only shrinks the score term
        against the analytic KL, and it collapsed the posterior in
        ``benchmarks/quality.py`` (see the CHANGELOG).
      **kwargs: see :class:`tfvae.models.base.LatentVariableModel`.

    Example:
      >>> import tfvae
      >>> model = tfvae.BernoulliVAE(input_dim=784, latent_dim=20, estimator="rloo")
      >>> model.compile(optimizer=tfvae.keras.optimizers.Adam(1e-3))
      >>> model.fit(x_train, epochs=5, batch_size=128)  # x_train: [N, 784] in {0, 1}
      >>> codes = model.posterior_code(x_train[:10])    # [10, 20] in {0, 1}
      >>> means = model.predict(x_test)  # decoder means at the posterior mode: deterministic
    """

    model_type = "bernoulli"
    metric_names = BASE_METRICS + ("baseline", "signal_mean", "signal_std")

    def __init__(
        self,
        *args,
        estimator: str = "ema",
        baseline_decay: float = 0.9,
        num_samples: int = 4,
        learn_prior: bool = False,
        nvil_hidden: int = 100,
        nvil_normalize: bool = False,
        temperature: float = 0.5,
        control_hidden: int = relax.HIDDEN,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.estimator = str(estimator)
        self._estimate_fn = estimators.get(self.estimator)
        if not 0.0 <= float(baseline_decay) < 1.0:
            raise ConfigError(f"baseline_decay must be in [0, 1), got {baseline_decay!r}")
        self.baseline_decay = float(baseline_decay)
        if int(num_samples) < self._estimate_fn.min_samples:
            raise ConfigError(
                f"estimator {self.estimator!r} needs num_samples >= "
                f"{self._estimate_fn.min_samples}, got {num_samples!r}"
            )
        self.num_samples = int(num_samples)
        self.learn_prior = bool(learn_prior)
        self.nvil_hidden = int(nvil_hidden)
        self.nvil_normalize = bool(nvil_normalize)
        self.temperature = estimators.check_temperature(temperature)

        self.encoder = self._build_encoder(heads.bernoulli_latent_head(self.latent_dim))
        self.decoder = self._build_decoder()
        # NVIL's input-dependent baseline c(x): one tanh layer (Mnih & Gregor 2014, sec. 5).
        self.baseline_net = None
        if self._estimate_fn.input_baseline:
            self.baseline_net = keras.Sequential(
                [
                    keras.layers.InputLayer(input_shape=(self.input_dim,)),
                    keras.layers.Dense(self.nvil_hidden, activation="tanh"),
                    keras.layers.Dense(1),
                ],
                name="baseline_net",
            )
        self.control_hidden = int(control_hidden)
        self.control = self._build_control()
        self._make_prior()
        # Estimator state: non-trainable, so checkpoints keep it. Under a
        # tf.distribute strategy the updates are computed from all-reduced
        # global-batch means (identical on every replica), so the first
        # replica's assignment is the one every replica's copy takes.
        def state_variable(name):
            return tf.Variable(0.0, trainable=False, name=name,
                               aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

        self.baseline_mean = state_variable("baseline_mean")
        self.baseline_var = state_variable("baseline_var")
        self.baseline_initialized = state_variable("baseline_initialized")
        self._finish_build()

    def _build_control(self):
        """``relax``'s learned control variate (network, temperature, scale), or None; the
        training step fits its ``control_variables`` to the estimator's variance."""
        if not self._estimate_fn.control_variate:
            return None
        return relax.RelaxControl(self.input_dim, self.latent_dim, self.control_hidden,
                                  name="relax_control")

    # ------------------------------------------------------------------ parts
    def encoder_logits(self, x, training=None):
        """Logits ``a(x)`` of ``q(z|x)``, shape ``[batch, latent]``."""
        return self.encode(x, training=training).distribution.logits

    def posterior_mean(self, x):
        """Posterior probabilities ``q(z_u = 1 | x)``, ``[batch, latent]``."""
        return tf.sigmoid(self.encoder_logits(x))

    def posterior_code(self, x):
        """The posterior mode: probabilities thresholded at 0.5, float ``[batch, latent]``."""
        return tf.cast(self.encoder_logits(x) > 0.0, tf.float32)

    def kl_per_dim(self, x):
        """Analytic ``KL(q(z_u|x) || p(z_u))`` per unit, ``[batch, latent]``."""
        return objectives.kl_bernoulli(self.encoder_logits(x), self.prior_logits())

    def rate(self, q):
        # Closed form from the logits (TFP's value; fewer ops in the compiled step).
        logits = tf.convert_to_tensor(q.distribution.logits)
        return tf.reduce_sum(objectives.kl_bernoulli(logits, self.prior_logits()), axis=-1)

    def latent_quantiles(self):
        return None  # binary codes have no continuous manifold to draw

    # -------------------------------------------------------------- training
    @property
    def control_variables(self) -> list:
        return [] if self.control is None else self.control.trainable_variables

    @property
    def estimator_state(self) -> estimators.State:
        """Current estimator state (the variables' values)."""
        return estimators.State(
            mean=tf.convert_to_tensor(self.baseline_mean),
            var=tf.convert_to_tensor(self.baseline_var),
            initialized=tf.convert_to_tensor(self.baseline_initialized),
        )

    def estimate(self, x, estimator=None, seed=None, training=True, state=None,
                 num_samples=None):
        """One batch's surrogate loss under an estimator, without changing any state.

        Args:
          x: ``[batch, D]`` data.
          estimator: a name in :data:`tfvae.estimators.ESTIMATORS`; default the
            model's own. ``nvil`` and ``relax`` need a model built with them
            (its ``c(x)``, its control variate).
          seed: stateless seed (``[2]`` int32) or None.
          training: passed to the networks.
          state: a :class:`tfvae.estimators.State` to use instead of the model's.
          num_samples: samples per example instead of the model's ``num_samples``.

        Returns:
          ``(estimate, kl)``: the :class:`tfvae.estimators.Estimate` and the
          unweighted analytic KL per example, ``[batch]``.
        """
        fn = self._estimate_fn if estimator is None else estimators.get(estimator)
        if fn.input_baseline and self.baseline_net is None:
            raise ConfigError(
                f"estimator {estimator!r} needs a baseline network; build the model with "
                f"estimator={estimator!r}"
            )
        q = self.encode(x, training=training)
        kl = self.rate(q)  # [batch]
        input_baseline = None
        if fn.input_baseline:
            # [batch]; float32 under a mixed-precision policy, as every learning signal.
            input_baseline = tf.cast(tf.squeeze(self.baseline_net(x, training=training), -1),
                                     tf.float32)
        problem = estimators.Problem(
            logits=q.distribution.logits,
            log_likelihood=lambda z: self.log_likelihood(z, x, training=training),
            log_prior=lambda z: self.prior().log_prob(z),
            kl=self.kl_weight * kl,
            kl_weight=tf.convert_to_tensor(self.kl_weight),
            seed=seed,
            num_samples=self.num_samples if num_samples is None else int(num_samples),
            decay=self.baseline_decay,
            input_baseline=input_baseline,
            normalize=self.nvil_normalize,
            temperature=self.temperature,
            control=None if self.control is None else self.control.bind(
                x, lambda soft: self.log_likelihood(soft, x, training=training)),
        )
        return fn(problem, self.estimator_state if state is None else state), kl

    def objective(self, x, training=True, seed=None):
        """Surrogate loss of the model's estimator; updates the estimator state.

        Returns:
          ``(loss, metrics)``: the loss's value is the negative (KL-weighted)
          objective, its gradient the estimator's; metrics hold the
          single-sample ``reconstruction`` and ``kl`` and the learning signal's
          ``baseline``, ``signal_mean`` and ``signal_std``.
        """
        est, kl = self.estimate(x, seed=seed, training=training)
        for field, value in est.updates.items():
            getattr(self, f"baseline_{field}").assign(value)
        signal = tf.reshape(est.signal, [-1])
        metrics = {
            "reconstruction": -est.log_likelihood,
            "kl": kl,
            "baseline": tf.reduce_mean(est.baseline),
            "signal_mean": tf.reduce_mean(signal),
            "signal_std": tf.math.reduce_std(signal),
        }
        return est.loss, metrics

    # ------------------------------------------------------------ sampler
    def noise_inputs(self):
        return (Noise("u", (self.latent_dim,), "uniform"),)

    def sampler_params(self):
        probs = tf.math.sigmoid(self.prior_logits()).numpy().astype(np.float32)
        return {"prior_keys": probs.view(np.int32)}

    @staticmethod
    def codes_from_noise(params, inputs, nets=()):
        # z_i = 1 with probability p_i: u < p_i, compared as int32 keys (see order_key).
        return tf.cast(order_key(inputs["u"]) < params["prior_keys"], tf.float32)

    @staticmethod
    def prior_description(params):
        probs = np.asarray(params["prior_keys"], np.int32).view(np.float32)
        return {"kind": "bernoulli", "probs": probs.tolist()}

    # --------------------------------------------------------- serialization
    def get_config(self):
        return {
            **super().get_config(),
            "estimator": self.estimator,
            "baseline_decay": self.baseline_decay,
            "num_samples": self.num_samples,
            "learn_prior": self.learn_prior,
            "nvil_hidden": self.nvil_hidden,
            "nvil_normalize": self.nvil_normalize,
            "temperature": self.temperature,
            "control_hidden": self.control_hidden,
        }
