"""Encoder and decoder networks, each ending in a distribution head (:mod:`tfvae.heads`).

The bodies are dense layers (``mlp``) or strided convolutions mirrored by
transposed ones (``conv``, adapting to the image's height, width and
channels); builders put a head from :mod:`tfvae.heads` at the end.
"""

from __future__ import annotations

import math

from tfvae import options
from tfvae._keras import keras, tfpl
from tfvae.errors import ConfigError

layers = keras.layers


@keras.saving.register_keras_serializable(package="tfvae")
class Center(layers.Layer):
    """Subtracts a fixed vector (the training data's mean) from its input.

    The vector is a non-trainable weight, zero until set from data (DisARM's
    ``--demean_input``), so it is saved, loaded and exported with the model.
    """

    def __init__(self, size: int, **kwargs):
        super().__init__(**kwargs)
        self.size = int(size)

    def build(self, input_shape):
        self.mean = self.add_weight(name="mean", shape=(self.size,), initializer="zeros",
                                    trainable=False)
        super().build(input_shape)

    def call(self, x):
        return x - self.mean

    def get_config(self):
        return {**super().get_config(), "size": self.size}


@keras.saving.register_keras_serializable(package="tfvae")
class FanInUniform(keras.initializers.Initializer):
    """``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` for a bias: PyTorch's default for its layers.

    A bias's shape does not tell its layer's fan-in, so the layer builder passes it.
    """

    def __init__(self, fan_in: int, seed=None):
        self.fan_in = int(fan_in)
        self.seed = seed

    def __call__(self, shape, dtype=None, **kwargs):
        limit = 1.0 / math.sqrt(max(1, self.fan_in))
        return keras.initializers.RandomUniform(-limit, limit, seed=self.seed)(shape, dtype)

    def get_config(self):
        return {"fan_in": self.fan_in, "seed": self.seed}


def initializers(init: str, fan_in: int) -> dict:
    """``kernel_initializer`` and ``bias_initializer`` of a layer for ``--init`` ``init``.

    ``glorot``: Keras' default (Glorot-uniform kernel, zero bias). ``fan-in``:
    PyTorch's default, ``U(+-1/sqrt(fan_in))`` for kernel and bias (Keras counts
    a transposed convolution's fan-in over its output channels, as PyTorch
    does). ``he``: He-uniform kernel (Kaiming, for ReLU layers), zero bias.
    """
    if init == "glorot":
        return {}
    if init == "fan-in":
        kernel = keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform")
        return {"kernel_initializer": kernel, "bias_initializer": FanInUniform(fan_in)}
    if init == "he":
        return {"kernel_initializer": keras.initializers.HeUniform()}
    raise ConfigError(f"unknown init {init!r}; choose one of: {', '.join(options.INITS)}")


def _leaky_relu():
    return layers.LeakyReLU(alpha=0.3)


#: ``--activation`` -> the layers that follow a linear map (keys of
#: :data:`tfvae.options.ACTIVATIONS`).
ACTIVATIONS = {
    "relu": lambda: [layers.Activation("relu")],
    "leaky_relu": lambda: [_leaky_relu()],
    "tanh": lambda: [layers.Activation("tanh")],
}


def _dense(units: int, activation: str, fan_in: int, init: str = "glorot") -> list:
    """A hidden dense layer: the linear map, then the activation."""
    start = initializers(init, fan_in)
    if activation == "relu":  # the fused form of a relu Dense (one layer, as before)
        return [layers.Dense(units, activation="relu", **start)]
    return [layers.Dense(units, **start)] + ACTIVATIONS[activation]()


def _dense_stack(sizes, fan_in: int, activation: str, init: str) -> tuple[list, int]:
    """Hidden dense layers of ``sizes`` after an input of ``fan_in`` values, and their width."""
    body = []
    for units in sizes:
        body += _dense(units, activation, fan_in, init)
        fan_in = units
    return body, fan_in


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


def signed() -> layers.Layer:
    """Binary inputs ``{0, 1}`` as ``{-1, +1}`` (``2 b - 1``): a centred binary code.

    What the DisARM code's ``--demean_input`` does to the inputs of the networks
    that read binary units (its decoder's and upper layers'); no weights.
    """
    return layers.Rescaling(2.0, offset=-1.0, name="signed")


def encoder_body(input_dim: int, hidden, arch: str = "mlp", image_shape=None,
                 activation: str = "relu", center: bool = False,
                 binary_input: bool = False, init: str = "glorot") -> tuple[list, int]:
    """Layers mapping a flat image to features, and the features' width.

    ``center`` starts with a :class:`Center` layer (the training mean, set
    from data, is subtracted from the input); with ``binary_input`` (binary
    units as input) centring is :func:`signed` instead. ``init`` is a key of
    :data:`tfvae.options.INITS` (:func:`initializers`).
    """
    body = [layers.InputLayer(input_shape=(input_dim,))]
    if center and binary_input:
        body.append(signed())
    elif center:
        body.append(Center(input_dim, name="center"))
    width = input_dim
    if arch == "conv":
        levels = _conv_levels(image_shape)
        body.append(layers.Reshape(tuple(image_shape)))
        channels = image_shape[2]
        for f in CONV_FILTERS[:levels]:
            body.append(layers.Conv2D(f, 3, strides=2, padding="same", activation="relu",
                                      **initializers(init, 9 * channels)))
            channels = f
        body.append(layers.Flatten())
        down = 2 ** levels
        width = (image_shape[0] // down) * (image_shape[1] // down) * channels
    elif arch != "mlp":
        raise ConfigError(f"unknown arch {arch!r}; choose one of: {', '.join(options.ARCHS)}")
    dense, width = _dense_stack(hidden, width, activation, init)
    return body + dense, width


def decoder_body(
    latent_dim: int, hidden, output_size: int, arch: str = "mlp", image_shape=None,
    activation: str = "relu", signed_code: bool = False, init: str = "glorot",
    head_init: str | None = None,
) -> list:
    """Layers mapping a latent code to ``output_size`` distribution parameters.

    The parameters come as ``P`` consecutive blocks of ``D`` values
    (``output_size = P * D``), each block a flattened channel-last image, as
    the heads' ``params_size`` layouts expect. ``signed_code`` reads a binary
    code as ``2 z - 1`` (:func:`signed`). ``init`` starts the hidden layers,
    ``head_init`` (default: ``init``) the layer giving the parameters.
    """
    head_init = head_init or init
    body = [layers.InputLayer(input_shape=(latent_dim,))]
    if signed_code:
        body.append(signed())
    dense, width = _dense_stack(hidden, latent_dim, activation, init)
    body += dense
    if arch == "conv":
        levels = _conv_levels(image_shape)
        height, width_px, channels = image_shape
        per_value = output_size // (height * width_px * channels)
        down = 2 ** levels
        filters = CONV_FILTERS[:levels]
        body += [
            layers.Dense((height // down) * (width_px // down) * filters[-1], activation="relu",
                         **initializers(init, width)),
            layers.Reshape((height // down, width_px // down, filters[-1])),
        ]
        # A transposed convolution's fan-in counts its output channels (Keras and PyTorch).
        body += [layers.Conv2DTranspose(f, 3, strides=2, padding="same", activation="relu",
                                        **initializers(init, 9 * f))
                 for f in reversed(filters)]
        body.append(layers.Conv2DTranspose(per_value * channels, 3, strides=1, padding="same",
                                           **initializers(head_init, 9 * per_value * channels)))
        if per_value > 1:  # (H, W, P, C) -> (P, H, W, C): blocks of D values per parameter
            body += [layers.Reshape((height * width_px, per_value, channels)),
                     layers.Permute((2, 1, 3))]
        body.append(layers.Flatten())
    elif arch == "mlp":
        body.append(layers.Dense(output_size, **initializers(head_init, width)))
    else:
        raise ConfigError(f"unknown arch {arch!r}; choose one of: {', '.join(options.ARCHS)}")
    return body


def build_encoder(input_dim, hidden, head, arch="mlp", image_shape=None, name="encoder",
                  activation="relu", center=False, binary_input=False, init="glorot",
                  head_init=None):
    """Encoder ``x -> q(z|x)`` as a Sequential ending in a distribution layer.

    Args:
      input_dim: flat input size D.
      hidden: hidden layer sizes.
      head: ``(params_size, layer)`` from a ``*_head`` function, or
        ``(size, None)`` for a deterministic code (plain autoencoder).
      arch: ``"mlp"`` or ``"conv"``.
      image_shape: ``(H, W, C)``, needed by ``conv``.
      activation: a key of :data:`ACTIVATIONS` for the hidden dense layers.
      center: subtract the training mean from the input first (:class:`Center`),
        or with ``binary_input`` read the binary input as ``2 b - 1``.
      init: how the hidden layers start (a key of :data:`tfvae.options.INITS`).
      head_init: how the layer giving the head's parameters starts (default: ``init``).
    """
    params_size, head_layer = head
    body, width = encoder_body(input_dim, hidden, arch, image_shape, activation, center,
                               binary_input, init)
    body.append(layers.Dense(params_size, **initializers(head_init or init, width)))
    if head_layer is not None:
        body.append(head_layer)
    return keras.Sequential(body, name=name)


def build_decoder(latent_dim, hidden, head, arch="mlp", image_shape=None, name="decoder",
                  activation="relu", signed_code=False, init="glorot", head_init=None):
    """Decoder ``z -> p(x|z)`` as a Sequential ending in a distribution layer.

    ``signed_code``: the code is binary and read as ``2 z - 1`` (:func:`signed`).
    ``init`` and ``head_init`` as in :func:`build_encoder`.
    """
    params_size, head_layer = head
    body = decoder_body(latent_dim, hidden, params_size, arch, image_shape, activation,
                        signed_code, init, head_init)
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
