"""Shared machinery of tfvae's latent-variable models.

A model composes an encoder ``q(z|x)``, a decoder ``p(x|z)`` and a prior
``p(z)`` (see :mod:`tfvae.networks`) with an objective (see
:mod:`tfvae.objectives`). This base class owns what every model needs in
user code: ``compile``/``fit``/``evaluate`` (through
:class:`tfvae.models.steps.TrainingSteps`), sampling from seeded noise,
reconstruction, and the hooks :func:`tfvae.evaluate` and
:mod:`tfvae.export` use to treat every model alike.
"""

from __future__ import annotations

import math

import numpy as np

from tfvae import heads, networks, objectives, options
from tfvae import sampler_noise as noise
from tfvae._keras import keras, tf
from tfvae.config import image_shape_3d, parse_sizes
from tfvae.errors import ConfigError
from tfvae.models import inputs
from tfvae.models.steps import TrainingSteps

# Metrics every VAE reports, in nats per example.
BASE_METRICS = ("loss", "elbo", "reconstruction", "kl")


def order_key(x):
    """Int32 keys ordered as the float32 values ``x >= 0`` (IEEE 754 bit patterns).

    Samplers compare uniforms with probability thresholds as these keys: kept
    as integers, the thresholds stay exact in a float16 LiteRT file, which
    rounds float constants only (a rounded threshold would flip the choices of
    the uniforms that fall between the two values).
    """
    return tf.bitcast(tf.convert_to_tensor(x, tf.float32), tf.int32)


def _run_body(net, x, training=None):
    """A network's layers before its distribution head: the head's parameters, float32.

    Float32 as the heads take them (under a mixed-precision policy the body
    computes in half precision and a head casts its input up).
    """
    h = x
    for layer in networks.split_head(net)[0]:
        h = layer(h, training=training)
    return tf.cast(h, tf.float32)


def _checked_init(name: str, value):
    """``value`` if it names an initialisation of :data:`tfvae.options.INITS` (or is None)."""
    if value is not None and value not in options.INITS:
        raise ConfigError(f"unknown {name} {value!r}; choose one of: {', '.join(options.INITS)}")
    return value


class LatentVariableModel(TrainingSteps, keras.Model):
    """Base class: a VAE-like model with ``encode``, ``decode`` and ``prior``.

    Subclasses set ``model_type``, build ``self.encoder`` / ``self.decoder``
    and implement ``prior``, ``kl_per_dim``, the sampler hooks
    (``noise_inputs``, ``sampler_params``, ``codes_from_noise``,
    ``prior_description``) and, when training differs from the plain
    reparameterized ELBO, ``objective``.

    As a Keras model: ``fit``, ``evaluate`` and ``predict`` take rows
    ``[N, D]`` or images ``[N, H, W, C]`` of ``image_shape``, float or uint8
    pixels (:mod:`tfvae.models.inputs` says what is converted and what is
    refused); ``compile`` takes no loss or metrics (the loss is the model's
    objective). ``model(x)`` and ``predict`` are deterministic: decoder means
    at the posterior mean code (its mode for binary codes, the code itself for
    an autoencoder), as :meth:`reconstruct`. Randomness has its own calls:
    :meth:`reconstruct_sample` (a posterior draw) and :meth:`sample` (the
    prior). The model saves as ``.keras``, as a SavedModel directory
    (``model.save(dir)``, ``ModelCheckpoint``) and through ``model.export``.

    Args:
      input_dim: flat data size D (784 for 28x28 images).
      image_shape: ``(H, W)`` or ``(H, W, C)`` with ``H * W * C == input_dim``;
        for figures and conv. Default: square grey-level images.
      latent_dim: size of the latent code.
      hidden: encoder hidden layer sizes.
      decoder_hidden: decoder hidden sizes; ``None`` mirrors the encoder, ``()``
        gives a linear decoder.
      likelihood: observation model, a key of :data:`tfvae.heads.OBSERVATIONS`
        (``bernoulli``, ``gaussian``, ``logistic``).
      arch: ``"mlp"`` or ``"conv"``.
      min_scale: floor of a Gaussian or logistic observation scale.
      obs_scale: where a Gaussian observation's scale comes from: ``decoder``
        (predicted per pixel and image), ``pixel`` (one free scale per pixel)
        or ``shared`` (one free scale).
      obs_components: logistic components per pixel and channel (logistic likelihood).
      levels: values per pixel and channel of discrete data (256 for 8-bit).
      activation: nonlinearity of the hidden dense layers (``relu``,
        ``leaky_relu``, ``tanh``).
      center_input: the encoder subtracts a stored mean from its input (set
        with :meth:`init_from_data`); for binary codes (``binary_code``) the
        networks that read them see ``2 z - 1``, as the DisARM code's
        ``--demean_input`` does.
      init: how the hidden layers' weights start, a key of
        :data:`tfvae.options.INITS` (``glorot``, ``fan-in``, ``he``); None: the
        start for the observation model (:func:`tfvae.options.default_init`).
      head_init: how the layers giving the distributions' parameters start
        (None: as ``init``).
    """

    model_type = "base"
    #: The code is binary units (the networks reading it centre it with ``center_input``).
    binary_code = False
    #: Names of the metric trackers (what training reports).
    metric_names: tuple[str, ...] = BASE_METRICS

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
        obs_scale: str = "decoder",
        obs_components: int = 1,
        levels: int = 256,
        activation: str = "relu",
        center_input: bool = False,
        init: str | None = None,
        head_init: str | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.input_dim = int(input_dim)
        if image_shape is None:
            side = math.isqrt(self.input_dim)
            image_shape = (side, side) if side * side == self.input_dim else (1, self.input_dim)
        self.image_shape = image_shape_3d(image_shape)
        if math.prod(self.image_shape) != self.input_dim:
            raise ConfigError(
                f"image_shape {self.image_shape} does not match input_dim {self.input_dim}"
            )
        if isinstance(latent_dim, bool) or int(latent_dim) <= 0:
            raise ConfigError(f"latent_dim must be a positive integer, got {latent_dim!r}")
        self.latent_dim = int(latent_dim)
        self.hidden = parse_sizes(hidden, "hidden")
        self.decoder_hidden = None if decoder_hidden is None else parse_sizes(
            decoder_hidden, "decoder_hidden"
        )
        if likelihood not in heads.OBSERVATIONS:
            raise ConfigError(f"unknown likelihood {likelihood!r}; choose one of: "
                              f"{', '.join(heads.OBSERVATIONS)}")
        self.likelihood = likelihood
        self.arch = arch
        self.min_scale = float(min_scale)
        self.obs_scale = str(obs_scale)
        self.obs_components = int(obs_components)
        self.levels = int(levels)
        if activation not in networks.ACTIVATIONS:
            raise ConfigError(f"unknown activation {activation!r}; choose one of: "
                              f"{', '.join(networks.ACTIVATIONS)}")
        self.activation = activation
        self.center_input = bool(center_input)
        self.init = _checked_init("init", init) or options.default_init(likelihood, obs_scale)
        self.head_init = _checked_init("head_init", head_init)
        # KL weight for warm-up (Bowman et al. 2016); 1 gives the ELBO. Kept in a
        # non-trainable variable so a callback can change it without retracing.
        self.kl_weight = tf.Variable(1.0, trainable=False, name="kl_weight")
        # Training noise comes from stateless ops seeded by this generator: XLA's
        # stateful random ops are not reproducible, while the generator's state
        # is a variable that checkpoints (and so resumes) with the model.
        self.seed_generator = tf.random.Generator.from_seed(0)
        self._make_trackers(self.metric_names)

    # ------------------------------------------------------------------ parts
    @property
    def decoder_sizes(self) -> tuple[int, ...]:
        """Decoder hidden sizes: given ones, or the encoder's mirrored."""
        if self.decoder_hidden is not None:
            return tuple(self.decoder_hidden)
        return tuple(reversed(self.hidden))

    def _build_encoder(self, head):
        """``x -> q(z|x)`` (or a code) ending in ``head`` from a ``networks.*_head``."""
        return networks.build_encoder(
            self.input_dim, self.hidden, head, arch=self.arch, image_shape=self.image_shape,
            activation=self.activation, center=self.center_input, init=self.init,
            head_init=self.head_init,
        )

    def _build_decoder(self):
        return networks.build_decoder(
            self.latent_dim,
            self.decoder_sizes,
            heads.observation_head(self.likelihood, self.input_dim, self.min_scale,
                                   self.obs_scale, self.obs_components, self.levels),
            arch=self.arch,
            image_shape=self.image_shape,
            activation=self.activation,
            signed_code=self.center_input and self.binary_code,
            init=self.init,
            head_init=self.head_init,
        )

    @property
    def prior_variables(self) -> list:
        """Trainable variables of the prior (a ``prior_optimizer`` of compile trains them)."""
        return []

    def init_from_data(self, mean, center: bool = True, output_bias: bool = True,
                       std=None) -> None:
        """Data-dependent start (DisARM's ``--demean_input`` and ``--initialize_with_bias``).

        Args:
          mean: the training data's mean ``[D]``, as the model sees the data.
          center: store it in the encoder's input centring (``center_input=True``).
          output_bias: start the decoder's output bias at the mean (the logit of
            it for Bernoulli pixels); dense (mlp) decoders only.
          std: the training data's standard deviation ``[D]``: with
            ``output_bias``, a Gaussian's or logistic's scales start at the
            spread it gives per pixel (Bernoulli pixels ignore it).
        """
        mean = np.asarray(mean, np.float32).reshape(self.input_dim)
        if std is not None:
            std = np.asarray(std, np.float32).reshape(self.input_dim)
        if center:
            if not self.center_input:
                raise ConfigError("centring needs a model built with center_input=True")
            self.encoder.get_layer("center").mean.assign(mean)
        if output_bias:
            last = self.decoder.layers[-2]
            if not isinstance(last, keras.layers.Dense):
                raise ConfigError("the output bias can be set from data for mlp decoders only; "
                                  "use arch='mlp' (--arch mlp) or output_bias=False (leave "
                                  "out --output-bias-from-data)")
            last.bias.assign(self.decoder.layers[-1].initial_bias(mean, std))

    def prior(self):
        """The prior ``p(z)``: a distribution with event shape ``[latent]``."""
        raise NotImplementedError

    def encode(self, x, training=None):
        """``q(z|x)`` for a batch ``x`` of shape ``[batch, D]``."""
        return self.encoder(x, training=training)

    def decode(self, z, training=None):
        """``p(x|z)`` for codes of shape ``[..., latent]``.

        Leading sample dimensions are folded into the batch so the same
        decoder (conv included) serves IWAE's ``[k, batch, latent]`` codes.
        """
        z = tf.convert_to_tensor(z)
        if z.shape.rank == 2:
            return self.decoder(z, training=training)
        return self.decoder(tf.reshape(z, [-1, self.latent_dim]), training=training)

    def log_likelihood(self, z, x, training=None):
        """``log p(x|z)`` for codes ``[..., batch, latent]``, shape ``[..., batch]``."""
        z = tf.convert_to_tensor(z)
        lead = tf.shape(z)[:-1]
        p = self.decode(z, training=training)
        if z.shape.rank == 2:
            return objectives.log_likelihood(p, x)
        return objectives.log_likelihood_of_draws(p, x, lead)

    # ------------------------------------------------------- evaluation hooks
    def check_ready(self) -> None:
        """Raises a TfvaeError if the model cannot be evaluated or sampled yet."""

    def traced_state(self) -> tuple:
        """Python values a traced evaluation holds as constants (not variables), hashable.

        :func:`tfvae.evaluate` keeps its compiled functions per model and per
        this value; variables (weights, estimator state) need no entry.
        """
        return ()

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
          tensors (or scalars) named as in ``metric_names``.
        """
        terms = self.elbo_terms(x, seed=seed, training=training)
        loss = tf.reduce_mean(terms["reconstruction"] + self.kl_weight * terms["kl"])
        return loss, {"reconstruction": terms["reconstruction"], "kl": terms["kl"]}

    def call(self, x, training=None):
        """Decoder means at the posterior's representative code, ``[batch, D]``: deterministic.

        What ``model(x)`` and ``predict`` give, and the same as :meth:`reconstruct`:
        the code is the posterior mean (Gaussian codes), its mode (binary codes)
        or the code itself (autoencoder); :meth:`reconstruct_sample` decodes a
        posterior draw instead. Computed from the heads' parameters (not from
        distribution objects), so a SavedModel traces and serves it as plain
        tensors.
        """
        x = tf.convert_to_tensor(x)
        if x.dtype == tf.uint8:  # 8-bit pixels, scaled as fit, evaluate and predict scale them
            levels = self.likelihood_levels
            x = tf.cast(x, tf.float32) / (255.0 if levels is None else max(levels - 1, 1))
        if x.shape.rank != 2:  # images (N, H, W, C) or (N, H, W): rows, as for predict
            x = tf.reshape(x, [-1, self.input_dim])
        params = _run_body(self.encoder, x, training)
        head = networks.split_head(self.encoder)[1]
        code = params if head is None else head.code(params)
        return self._decoder_mean(code, training)

    def _decoder_mean(self, z, training=None):
        """``E[x|z]`` from the decoder head's parameters (no distribution object)."""
        return self.decoder.layers[-1].mean_from_params(_run_body(self.decoder, z, training))

    # ------------------------------------------------------------ generation
    def noise_inputs(self) -> tuple[noise.Noise, ...]:
        """The noise the sampler takes (see :mod:`tfvae.sampler_noise`)."""
        raise NotImplementedError

    def sampler_params(self) -> dict[str, np.ndarray]:
        """The prior's parameters the sampler needs, as numpy arrays (exported as constants)."""
        return {}

    @property
    def sampler_networks(self) -> list:
        """Networks the sampler runs between noise and code (a layered prior's); none here."""
        return []

    @property
    def inference_variables(self) -> list:
        """Trainable variables of the inference networks (what estimators' scores reach)."""
        return self.encoder.trainable_variables

    @staticmethod
    def codes_from_noise(params: dict, inputs: dict, nets=()):
        """Codes ``z`` ``[n, latent]`` from noise: TensorFlow ops only (exported as is).

        Args:
          params: :meth:`sampler_params` as tensors.
          inputs: noise tensors by name (:meth:`noise_inputs`).
          nets: :attr:`sampler_networks` (or their exported copies).
        """
        raise NotImplementedError

    @staticmethod
    def prior_description(params: dict) -> dict:
        """A JSON description of the prior, from :meth:`sampler_params` (for manifests)."""
        raise NotImplementedError

    def codes_for(self, inputs: dict):
        """Codes for numpy noise from :meth:`draw_noise` (a tensor ``[n, latent]``)."""
        params = {k: tf.constant(v) for k, v in self.sampler_params().items()}
        inputs = {k: tf.convert_to_tensor(np.asarray(v, np.float32)) for k, v in inputs.items()}
        return self.codes_from_noise(params, inputs, self.sampler_networks)

    def draw_noise(self, n: int, seed: int | None = None) -> dict[str, np.ndarray]:
        """The sampler's noise for ``n`` samples, drawn with ``numpy.random.default_rng(seed)``."""
        return noise.draw(self.noise_inputs(), n, seed)

    def sample(self, n: int, seed: int | None = None, pixels: bool = False) -> np.ndarray:
        """Draws ``n`` codes from the prior and returns decoder means ``[n, D]``.

        The means are pixel probabilities for a Bernoulli likelihood, pixel
        means for a Gaussian one and intensities in [0, 1] for the logistic.
        The noise comes from :meth:`draw_noise`, as for the exported samplers:
        the same ``seed`` gives the same images here, from the SavedModel and
        from LiteRT. ``pixels=True`` draws the pixels themselves from
        ``p(x|z)`` instead (bits for a Bernoulli likelihood, values on the
        pixel grid, ``k / (levels - 1)``, for the logistic).
        """
        self.check_ready()
        codes = self.codes_for(self.draw_noise(n, seed))
        if not pixels:
            return self.decode_mean(codes).numpy()
        from tfvae.runtime import stateless_seed

        draw_seed = stateless_seed(0 if seed is None else seed, 3)
        return self.decode(codes).sample(seed=draw_seed).numpy().astype(np.float32)

    def reconstruct(self, x) -> np.ndarray:
        """Decoder means at the posterior's representative code, ``[batch, D]``: ``predict``'s.

        ``x`` as ``fit`` takes it (rows or images, float or uint8 pixels).
        """
        x = tf.constant(inputs.rows(self, x, "reconstruct", check=False))
        return self(x, training=False).numpy()

    def reconstruct_sample(self, x, seed: int | None = None) -> np.ndarray:
        """Decoder means at one draw ``z ~ q(z|x)`` per example, ``[batch, D]``.

        The random counterpart of :meth:`reconstruct`; the same ``seed`` gives
        the same draws.
        """
        from tfvae.runtime import stateless_seed

        x = tf.constant(inputs.rows(self, x, "reconstruct_sample", check=False))
        z = self.encode(x).sample(seed=stateless_seed(0 if seed is None else seed, 5))
        return self.decode_mean(z).numpy()

    def posterior_code(self, x):
        """A representative code for ``x``: the posterior mean (or mode for binary codes)."""
        return self.posterior_mean(x)

    def decode_mean(self, z):
        """Decoder means for codes ``[batch, latent]`` (probabilities or pixel means)."""
        return self.decode(z).mean()

    def latent_quantiles(self):
        """Maps probabilities to prior coordinates for the 2-D manifold figure, or None."""
        return None

    @property
    def discrete_likelihood(self) -> bool:
        """Whether p(x|z) is a probability of discrete values (Bernoulli, logistic)."""
        return bool(self.decoder.layers[-1].discrete)

    @property
    def likelihood_levels(self) -> int | None:
        """Values per pixel of a discrete p(x|z) (2 for Bernoulli), None for densities."""
        return getattr(self.decoder.layers[-1], "levels", None)

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
            "obs_scale": self.obs_scale,
            "obs_components": self.obs_components,
            "levels": self.levels,
            "activation": self.activation,
            "center_input": self.center_input,
            "init": self.init,
            "head_init": self.head_init,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        return cls(**config)

    def _finish_build(self):
        # Create every weight now, so save/load and weight counts work before
        # the first batch.
        self.elbo_terms(tf.zeros([1, self.input_dim]))
        self.built = True
        # Called once through Keras, which records the input spec that SavedModel
        # saving and ``model.export`` trace ``call`` with.
        self(tf.zeros([1, self.input_dim]))
