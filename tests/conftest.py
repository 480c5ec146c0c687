"""Shared pytest configuration and fixtures.

Tests run offline on the package's own data (the embedded mnist-10k, small
arrays made here) and are seeded; slow ones are marked ``slow``.
"""

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

# Quiet TensorFlow's C++ logging in test output (the application's choice).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parents[1]
#: ../shared beside the checkout (the shared benchmark protocol and peers).
SHARED = ROOT.parent / "shared"

#: Small networks for the model factory: (family, constructor kwargs).
SMALL = dict(input_dim=784, latent_dim=4, hidden=(32,))


@pytest.fixture(scope="session")
def binary_images():
    """256 statically binarized MNIST digits from the embedded data, [256, 784] float32."""
    from tfvae import data

    ds = data.load_dataset("mnist-10k")
    bits = data.binarize_static(ds.x_train[:256], seed=0)
    return bits.astype(np.float32)


@pytest.fixture
def make_model():
    """``make_model(family, **kwargs)``: a small seeded model of any family.

    ``family`` is a key of ``tfvae.runs.FAMILIES`` (``gaussian``, ``bernoulli``,
    ``ae-gmm``); keyword arguments override the small defaults.
    """
    from tfvae._keras import keras
    from tfvae.runs.families import family

    def make(name, **kwargs):
        keras.utils.set_random_seed(0)
        return family(name).cls()(**{**SMALL, **kwargs})

    return make


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A Gaussian VAE run trained for 2 short epochs on 2-D latents (seconds)."""
    import tfvae

    out = tmp_path_factory.mktemp("runs") / "tiny"
    tfvae.train(out=out, epochs=2, hidden=(64,), latent_dim=2, iwae_k=10, verbose=0)
    return out


@pytest.fixture
def hold_lock():
    """``with hold_lock(run_dir) as pid:`` another process holds the run's lock."""
    return _lock_held_by_another_process


@contextlib.contextmanager
def _lock_held_by_another_process(run_dir):
    """Yields the pid of a process holding ``run_dir``'s lock; SIGKILLs it after."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from tfvae.runs.layout import RunLock; "
         "held = RunLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(120)",
         str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield holder.pid
    finally:
        holder.kill()  # SIGKILL: the kernel drops the lock with the process
        holder.wait()
