"""tfvae: variational autoencoders on TensorFlow Probability, made practical.

``import tfvae`` is light: TensorFlow is imported the first time a model,
``evaluate``, ``train`` or ``keras`` is used, so the CLI's ``--help`` is fast.

Example:
  >>> import tfvae
  >>> model = tfvae.GaussianVAE(input_dim=784, latent_dim=20)
  >>> model.compile(optimizer=tfvae.keras.optimizers.Adam(1e-3))
"""

from __future__ import annotations

import importlib
import importlib.util

__version__ = "0.1.0"

# name -> (module, attribute); resolved on first access (PEP 562).
_LAZY = {
    "keras": ("tfvae._keras", "keras"),
    "GaussianVAE": ("tfvae.models.gaussian", "GaussianVAE"),
    "BernoulliVAE": ("tfvae.models.bernoulli", "BernoulliVAE"),
    "StackedBernoulliVAE": ("tfvae.models.stacked", "StackedBernoulliVAE"),
    "MeanFieldSBN": ("tfvae.models.mean_field", "MeanFieldSBN"),
    "Autoencoder": ("tfvae.models.autoencoder", "Autoencoder"),
    "GMMSampler": ("tfvae.gmm", "GMMSampler"),
    "evaluate": ("tfvae.evaluation", "evaluate"),
    "train": ("tfvae.training", "train"),
    "build_model": ("tfvae.runs.store", "build_model"),
    "load_run": ("tfvae.runs.store", "load_run"),
    "Run": ("tfvae.runs.store", "Run"),
    "load_dataset": ("tfvae.data", "load_dataset"),
    "prepare": ("tfvae.data", "prepare"),
    "Config": ("tfvae.config", "Config"),
    "TfvaeError": ("tfvae.errors", "TfvaeError"),
    "DataError": ("tfvae.errors", "DataError"),
    "ConfigError": ("tfvae.errors", "ConfigError"),
    "RunDirError": ("tfvae.errors", "RunDirError"),
    "Interrupted": ("tfvae.errors", "Interrupted"),
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name):
    if name in _LAZY:
        module_name, attribute = _LAZY[name]
        value = getattr(importlib.import_module(module_name), attribute)
    elif not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}"):
        # A public submodule: tfvae.data.blocks(...) after a bare ``import tfvae``.
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module 'tfvae' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return __all__
