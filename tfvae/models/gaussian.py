"""Gaussian-latent VAE, trained with the reparameterization trick.

``q(z|x) = N(mu(x), diag sigma(x)^2)`` and ``z = mu + sigma * eps`` with
``eps ~ N(0, I)`` (Kingma & Welling 2014), standard Normal prior, analytic KL.
"""

from __future__ import annotations

import numpy as np

from tfvae import heads, objectives
from tfvae._keras import keras, tf, tfd
from tfvae.models.base import LatentVariableModel
from tfvae.sampler_noise import Noise


@keras.saving.register_keras_serializable(package="tfvae")
class GaussianVAE(LatentVariableModel):
    """Variational autoencoder with a diagonal Gaussian latent.

    The encoder ends in ``tfp.layers.IndependentNormal`` (reparameterized
    samples), the decoder in ``IndependentBernoulli`` (logits, binary data) or
    a Normal with a learned per-pixel scale (real-valued data). The loss is the
    negative ELBO per example: ``-log p(x|z) + KL(q(z|x) || N(0, I))``.

    Args: see :class:`tfvae.models.base.LatentVariableModel`.

    Example:
      >>> import tfvae
      >>> model = tfvae.GaussianVAE(input_dim=784, latent_dim=2)
      >>> model.compile(optimizer=tfvae.keras.optimizers.Adam(1e-3))
      >>> model.fit(x_train, epochs=5, batch_size=128)  # x_train: [N, 784] in {0, 1}
      >>> images = model.sample(16, seed=0)             # [16, 784] probabilities
      >>> means = model.predict(x_test)  # decoder means at the posterior mean: deterministic
    """

    model_type = "gaussian"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.encoder = self._build_encoder(heads.gaussian_latent_head(self.latent_dim))
        self.decoder = self._build_decoder()
        self._finish_build()

    def prior(self):
        return tfd.Independent(
            tfd.Normal(loc=tf.zeros([self.latent_dim]), scale=1.0), reinterpreted_batch_ndims=1
        )

    def rate(self, q):
        # The prior is N(0, I): the closed form, not TFP's generic KL dispatch.
        return objectives.kl_to_standard_normal(q)

    def latent_quantiles(self):
        normal = tfd.Normal(0.0, 1.0)
        return lambda p: normal.quantile(np.asarray(p, np.float32)).numpy()

    def kl_per_dim(self, x):
        # Independent(Normal) wraps per-dimension Normals: their KL is per unit.
        q = self.encode(x)
        return tfd.kl_divergence(q.distribution, tfd.Normal(0.0, 1.0))

    # ------------------------------------------------------------ sampler
    def noise_inputs(self):
        return (Noise("eps", (self.latent_dim,), "normal"),)

    @staticmethod
    def codes_from_noise(params, inputs, nets=()):
        return inputs["eps"]  # [n, latent]: the prior is N(0, I)

    @staticmethod
    def prior_description(params):
        return {"kind": "normal", "loc": 0.0, "scale": 1.0}
