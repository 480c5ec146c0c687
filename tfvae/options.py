"""Every named choice of tfvae, in one TensorFlow-free table.

:class:`tfvae.Config`'s validation, the click options of ``tfvae train`` and
the implementing registries (estimators, strategies, model families,
observation models, data modes) all read these tables, so a new estimator
or model family is one function (or class) plus one line here, and
``tfvae --help`` never imports TensorFlow. ``tests/test_options.py`` checks
that the CLI, ``Config`` and the registries agree.

Example:
  >>> from tfvae import options
  >>> options.ESTIMATORS["rloo"].min_samples
  2
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Estimator:
    """What a gradient estimator needs and what it estimates.

    Attributes:
      summary: one line for ``--help`` and the README.
      min_samples: the smallest ``num_samples`` it works with.
      input_baseline: whether the model must own a baseline network ``c(x)``.
      objective: ``"elbo"`` or ``"k-sample bound"``: what the gradient is of.
      biased: its mean is not the objective's gradient (a relaxation).
      decoder_passes: decoder passes per example of a one-sample estimator
        (2 for an antithetic pair or a relaxed sample beside its hard one).
      control_variate: whether the model must own a learned control variate
        (``relax``'s network, temperature and scale), which its training step
        fits to minimise the estimator's variance.
    """

    summary: str
    min_samples: int = 1
    input_baseline: bool = False
    objective: str = "elbo"
    biased: bool = False
    decoder_passes: int = 1
    control_variate: bool = False


#: ``--model``: model family -> summary (implemented by ``tfvae.runs.FAMILIES``).
MODELS = {
    "gaussian": "Gaussian-latent VAE, reparameterized (z = mu + sigma * eps)",
    "bernoulli": "Bernoulli-latent VAE trained with a score-function estimator",
    "sbn": "sigmoid belief network: several layers of binary units, local learning signals",
    "ae-gmm": "autoencoder with a Gaussian mixture fitted to its codes",
}

#: ``--estimator``: Bernoulli-latent gradient estimators (``tfvae.estimators.ESTIMATORS``).
ESTIMATORS = {
    "reinforce": Estimator("score function without a baseline (Williams 1992)"),
    "ema": Estimator("score function with a moving-average baseline"),
    "nvil": Estimator("learned input-dependent baseline (Mnih & Gregor 2014)",
                      input_baseline=True),
    "rloo": Estimator("leave-one-out baseline over k samples (Kool et al. 2019)",
                      min_samples=2),
    "disarm": Estimator("antithetic pairs sharing one uniform (Dong et al. 2020)",
                        decoder_passes=2),
    "vimco": Estimator("k-sample bound with leave-one-out signals (Mnih & Rezende 2016)",
                       min_samples=2, objective="k-sample bound"),
    "arm": Estimator("augment-REINFORCE-merge: antithetic pairs (Yin & Zhou 2019)",
                     decoder_passes=2),
    "gumbel": Estimator("(biased) Concrete / Gumbel-Softmax relaxation at --temperature "
                        "(Maddison et al. 2017; Jang et al. 2017)", biased=True,
                        decoder_passes=2),
    "straight-through": Estimator("(biased) straight-through Gumbel: hard sample forward, "
                                  "relaxed gradient (Jang et al. 2017)", biased=True),
    "relax": Estimator("REBAR-style relaxed control variate with a learned network and "
                       "temperature (Grathwohl et al. 2018)", decoder_passes=3,
                       control_variate=True),
}

#: ``--inference``: how posteriors are fitted (``tfvae.runs.families.INFERENCE``).
INFERENCE = {
    "amortized": "an encoder network q(z|x), trained with the model",
    "mean-field": "per-example factorised posteriors, Saul, Jaakkola & Jordan (1996) (sbn, "
                  "linear, Bernoulli pixels)",
}

#: ``--strategy``: ``tf.distribute`` strategies (``tfvae.distribute.STRATEGIES``).
STRATEGIES = {
    "default": "one device",
    "mirrored": "every local GPU (or logical CPU device), one process",
    "multiworker": "several processes or machines described by TF_CONFIG",
}

#: ``--likelihood``: observation models p(x|z) (``tfvae.heads.OBSERVATIONS``).
LIKELIHOODS = {
    "bernoulli": "binary data: independent Bernoulli pixels (logits)",
    "gaussian": "real-valued data: independent Normal pixels (scale: --obs-scale)",
    "logistic": "8-bit pixels: discretized logistic (mixture: --obs-components), no dequantization",
}

#: ``--obs-scale``: where a Gaussian observation's scale comes from.
OBS_SCALES = {
    "decoder": "the decoder predicts a scale per pixel and image",
    "pixel": "one free scale per pixel, shared by all images",
    "shared": "one free scale for every pixel and image",
}

#: ``--binarize``: how binary training data are made (``tfvae.data.MODES``).
BINARIZE = {
    "none": "values as they are (probabilities in [0, 1] for a Bernoulli likelihood)",
    "static": "one fixed draw per pixel (the shared bindata protocol)",
    "dynamic": "a fresh draw per pixel every epoch",
    "threshold": "1 where the scaled value exceeds 0.5",
}

#: ``--init`` and ``--head-init``: how a layer's weights start (``tfvae.networks.initializers``).
INITS = {
    "glorot": "Glorot-uniform weights, zero biases (Keras' default)",
    "fan-in": "weights and biases uniform in +-1/sqrt(fan-in) (PyTorch's default)",
    "he": "He-uniform weights (for ReLU layers), zero biases",
}


def default_init(likelihood: str | None, obs_scale: str | None) -> str:
    """The ``--init`` a model takes when none is given, chosen per observation model by the
    benchmarks (benchmarks/README.md): ``fan-in`` for a Gaussian with one shared scale,
    ``glorot`` for every other."""
    return "fan-in" if (likelihood, obs_scale) == ("gaussian", "shared") else "glorot"


#: ``--precision`` of training: what the networks compute in (``tfvae.runs.families.POLICIES``).
PRECISIONS = {
    "float32": "float32 throughout",
    "bfloat16": "Keras' mixed_bfloat16: networks in bfloat16, variables float32",
    "float16": "Keras' mixed_float16: networks in float16, variables float32, loss scaling",
}

#: ``--activation``: hidden layers' nonlinearity (``tfvae.networks.ACTIVATIONS``).
ACTIVATIONS = {
    "relu": "max(0, x)",
    "leaky_relu": "LeakyReLU with slope 0.3 below 0 (the DisARM code's)",
    "tanh": "hyperbolic tangent",
}

#: ``--val-order``: which training rows the validation split takes.
VAL_ORDERS = {
    "random": "a seeded random subset",
    "end": "the last rows in file order (a fixed split such as 50,000/10,000)",
}

#: ``--arch``: encoder and decoder networks (``tfvae.networks``).
ARCHS = {
    "mlp": "dense layers on flattened images",
    "conv": "strided convolutions down, transposed convolutions up",
}

#: ``--bad-images``: what to do with files of an image folder that cannot be read or decoded.
BAD_IMAGES = {
    "refuse": "stop before training, naming the files",
    "skip": "leave them out, with a warning naming them",
}

#: ``--covariance``: Gaussian mixture covariance types (scikit-learn's).
COVARIANCES = {
    "full": "one full covariance per component",
    "tied": "one full covariance shared by all components",
    "diag": "one diagonal covariance per component",
    "spherical": "one variance per component",
}


def names(table) -> tuple[str, ...]:
    """The choices of a table, in order."""
    return tuple(table)
