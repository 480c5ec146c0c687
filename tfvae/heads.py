"""Distribution heads: the last layer of every encoder and decoder.

Each head is a ``tfp.layers`` distribution layer (``IndependentBernoulli``,
``IndependentNormal``, or a ``DistributionLambda`` of TFP distributions)
registered as a Keras serializable whose ``get_config`` holds plain values:
the stock layers also serialize their distribution-making lambda (with
marshal), which tf_keras warns about and which must never be on a load path.
Each head knows its ``params_size``, whether it scores discrete values, and
how its parameters map to what an exported graph outputs
(:meth:`mean_from_params` for decoders, :meth:`export_outputs` for
encoders), so export never branches on names.

Distribution layers are given ``convert_to_tensor_fn=mean``: a layer's tensor
value is computed on every call, and a random draw there would be a stateful
op that graph pruning cannot remove. Samples are drawn explicitly where an
objective needs them.

Observation models (``--likelihood``): :data:`OBSERVATIONS`.
"""

from __future__ import annotations

import numpy as np

from tfvae import options
from tfvae._keras import keras, tf, tfd, tfpl
from tfvae.distributions import QuantizedLogistic, location_mean
from tfvae.errors import ConfigError

layers = keras.layers

_MEAN = tfd.Distribution.mean


def _plain_config(layer, **values) -> dict:
    # Layer.get_config, not DistributionLambda's: nothing from a lambda.
    return {**keras.layers.Layer.get_config(layer), **values}


def _float32(kwargs) -> dict:
    """A head's layer arguments with its dtype policy set to float32.

    Under a mixed-precision policy (``mixed_float16``, ``mixed_bfloat16``) the
    networks compute in half precision while the heads' parameters are cast up
    to float32 on the way in (Keras' layer autocasting), so every
    distribution, log-probability and KL is computed in float32, as Keras'
    mixed-precision guide asks of a model's outputs and losses.
    """
    kwargs["dtype"] = "float32"
    return kwargs


@keras.saving.register_keras_serializable(package="tfvae")
class BernoulliHead(tfpl.IndependentBernoulli):
    """``tfp.layers.IndependentBernoulli`` over ``event_size`` units, from logits.

    Used for binary pixels (decoder) and binary codes (the Bernoulli VAE's
    encoder). Its tensor value is the mean (probabilities).

    Example:
      >>> head = BernoulliHead(784)
      >>> p = head(tf.zeros([2, 784]))  # Independent(Bernoulli), batch [2], event [784]
    """

    discrete = True
    levels = 2
    #: What the mean is (an exported decoder's ``image``).
    MEAN_MEANING = "probabilities"
    #: What each output of :meth:`export_outputs` means (an exported encoder's).
    OUTPUTS = {"probabilities": "posterior probabilities q(z_i = 1 | x)"}

    def __init__(self, event_size: int, **kwargs):
        for key in ("event_shape", "convert_to_tensor_fn", "sample_dtype", "validate_args"):
            kwargs.pop(key, None)
        super().__init__(int(event_size), convert_to_tensor_fn=_MEAN, **_float32(kwargs))
        self.event_size = int(event_size)

    def get_config(self):
        return _plain_config(self, event_size=self.event_size)

    @staticmethod
    def mean_from_params(params):
        """The distribution's mean as a tensor of these parameters (exported graphs)."""
        return tf.math.sigmoid(params)

    @staticmethod
    def initial_bias(mean, std=None):
        """Parameters whose distribution has this mean (a data-dependent start).

        The logit of the mean, clipped to [0.001, 0.999] as the DisARM code does
        (a Bernoulli's spread follows from its mean: ``std`` is not used).
        """
        mean = np.clip(mean, 0.001, 0.999)
        return np.log(mean / (1.0 - mean)).astype(np.float32)

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

    discrete = False
    MEAN_MEANING = "means"
    OUTPUTS = {"mean": "posterior mean", "scale": "posterior standard deviation"}

    def __init__(self, event_size: int, **kwargs):
        for key in ("event_shape", "convert_to_tensor_fn", "validate_args"):
            kwargs.pop(key, None)
        super().__init__(int(event_size), convert_to_tensor_fn=_MEAN, **_float32(kwargs))
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


def _scale(raw, min_scale):
    """A positive scale from an unconstrained parameter, with a floor."""
    return min_scale + tf.math.softplus(raw)


def _raw_scale(scale, min_scale, size: int):
    """The inverse of :func:`_scale`: raw parameters giving ``scale`` (``[size]``).

    ``None`` gives raw 0 (scale ``min_scale + ln 2``, the untrained start). A
    scale at or below the floor starts a tenth of the floor above it: a pixel
    that is constant in the data starts (nearly) as sharp as the floor allows.
    """
    if scale is None:
        return np.zeros(size, np.float32)
    excess = np.maximum(np.asarray(scale, np.float64) - min_scale, 0.1 * min_scale)
    return np.log(np.expm1(excess)).astype(np.float32)


class _NormalPixels(tfpl.DistributionLambda):
    """Independent Normal over ``event_size`` pixels with a scale floor: what
    :class:`PixelNormal` and :class:`DecoderNormal` share (``_make`` differs)."""

    discrete = False
    MEAN_MEANING = "means"

    def __init__(self, event_size: int, min_scale: float = 1e-3, **kwargs):
        for key in ("make_distribution_fn", "convert_to_tensor_fn", "function"):
            kwargs.pop(key, None)
        super().__init__(self._make, _MEAN, **_float32(kwargs))
        self.event_size = int(event_size)
        self.min_scale = float(min_scale)

    def get_config(self):
        return _plain_config(self, event_size=self.event_size, min_scale=self.min_scale)


@keras.saving.register_keras_serializable(package="tfvae")
class PixelNormal(_NormalPixels):
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
        scale = _scale(self.raw_scale, self.min_scale)
        return tfd.Independent(tfd.Normal(loc=loc, scale=scale), reinterpreted_batch_ndims=1)

    @staticmethod
    def params_size(event_size: int) -> int:
        return int(event_size)


    @staticmethod
    def mean_from_params(params):
        return params

    def initial_bias(self, mean, std=None):
        """The locations at the data's mean; given ``std``, the free scales at its spread."""
        if std is not None:
            self.raw_scale.assign(_raw_scale(self._start_scale(std), self.min_scale,
                                             self.raw_scale.shape[0]))
        return np.asarray(mean, np.float32)

    @staticmethod
    def _start_scale(std):
        return std




@keras.saving.register_keras_serializable(package="tfvae")
class DecoderNormal(_NormalPixels):
    """Independent Normal over pixels whose loc and scale the decoder predicts.

    The parameters are laid out as ``tfp.layers.IndependentNormal``'s (``D``
    locations, then ``D`` raw scales) with ``scale = min_scale + softplus(raw)``:
    the scale depends on the code, and the floor keeps the density finite
    where a pixel is (nearly) constant.

    Args:
      event_size: number of pixels.
      min_scale: lower bound on the standard deviation.
    """


    def _make(self, params):
        loc, raw = tf.split(params, 2, axis=-1)
        return tfd.Independent(tfd.Normal(loc=loc, scale=_scale(raw, self.min_scale)), 1)

    @staticmethod
    def params_size(event_size: int) -> int:
        return 2 * int(event_size)


    @staticmethod
    def mean_from_params(params):
        return tf.split(params, 2, axis=-1)[0]

    def initial_bias(self, mean, std=None):
        """Locations at the data's mean and, given ``std``, scales at its spread per pixel."""
        mean = np.asarray(mean, np.float32)
        return np.concatenate([mean, _raw_scale(std, self.min_scale, mean.size)])


@keras.saving.register_keras_serializable(package="tfvae")
class SharedNormal(PixelNormal):
    """Independent Normal over pixels with one learned scale for every pixel and image.

    The "calibrated decoder" of Rybkin et al. 2021 (sigma-VAE) in its learned
    form: ``scale = min_scale + softplus(raw)``, ``raw`` a single weight.
    """

    def build(self, input_shape):
        self.raw_scale = self.add_weight(
            name="raw_scale", shape=(1,),
            initializer=keras.initializers.Constant(0.5413), trainable=True,
        )
        tfpl.DistributionLambda.build(self, input_shape)

    @staticmethod
    def _start_scale(std):
        return np.sqrt(np.mean(np.square(std), keepdims=True))  # the pooled spread


@keras.saving.register_keras_serializable(package="tfvae")
class LogisticHead(tfpl.DistributionLambda):
    """Discretized logistic (mixture) over 8-bit pixels (:class:`QuantizedLogistic`).

    Per pixel and channel, ``components`` logistics: with one, the
    parameters are ``D`` locations and ``D`` raw scales; with ``K > 1``,
    ``K * D`` mixture logits, ``K * D`` locations and ``K * D`` raw scales
    (blocks of ``D`` values, component-major). Locations and scales are in
    [0, 1] units, ``scale = min_scale + softplus(raw)``.

    Args:
      event_size: number of pixel values ``D`` (pixels x channels).
      components: logistics per value.
      min_scale: lower bound on the scale, in [0, 1] units.
      levels: values per pixel and channel (256 for 8-bit images).
    """

    discrete = True
    MEAN_MEANING = ("pixel intensities in [0, 1]: each pixel's logistic location, clipped "
                    "(mixture-weighted)")

    def __init__(self, event_size: int, components: int = 1, min_scale: float = 1e-3,
                 levels: int = 256, **kwargs):
        for key in ("make_distribution_fn", "convert_to_tensor_fn", "function"):
            kwargs.pop(key, None)
        super().__init__(self._make, _MEAN, **_float32(kwargs))
        self.event_size = int(event_size)
        self.components = int(components)
        self.min_scale = float(min_scale)
        self.levels = int(levels)

    def _split(self, params):
        """``(logits or None, loc, raw scale)``, each ``[..., D]`` or ``[..., D, K]``."""
        k = self.components
        if k == 1:
            loc, raw = tf.split(params, 2, axis=-1)
            return None, loc, raw
        lead = tf.shape(params)[:-1]
        blocks = tf.reshape(params, tf.concat([lead, [3, k, self.event_size]], 0))
        blocks = tf.linalg.matrix_transpose(blocks)  # [..., 3, D, K]
        return blocks[..., 0, :, :], blocks[..., 1, :, :], blocks[..., 2, :, :]

    def _make(self, params):
        logits, loc, raw = self._split(params)
        return QuantizedLogistic(loc, _scale(raw, self.min_scale), logits, levels=self.levels)

    @staticmethod
    def params_size(event_size: int, components: int = 1) -> int:
        return (2 if components == 1 else 3 * components) * int(event_size)

    def get_config(self):
        return _plain_config(self, event_size=self.event_size, components=self.components,
                             min_scale=self.min_scale, levels=self.levels)

    def mean_from_params(self, params):
        logits, loc, _ = self._split(params)
        return location_mean(loc, logits)

    def initial_bias(self, mean, std=None):
        """Locations at the data's mean and, given ``std``, scales matching its spread.

        A logistic with scale ``s`` has standard deviation ``s * pi / sqrt(3)``.
        """
        mean = np.asarray(mean, np.float32)
        scale = None if std is None else np.asarray(std) * np.sqrt(3.0) / np.pi
        raw = _raw_scale(scale, self.min_scale, mean.size)
        if self.components == 1:
            return np.concatenate([mean, raw])
        k = self.components
        return np.concatenate([np.zeros(k * mean.size, np.float32), np.tile(mean, k),
                               np.tile(raw, k)])


# ------------------------------------------------------------ observation models


def _bernoulli_observation(event_size, min_scale, obs_scale, components, levels):
    return BernoulliHead.params_size(event_size), BernoulliHead(event_size, name="p_x_given_z")


def _gaussian_observation(event_size, min_scale, obs_scale, components, levels):
    cls = GAUSSIAN_SCALES[obs_scale]
    return cls.params_size(event_size), cls(event_size, min_scale=min_scale, name="p_x_given_z")


def _logistic_observation(event_size, min_scale, obs_scale, components, levels):
    head = LogisticHead(event_size, components=components, min_scale=min_scale, levels=levels,
                        name="p_x_given_z")
    return LogisticHead.params_size(event_size, components), head


#: ``--obs-scale`` -> Gaussian head class (keys of :data:`tfvae.options.OBS_SCALES`).
GAUSSIAN_SCALES = {"decoder": DecoderNormal, "pixel": PixelNormal, "shared": SharedNormal}
#: ``--likelihood`` -> ``(event_size, min_scale, obs_scale, components, levels)
#: -> (params_size, head)``.
OBSERVATIONS = {
    "bernoulli": _bernoulli_observation,
    "gaussian": _gaussian_observation,
    "logistic": _logistic_observation,
}


def observation_head(likelihood: str, event_size: int, min_scale: float = 1e-3,
                     obs_scale: str = "decoder", components: int = 1, levels: int = 256):
    """The decoder's last layer and the number of parameters it takes.

    Args:
      likelihood: a key of :data:`OBSERVATIONS`.
      event_size: number of observed values.
      min_scale: floor of a Gaussian or logistic scale.
      obs_scale: a key of :data:`GAUSSIAN_SCALES` (Gaussian likelihood).
      components: logistic components per value (logistic likelihood).
      levels: values per pixel and channel (logistic likelihood).

    Returns:
      ``(params_size, layer)``.
    """
    try:
        make = OBSERVATIONS[likelihood]
    except KeyError:
        raise ConfigError(f"unknown likelihood {likelihood!r}; choose one of: "
                          f"{', '.join(options.LIKELIHOODS)}") from None
    if obs_scale not in GAUSSIAN_SCALES:
        raise ConfigError(f"unknown obs_scale {obs_scale!r}; choose one of: "
                          f"{', '.join(options.OBS_SCALES)}")
    size, head = make(event_size, min_scale, obs_scale, components, levels)
    return int(size), head


def gaussian_latent_head(latent_dim: int):
    """``(params_size, NormalHead)`` for a diagonal Gaussian posterior."""
    return int(NormalHead.params_size(latent_dim)), NormalHead(latent_dim, name="q_z_given_x")


def bernoulli_latent_head(latent_dim: int):
    """``(params_size, BernoulliHead)`` for a factorised binary posterior."""
    return int(BernoulliHead.params_size(latent_dim)), BernoulliHead(latent_dim,
                                                                     name="q_z_given_x")
