"""Encoder and decoder networks, each ending in a TFP distribution layer.

Only named ``tfp.layers`` (``IndependentNormal``, ``IndependentBernoulli``) and
layers registered here for serialization are used: ``DistributionLambda``
serializes its function with marshal, which must never be on a load path.

Distribution layers are given ``convert_to_tensor_fn=mean``: a layer's tensor
value is computed on every call, and a random draw there would be a stateful
op that graph pruning cannot remove. Samples are drawn explicitly where an
objective needs them.
"""

from __future__ import annotations

from tfvae._keras import keras, tf, tfd, tfpl

layers = keras.layers

_MEAN = tfd.Distribution.mean


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

    def __init__(self, event_size: int, min_scale: float = 1e-3, **kwargs):
        kwargs.pop("make_distribution_fn", None)
        kwargs.pop("convert_to_tensor_fn", None)
        kwargs.pop("function", None)
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
        base = layers.Layer.get_config(self)
        return {**base, "event_size": self.event_size, "min_scale": self.min_scale}


def observation_head(likelihood: str, event_size: int, min_scale: float = 1e-3):
    """The decoder's last layer and the number of parameters it takes.

    Args:
      likelihood: ``"bernoulli"`` (binary data; the decoder predicts logits) or
        ``"gaussian"`` (real-valued data; the decoder predicts means).
      event_size: number of observed dimensions.
      min_scale: floor of the Gaussian standard deviation.

    Returns:
      ``(params_size, layer)``.
    """
    if likelihood == "bernoulli":
        return (
            int(tfpl.IndependentBernoulli.params_size(event_size)),
            tfpl.IndependentBernoulli(event_size, convert_to_tensor_fn=_MEAN, name="p_x_given_z"),
        )
    if likelihood == "gaussian":
        return PixelNormal.params_size(event_size), PixelNormal(
            event_size, min_scale=min_scale, name="p_x_given_z"
        )
    raise ValueError(f"unknown likelihood {likelihood!r}; choose bernoulli or gaussian")


def gaussian_latent_head(latent_dim: int):
    """``(params_size, IndependentNormal layer)`` for a diagonal Gaussian posterior."""
    return (
        int(tfpl.IndependentNormal.params_size(latent_dim)),
        tfpl.IndependentNormal(latent_dim, convert_to_tensor_fn=_MEAN, name="q_z_given_x"),
    )


def bernoulli_latent_head(latent_dim: int):
    """``(params_size, IndependentBernoulli layer)`` for a factorised binary posterior."""
    return (
        int(tfpl.IndependentBernoulli.params_size(latent_dim)),
        tfpl.IndependentBernoulli(latent_dim, convert_to_tensor_fn=_MEAN, name="q_z_given_x"),
    )


def _conv_shape(image_shape) -> tuple[int, int]:
    height, width = image_shape
    if height % 4 or width % 4:
        raise ValueError(
            f"arch='conv' needs image height and width divisible by 4, got {height}x{width}; "
            "use arch='mlp' for this data"
        )
    return height, width


def encoder_body(input_dim: int, hidden, arch: str = "mlp", image_shape=None) -> list:
    """Layers mapping a flat image to features (before the distribution parameters)."""
    body = [layers.InputLayer(input_shape=(input_dim,))]
    if arch == "conv":
        height, width = _conv_shape(image_shape)
        body += [
            layers.Reshape((height, width, 1)),
            layers.Conv2D(32, 3, strides=2, padding="same", activation="relu"),
            layers.Conv2D(64, 3, strides=2, padding="same", activation="relu"),
            layers.Flatten(),
        ]
    elif arch != "mlp":
        raise ValueError(f"unknown arch {arch!r}; choose mlp or conv")
    body += [layers.Dense(units, activation="relu") for units in hidden]
    return body


def decoder_body(
    latent_dim: int, hidden, output_size: int, arch: str = "mlp", image_shape=None
) -> list:
    """Layers mapping a latent code to ``output_size`` distribution parameters."""
    body = [layers.InputLayer(input_shape=(latent_dim,))]
    body += [layers.Dense(units, activation="relu") for units in hidden]
    if arch == "conv":
        height, width = _conv_shape(image_shape)
        channels = output_size // (height * width)
        body += [
            layers.Dense((height // 4) * (width // 4) * 64, activation="relu"),
            layers.Reshape((height // 4, width // 4, 64)),
            layers.Conv2DTranspose(64, 3, strides=2, padding="same", activation="relu"),
            layers.Conv2DTranspose(32, 3, strides=2, padding="same", activation="relu"),
            layers.Conv2DTranspose(channels, 3, strides=1, padding="same"),
            layers.Flatten(),
        ]
    elif arch == "mlp":
        body.append(layers.Dense(output_size))
    else:
        raise ValueError(f"unknown arch {arch!r}; choose mlp or conv")
    return body


def build_encoder(input_dim, hidden, head, arch="mlp", image_shape=None, name="encoder"):
    """Encoder ``x -> q(z|x)`` as a Sequential ending in a distribution layer.

    Args:
      input_dim: flat input size D.
      hidden: hidden layer sizes.
      head: ``(params_size, layer)`` from a ``*_head`` function, or
        ``(size, None)`` for a deterministic code (plain autoencoder).
      arch: ``"mlp"`` or ``"conv"``.
      image_shape: ``(H, W)``, needed by ``conv``.
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
