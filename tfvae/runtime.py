"""Helpers every layer may use: stateless seeds, library versions, memory release.

Nothing here imports tfvae modules other than :mod:`tfvae._keras` (lazily),
so models, evaluation, training and export can all depend on it.
"""

from __future__ import annotations

import platform


def stateless_seed(seed, salt: int = 0):
    """A stateless seed (shape ``[2]`` int32 tensor) from an int, or None.

    ``salt`` separates the streams of one seed (e.g. evaluation batch ``i``
    uses ``stateless_seed(seed, 2 * i)``).
    """
    if seed is None:
        return None
    from tfvae._keras import tf

    return tf.constant([int(seed), int(salt)], dtype=tf.int32)


def versions() -> dict:
    """Versions of tfvae, TensorFlow, TFP, tf_keras and Python, for run records."""
    from importlib import metadata

    import tfvae

    def version(name):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    return {
        "tfvae": tfvae.__version__,
        "tensorflow": version("tensorflow"),
        "tensorflow_probability": version("tensorflow-probability"),
        "tf_keras": version("tf-keras"),
        "python": platform.python_version(),
    }


def release_memory() -> None:
    """Hands freed heap memory back to the system (glibc's ``malloc_trim``).

    Preparing data, compiling the training step and tracing free much memory
    in small pieces that the allocator keeps; returning them before the
    next large allocation lowers a run's resident peak. A no-op where the C
    library has no ``malloc_trim``.
    """
    import ctypes
    import ctypes.util
    import gc

    gc.collect()  # cycles left by tracing hold memory too
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass
