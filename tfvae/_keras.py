"""The Keras that tfvae uses: ``tf_keras`` (Keras 2).

``tfp.layers`` builds on Keras 2 and fails with Keras 3
(tensorflow/probability#1795), so every tfvae model is a ``tf_keras`` model,
whether or not the user imported Keras 3 first. Use ``tfvae.keras`` for
callbacks, optimizers and layers that go with tfvae models.
"""

import tensorflow as tf  # noqa: F401  (TensorFlow first: tf_keras registers into it)
import tensorflow_probability as tfp
import tf_keras as keras

tfd = tfp.distributions
tfpl = tfp.layers

__all__ = ["keras", "tf", "tfd", "tfp", "tfpl"]
