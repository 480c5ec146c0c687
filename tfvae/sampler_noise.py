"""Sampler noise: the noise a sampler takes, drawn the same way by every backend.

A sampler's noise is the input of generation: the ``eps`` (normal) and ``u``
(uniform) inputs from which a model makes codes and then images. It is not
the noise of training data: binarization noise (:mod:`tfvae.fused_blocks`,
the bits of dynamic binarization) and dequantization noise (the uniform added
to discrete pixels, :mod:`tfvae.data.modes`) live with the data.

Each model family turns noise into codes with TensorFlow ops that are also
exported (see :meth:`tfvae.models.base.LatentVariableModel.codes_from_noise`);
the noise itself is drawn here with numpy, so ``model.sample(n, seed)``,
the SavedModel and the LiteRT sampler give the same images for the same
seed. Only numpy is imported.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tfvae.errors import ConfigError

#: Distributions a noise input can have.
DISTRIBUTIONS = ("normal", "uniform")


@dataclasses.dataclass(frozen=True)
class Noise:
    """One noise input of a sampler: its name, per-sample shape and distribution.

    Attributes:
      name: input name in the exported ``sample`` signature (``eps``, ``u``).
      shape: per-sample shape (``(latent,)``, or ``()`` for one value per sample).
      distribution: ``"normal"`` (N(0, 1)) or ``"uniform"`` ([0, 1)).
    """

    name: str
    shape: tuple[int, ...]
    distribution: str

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "distribution": self.distribution}

    @classmethod
    def from_dict(cls, data: dict) -> Noise:
        return cls(str(data["name"]), tuple(int(s) for s in data["shape"]),
                   str(data["distribution"]))


def positive_count(n, name: str = "n") -> int:
    """``n`` as an int if it is a positive integer; ConfigError otherwise."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {n!r}")
    return int(n)


def draw(inputs, n: int, seed: int | None = 0) -> dict[str, np.ndarray]:
    """Draws every noise input, as float32 arrays ``[n, *shape]``.

    The inputs are drawn in order from one ``numpy.random.default_rng(seed)``:
    the same seed gives the same noise.

    Args:
      inputs: a sequence of :class:`Noise`.
      n: number of samples.
      seed: seed of ``numpy.random.default_rng``.
    """
    n = positive_count(n)
    rng = np.random.default_rng(seed)
    draws = {"normal": rng.standard_normal, "uniform": rng.random}
    return {spec.name: draws[spec.distribution]((n, *spec.shape)).astype(np.float32)
            for spec in inputs}
