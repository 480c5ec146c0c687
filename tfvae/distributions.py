"""Distributions TFP composes but does not name: the discretized logistic of 8-bit pixels.

:class:`QuantizedLogistic` is the observation model of PixelCNN++ (Salimans
et al. 2017) per pixel and channel, optionally a mixture, built from TFP's
own ``QuantizedDistribution`` over ``Logistic`` and ``MixtureSameFamily``;
this class only states it in the units tfvae's data use (pixel values scaled
to [0, 1] in steps of ``1 / (levels - 1)``).
"""

from __future__ import annotations

from tfvae._keras import tf, tfd


class QuantizedLogistic(tfd.Distribution):
    """Independent discretized logistic (or logistic mixture) over ``D`` pixel values.

    A pixel with integer value ``k`` in ``0..levels-1`` is the value ``x =
    k / (levels - 1)``; its probability is the logistic mass of the bin
    ``[k - 0.5, k + 0.5]`` (in pixel units), the end bins open:
    ``QuantizedDistribution(Logistic(m - 0.5, s), low=0, high=levels-1)`` with
    ``m``, ``s`` the location and scale in pixel units. With ``logits`` it is
    a ``MixtureSameFamily`` of such components per pixel.

    Args:
      loc: locations in [0, 1] units, ``[..., D]``, or ``[..., D, K]`` with logits.
      scale: scales in [0, 1] units, same shape, positive.
      logits: mixture logits ``[..., D, K]``, or None for one component.
      levels: pixel values per channel (256 for 8-bit images).

    ``log_prob(x)`` takes values in [0, 1] (rounded to the grid), ``sample()``
    gives grid values, and ``mean()`` is each pixel's location clipped to [0, 1]
    (mixture-weighted): the quantized mean differs from it only through the
    clipped tails.

    Example:
      >>> p = QuantizedLogistic(loc=tf.fill([2, 784], 0.5), scale=tf.fill([2, 784], 0.05))
      >>> p.log_prob(tf.fill([2, 784], 128 / 255.0)).shape   # [2]
    """

    def __init__(self, loc, scale, logits=None, levels: int = 256, name="QuantizedLogistic"):
        parameters = dict(locals())
        with tf.name_scope(name) as name:
            self._loc = tf.convert_to_tensor(loc, tf.float32)
            self._scale = tf.convert_to_tensor(scale, tf.float32)
            self._logits = None if logits is None else tf.convert_to_tensor(logits, tf.float32)
            self._steps = float(int(levels) - 1)
            # Logistic(m - 0.5) quantized by QuantizedDistribution's (k - 1, k] bins
            # puts the mass of [k - 0.5, k + 0.5] (pixel units) on k.
            base = tfd.Logistic(loc=self._loc * self._steps - 0.5, scale=self._scale * self._steps)
            values = tfd.QuantizedDistribution(base, low=0.0, high=self._steps)
            if self._logits is not None:
                values = tfd.MixtureSameFamily(tfd.Categorical(logits=self._logits), values)
            self._inner = tfd.Independent(values, reinterpreted_batch_ndims=1)
            super().__init__(dtype=tf.float32, reparameterization_type=tfd.NOT_REPARAMETERIZED,
                             validate_args=False, allow_nan_stats=True, parameters=parameters,
                             name=name)

    @property
    def levels(self) -> int:
        return int(self._steps) + 1

    def _batch_shape(self):
        return self._inner.batch_shape

    def _batch_shape_tensor(self):
        return self._inner.batch_shape_tensor()

    def _event_shape(self):
        return self._inner.event_shape

    def _event_shape_tensor(self):
        return self._inner.event_shape_tensor()

    def _log_prob(self, x):
        # QuantizedDistribution floors its input: round to the grid first.
        return self._inner.log_prob(tf.round(tf.convert_to_tensor(x, tf.float32) * self._steps))

    def _sample_n(self, n, seed=None):
        return self._inner.sample(n, seed=seed) / self._steps

    def _mean(self):
        return location_mean(self._loc, self._logits)


def location_mean(loc, logits=None):
    """Each pixel's location clipped to [0, 1], weighted by the mixture when there is one."""
    clipped = tf.clip_by_value(loc, 0.0, 1.0)
    if logits is None:
        return clipped
    return tf.reduce_sum(tf.nn.softmax(logits, axis=-1) * clipped, axis=-1)
