"""The Keras that tfvae uses: ``tf_keras`` (Keras 2).

``tfp.layers`` builds on Keras 2 and fails with Keras 3
(tensorflow/probability#1795), so every tfvae model is a ``tf_keras`` model,
whether or not the user imported Keras 3 first. Use ``tfvae.keras`` for
callbacks, optimizers and layers that go with tfvae models.
"""

import gc

# Importing TensorFlow, TFP and tf_keras makes a great many objects and next to no
# garbage, yet the cyclic collector would walk all of them again and again while
# they load (benchmarks/train_throughput.py times the import). It is
# paused for the import and restored as it was.
_collecting = gc.isenabled()
gc.disable()
try:
    import tensorflow as tf  # noqa: F401  (TensorFlow first: tf_keras registers into it)
    import tensorflow_probability as tfp
    import tf_keras as keras

    tfd = tfp.distributions  # TFP loads its parts on first use
    tfpl = tfp.layers
finally:
    if _collecting:
        gc.enable()

__all__ = ["keras", "tf", "tfd", "tfp", "tfpl"]
