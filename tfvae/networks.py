"""Encoder and decoder networks, each ending in a TFP distribution layer.

The heads are ``tfp.layers`` distribution layers (``IndependentNormal``,
``IndependentBernoulli``, or :class:`PixelNormal`) subclassed only to be
registered Keras serializables whose ``get_config`` holds plain values: the
stock layers also serialize their distribution-making lambda (with marshal),
which tf_keras warns about and which must never be on a load path. Each head
knows its ``params_size`` and how its parameters map to what an exported
graph outputs (:meth:`export_outputs`), so export never branches on names.

Distribution layers are given ``convert_to_tensor_fn=mean``: a layer's tensor
value is computed on every call, and a random draw there would be a stateful
op that graph pruning cannot remove. Samples are drawn explicitly where an
objective needs them.
"""

from __future__ import annotations

import math

from tfvae import options
from tfvae._keras import keras, tf, tfd, tfpl
from tfvae.errors import ConfigError

layers = keras.layers

_MEAN = tfd.Distribution.mean


def _plain_config(layer, **values) -> dict:
    # Layer.get_config, not DistributionLambda's: nothing from a lambda.
    return {**keras.layers.Layer.get_config(layer), **values}


@keras.saving.register_keras_serializable(package="tfvae")
class BernoulliHead(tfpl.IndependentBernoulli):
    """``tfp.layers.IndependentBernoulli`` over ``event_size`` units, from logits.

    Used for binary pixels (decoder) and binary codes (the Bernoulli VAE's
    encoder). Its tensor value is the mean (probabilities).

    Example:
      >>> head = BernoulliHead(784)
      >>> p = head(tf.zeros([2, 784]))  # Independent(Bernoulli), batch [2], event [784]
    """

    #: What the mean is (an exported decoder's ``image``).
    MEAN_MEANING = "probabilities"
    #: What each output of :meth:`export_outputs` means (an exported encoder's).
    OUTPUTS = {"probabilities": "posterior probabilities q(z_i = 1 | x)"}

    def __init__(self, event_size: int, **kwargs):
        for key in ("event_shape", "convert_to_tensor_fn", "sample_dtype", "validate_args"):
            kwargs.pop(key, None)
        super().__init__(int(event_size), convert_to_tensor_fn=_MEAN, **kwargs)
        self.event_size = int(event_size)

    def get_config(self):
        return _plain_config(self, event_size=self.event_size)

    @staticmethod
    def mean_from_params(params):
        """The distribution's mean as a tensor of these parameters (exported graphs)."""
        return tf.math.sigmoid(params)

    @staticmethod
    def export_outputs(params) -> dict:
        """The deterministic outputs an exported encoder gives for these parameters."""
        return {"probabilities": tf.math.sigmoid(params)}

    @staticmethod
    def code(params):
        """A representative code: the posterior mode (logits > 0)."""
        return tf.cast(params > 0, tf.float32)


@keras.saving.register_keras_serializable(package="tfvae")
class NormalHead(tfpl.IndependentNormal):
    """``tfp.layers.IndependentNormal``: loc and ``softplus`` scale per unit.

    The Gaussian VAE's posterior ``q(z|x)``; reparameterized samples.
    """

    MEAN_MEANING = "means"
    OUTPUTS = {"mean": "posterior mean", "scale": "posterior standard deviation"}

    def __init__(self, event_size: int, **kwargs):
        for key in ("event_shape", "convert_to_tensor_fn", "validate_args"):
            kwargs.pop(key, None)
        super().__init__(int(event_size), convert_to_tensor_fn=_MEAN, **kwargs)
        self.event_size = int(event_size)

    def get_config(self):
        return _plain_config(self, event_size=self.event_size)

    @staticmethod
    def mean_from_params(params):
        return tf.split(params, 2, axis=-1)[0]

    @staticmethod
    def export_outputs(params) -> dict:
        loc, raw = tf.split(params, 2, axis=-1)
        return {"mean": loc, "scale": tf.math.softplus(raw)}

    @staticmethod
    def code(params):
        return tf.split(params, 2, axis=-1)[0]


@keras.saving.register_keras_serializable(package="tfvae")
class PixelNormal(tfpl.DistributionLambda):
    """Independent Normal over pixels with a learned per-pixel scale and a floor.

    The decoder predicts the mean; each pixel has one free scale parameter,
    ``scale = min_scale + softplus(raw)``. The floor keeps the likelihood from
    diverging when a pixel is (nearly) constant in the data.

    Args:
      event_size: number of pixels.
      min_scale: lower bound on the standard deviation.

    Example:
      >>> head = PixelNormal(784, min_scale=1e-3)
      >>> p = head(tf.zeros([2, 784]))  # Independent(Normal), batch [2], event [784]
    """

    MEAN_MEANING = "means"

    def __init__(self, event_size: int, min_scale: float = 1e-3, **kwargs):
        for key in ("make_distribution_fn", "convert_to_tensor_fn", "function"):
            kwargs.pop(key, None)
        super().__init__(self._make, _MEAN, **kwargs)
        self.event_size = int(event_size)
        self.min_scale = float(min_scale)

    def build(self, input_shape):
        # softplus(0.5413) = 1: the scale starts near 1, as a unit Normal.
        self.raw_scale = self.add_weight(
            name="raw_scale",
            shape=(self.event_size,),
            initializer=keras.initializers.Constant(0.5413),
            trainable=True,
        )
        super().build(input_shape)

    def _make(self, loc):
        scale = self.min_scale + tf.math.softplus(self.raw_scale)
        return tfd.Independent(tfd.Normal(loc=loc, scale=scale), reinterpreted_batch_ndims=1)

    @staticmethod
    def params_size(event_size: int) -> int:
        return int(event_size)

    def get_config(self):
        return _plain_config(self, event_size=self.event_size, min_scale=self.min_scale)

    @staticmethod
    def mean_from_params(params):
        return params


def _bernoulli_observation(event_size: int, min_scale: float):
    return BernoulliHead.params_size(event_size), BernoulliHead(event_size, name="p_x_given_z")


def _gaussian_observation(event_size: int, min_scale: float):
    return PixelNormal.params_size(event_size), PixelNormal(event_size, min_scale=min_scale,
                                                           name="p_x_given_z")


#: ``--likelihood`` -> ``(event_size, min_scale) -> (params_size, head layer)``.
OBSERVATIONS = {
    "bernoulli": _bernoulli_observation,
    "gaussian": _gaussian_observation,
}


def observation_head(likelihood: str, event_size: int, min_scale: float = 1e-3):
    """The decoder's last layer and the number of parameters it takes.

    Args:
      likelihood: a key of :data:`OBSERVATIONS`.
      event_size: number of observed values.
      min_scale: floor of a Gaussian standard deviation.

    Returns:
      ``(params_size, layer)``.
    """
    try:
        make = OBSERVATIONS[likelihood]
    except KeyError:
        raise ConfigError(f"unknown likelihood {likelihood!r}; choose one of: "
                          f"{', '.join(options.LIKELIHOODS)}") from None
    return make(event_size, min_scale)


def gaussian_latent_head(latent_dim: int):
    """``(params_size, NormalHead)`` for a diagonal Gaussian posterior."""
    return int(NormalHead.params_size(latent_dim)), NormalHead(latent_dim, name="q_z_given_x")


def bernoulli_latent_head(latent_dim: int):
    """``(params_size, BernoulliHead)`` for a factorised binary posterior."""
    return int(BernoulliHead.params_size(latent_dim)), BernoulliHead(latent_dim,
                                                                     name="q_z_given_x")


#: Filters of the strided convolutions, level by level (Conv 32/64 for 28x28).
CONV_FILTERS = (32, 64, 128, 256)
#: The conv encoder halves the image while both sides stay at least this large.
CONV_MIN_SIDE = 4


def conv_levels(image_shape) -> int:
    """How many stride-2 convolutions an image of this shape takes (0: not conv-able).

    Each level halves height and width; it applies while both are even and
    the result stays at least :data:`CONV_MIN_SIDE` (28 -> 14 -> 7: 2 levels;
    32 -> 16 -> 8 -> 4: 3 levels).
    """
    height, width = image_shape[0], image_shape[1]
    levels = 0
    while (levels < len(CONV_FILTERS) and height % 2 == 0 and width % 2 == 0
           and min(height, width) // 2 >= CONV_MIN_SIDE):
        height, width, levels = height // 2, width // 2, levels + 1
    return levels


def _conv_levels(image_shape) -> int:
    levels = conv_levels(image_shape)
    if levels == 0:
        raise ConfigError(
            f"arch='conv' needs image height and width that halve to at least "
            f"{CONV_MIN_SIDE} (even sides, at least {2 * CONV_MIN_SIDE}), got "
            f"{image_shape[0]}x{image_shape[1]}; use arch='mlp' for this data"
        )
    return levels


def encoder_body(input_dim: int, hidden, arch: str = "mlp", image_shape=None) -> list:
    """Layers mapping a flat image to features (before the distribution parameters)."""
    body = [layers.InputLayer(input_shape=(input_dim,))]
    if arch == "conv":
        levels = _conv_levels(image_shape)
        body.append(layers.Reshape(tuple(image_shape)))
        body += [layers.Conv2D(f, 3, strides=2, padding="same", activation="relu")
                 for f in CONV_FILTERS[:levels]]
        body.append(layers.Flatten())
    elif arch != "mlp":
        raise ConfigError(f"unknown arch {arch!r}; choose one of: {', '.join(options.ARCHS)}")
    body += [layers.Dense(units, activation="relu") for units in hidden]
    return body


def decoder_body(
    latent_dim: int, hidden, output_size: int, arch: str = "mlp", image_shape=None
) -> list:
    """Layers mapping a latent code to ``output_size`` distribution parameters.

    The parameters come as ``P`` consecutive blocks of ``D`` values
    (``output_size = P * D``), each block a flattened channel-last image, as
    the heads' ``params_size`` layouts expect.
    """
    body = [layers.InputLayer(input_shape=(latent_dim,))]
    body += [layers.Dense(units, activation="relu") for units in hidden]
    if arch == "conv":
        levels = _conv_levels(image_shape)
        height, width, channels = image_shape
        per_value = output_size // (height * width * channels)
        down = 2 ** levels
        filters = CONV_FILTERS[:levels]
        body += [
            layers.Dense((height // down) * (width // down) * filters[-1], activation="relu"),
            layers.Reshape((height // down, width // down, filters[-1])),
        ]
        body += [layers.Conv2DTranspose(f, 3, strides=2, padding="same", activation="relu")
                 for f in reversed(filters)]
        body.append(layers.Conv2DTranspose(per_value * channels, 3, strides=1, padding="same"))
        if per_value > 1:  # (H, W, P, C) -> (P, H, W, C): blocks of D values per parameter
            body += [layers.Reshape((height * width, per_value, channels)),
                     layers.Permute((2, 1, 3))]
        body.append(layers.Flatten())
    elif arch == "mlp":
        body.append(layers.Dense(output_size))
    else:
        raise ConfigError(f"unknown arch {arch!r}; choose one of: {', '.join(options.ARCHS)}")
    return body


def build_encoder(input_dim, hidden, head, arch="mlp", image_shape=None, name="encoder"):
    """Encoder ``x -> q(z|x)`` as a Sequential ending in a distribution layer.

    Args:
      input_dim: flat input size D.
      hidden: hidden layer sizes.
      head: ``(params_size, layer)`` from a ``*_head`` function, or
        ``(size, None)`` for a deterministic code (plain autoencoder).
      arch: ``"mlp"`` or ``"conv"``.
      image_shape: ``(H, W, C)``, needed by ``conv``.
    """
    params_size, head_layer = head
    body = encoder_body(input_dim, hidden, arch, image_shape) + [layers.Dense(params_size)]
    if head_layer is not None:
        body.append(head_layer)
    return keras.Sequential(body, name=name)


def build_decoder(latent_dim, hidden, head, arch="mlp", image_shape=None, name="decoder"):
    """Decoder ``z -> p(x|z)`` as a Sequential ending in a distribution layer."""
    params_size, head_layer = head
    body = decoder_body(latent_dim, hidden, params_size, arch, image_shape)
    if head_layer is not None:
        body.append(head_layer)
    return keras.Sequential(body, name=name)


def split_head(net):
    """``(deterministic layers, the distribution layer or None)`` of a Sequential."""
    parts = list(net.layers)
    if parts and isinstance(parts[-1], tfpl.DistributionLambda):
        return parts[:-1], parts[-1]
    return parts, None


def count_weights(variables) -> int:
    """Number of scalar weights in a list of variables."""
    return int(sum(math.prod(v.shape) for v in variables))
