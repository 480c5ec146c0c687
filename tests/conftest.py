"""Shared pytest configuration and fixtures.

Tests run offline on the package's own data (the embedded mnist-10k, small
arrays made here) and are seeded; slow ones are marked ``slow``.
"""

import os

import numpy as np
import pytest

# Quiet TensorFlow's C++ logging in test output (the application's choice).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@pytest.fixture(scope="session")
def binary_images():
    """256 statically binarized MNIST digits from the embedded data, [256, 784] float32."""
    from tfvae import data

    ds = data.load_dataset("mnist-10k")
    bits = data.binarize_static(ds.x_train[:256], seed=0)
    return bits.astype(np.float32)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A Gaussian VAE run trained for 2 short epochs on 2-D latents (seconds)."""
    import tfvae

    out = tmp_path_factory.mktemp("runs") / "tiny"
    tfvae.train(out=out, epochs=2, hidden=(64,), latent_dim=2, iwae_k=10, verbose=0)
    return out
