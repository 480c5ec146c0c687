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
import math

import numpy as np

from tfvae import budget
from tfvae.config import check_seed
from tfvae.errors import ConfigError

#: Distributions a noise input can have.
DISTRIBUTIONS = ("normal", "uniform")
#: Values drawn per numpy call: the noise is written into float32 arrays a piece at a
#: time, never held whole in float64. Pieces drawn one after another from one
#: generator are the values one call would give, so the noise does not depend on it.
DRAW_PIECE = 1 << 20


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
      seed: seed of ``numpy.random.default_rng`` (0 to :data:`tfvae.config.MAX_SEED`),
        or None for fresh noise.

    Raises:
      ConfigError: ``n`` or ``seed`` is not valid, or the noise cannot fit in memory.
    """
    n = positive_count(n)
    if seed is not None:
        seed = check_seed(seed, "seed")
    inputs = tuple(inputs)
    budget.check_sample(n, sum(math.prod(spec.shape) for spec in inputs), "n")
    rng = np.random.default_rng(seed)
    draws = {"normal": rng.standard_normal, "uniform": rng.random}
    out = {}
    for spec in inputs:
        width = math.prod(spec.shape)
        values = np.empty((n, width), np.float32)
        rows = max(1, DRAW_PIECE // max(width, 1))
        for start in range(0, n, rows):
            stop = min(n, start + rows)
            values[start:stop] = draws[spec.distribution]((stop - start, width))
        out[spec.name] = values.reshape((n, *spec.shape))
    return out
