"""Run configuration: one dataclass whose fields map one to one onto CLI options.

The configuration is written as ``config.json`` next to every checkpoint and
read back by :func:`tfvae.load_run`, so a run can always be rebuilt from its
directory without pickle. Validation happens here, at the boundary where
options enter, so the rest of the library can trust them.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from tfvae.errors import ConfigError

MODELS = ("gaussian", "bernoulli", "ae-gmm")
LIKELIHOODS = ("bernoulli", "gaussian")
ARCHS = ("mlp", "conv")
BINARIZE = ("none", "static", "dynamic", "threshold")
ESTIMATORS = ("reinforce", "ema", "nvil", "rloo", "disarm", "vimco")
COVARIANCES = ("full", "tied", "diag", "spherical")
# Keys of tfvae.distribute.STRATEGIES.
STRATEGIES = ("default", "mirrored", "multiworker")

# Config fields that describe the network (passed to the model constructor);
# the others describe data and optimisation.
MODEL_FIELDS = (
    "input_dim",
    "image_shape",
    "latent_dim",
    "hidden",
    "decoder_hidden",
    "likelihood",
    "arch",
    "min_scale",
)


def parse_sizes(value: Any, name: str = "hidden", allow_empty: bool = True) -> tuple[int, ...]:
    """Parses layer sizes given as ``"512,256"``, ``400``, ``[512, 256]`` or ``""``.

    Args:
      value: the sizes, as a comma-separated string, an int or a sequence.
      name: the option name, used in error messages.
      allow_empty: whether no hidden layer at all (a linear map) is allowed.

    Returns:
      A tuple of positive ints.
    """
    if value is None:
        return ()
    if isinstance(value, str):
        text = value.strip()
        if text in ("", "none", "()"):
            parts = []
        else:
            try:
                parts = [int(p) for p in text.split(",") if p.strip() != ""]
            except ValueError:
                raise ConfigError(
                    f"--{name.replace('_', '-')} must be comma-separated positive integers "
                    f"such as 400 or 512,256; got {value!r}"
                ) from None
    elif isinstance(value, int) and not isinstance(value, bool):
        parts = [value]
    else:
        try:
            parts = [int(p) for p in value]
        except (TypeError, ValueError):
            raise ConfigError(
                f"{name} must be a sequence of positive integers, got {value!r}"
            ) from None
    if any(p <= 0 for p in parts):
        raise ConfigError(
            f"--{name.replace('_', '-')} sizes must be positive integers, got {value!r}"
        )
    if not parts and not allow_empty:
        raise ConfigError(f"--{name.replace('_', '-')} needs at least one layer size")
    return tuple(parts)


@dataclasses.dataclass
class Config:
    """Everything that defines a training run.

    Attributes mirror the ``tfvae train`` options (``latent_dim`` is
    ``--latent-dim`` and so on). ``None`` means "choose from the data":
    ``likelihood`` becomes ``bernoulli`` for pixel data and ``gaussian`` for
    real-valued data such as ``digits``; ``binarize`` becomes ``dynamic`` for a
    Bernoulli likelihood and ``none`` for a Gaussian one.

    Example:
      >>> cfg = Config(latent_dim=2, epochs=5)
      >>> Config.from_json(cfg.to_json()) == cfg
      True
    """

    model: str = "gaussian"
    dataset: str | None = None
    data_dir: str | None = None
    tfds_data_dir: str | None = None
    binarize: str | None = None
    likelihood: str | None = None
    arch: str = "mlp"
    epochs: int = 20
    latent_dim: int = 20
    hidden: tuple[int, ...] = (400,)
    decoder_hidden: tuple[int, ...] | None = None
    kl_warmup: int = 0
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    val_fraction: float = 0.05
    min_scale: float = 1e-3
    iwae_k: int = 100
    deterministic: bool = False
    # tf.distribute strategy: "default" (one device), "mirrored", "multiworker".
    strategy: str = "default"
    # Bernoulli-latent VAE.
    estimator: str = "ema"
    baseline_decay: float = 0.9
    num_samples: int = 4
    learn_prior: bool = False
    # Autoencoder + Gaussian mixture.
    components: int | str = 10
    covariance: str = "full"
    # Filled in from the data when the run starts.
    input_dim: int | None = None
    image_shape: tuple[int, ...] | None = None

    def __post_init__(self):
        self.hidden = parse_sizes(self.hidden, "hidden")
        if self.decoder_hidden is not None:
            self.decoder_hidden = parse_sizes(self.decoder_hidden, "decoder_hidden")
        if self.image_shape is not None:
            self.image_shape = tuple(int(s) for s in self.image_shape)
        self.validate()

    def validate(self) -> None:
        """Raises ConfigError naming the first invalid field and what to use instead."""
        _choice("model", self.model, MODELS)
        _choice("arch", self.arch, ARCHS)
        _choice("strategy", self.strategy, STRATEGIES)
        _choice("estimator", self.estimator, ESTIMATORS)
        _choice("covariance", self.covariance, COVARIANCES)
        if self.likelihood is not None:
            _choice("likelihood", self.likelihood, LIKELIHOODS)
        if self.binarize is not None:
            _choice("binarize", self.binarize, BINARIZE)
        if self.dataset is not None and self.data_dir is not None:
            raise ConfigError("give either --dataset or --data-dir, not both")
        for name in ("epochs", "latent_dim", "batch_size", "iwae_k", "num_samples"):
            _positive_int(name, getattr(self, name))
        if not isinstance(self.kl_warmup, int) or self.kl_warmup < 0:
            raise ConfigError(
                f"--kl-warmup must be an integer >= 0 (epochs), got {self.kl_warmup!r}"
            )
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"--seed must be an integer >= 0, got {self.seed!r}")
        if not (_finite(self.lr) and self.lr > 0):
            raise ConfigError(f"--lr must be a positive number, got {self.lr!r}")
        if not (_finite(self.val_fraction) and 0.0 <= self.val_fraction < 1.0):
            raise ConfigError(
                f"--val-fraction must be in [0, 1), got {self.val_fraction!r}; use 0 for none"
            )
        if not (_finite(self.min_scale) and self.min_scale > 0):
            raise ConfigError(f"--min-scale must be a positive number, got {self.min_scale!r}")
        if not (_finite(self.baseline_decay) and 0.0 <= self.baseline_decay < 1.0):
            raise ConfigError(f"--baseline-decay must be in [0, 1), got {self.baseline_decay!r}")
        if self.estimator in ("rloo", "vimco") and self.num_samples < 2:
            raise ConfigError(
                f"--estimator {self.estimator} needs --num-samples >= 2, got {self.num_samples}"
            )
        if self.components != "auto":
            try:
                self.components = int(self.components)
            except (TypeError, ValueError):
                raise ConfigError(
                    f"--components must be a positive integer or 'auto', got {self.components!r}"
                ) from None
            _positive_int("components", self.components)

    @property
    def decoder_sizes(self) -> tuple[int, ...]:
        """Decoder hidden sizes: given ones, or the encoder's mirrored."""
        if self.decoder_hidden is not None:
            return tuple(self.decoder_hidden)
        return tuple(reversed(self.hidden))

    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the model constructor (data fields must be set)."""
        if self.input_dim is None or self.image_shape is None:
            raise ConfigError("input_dim and image_shape are filled in from the data first")
        return {name: getattr(self, name) for name in MODEL_FIELDS}

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        if not isinstance(data, dict):
            raise ConfigError(f"a configuration must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"unknown configuration fields {unknown}; this tfvae knows {sorted(known)}"
            )
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> Config:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"configuration is not valid JSON: {exc}") from None
        return cls.from_dict(data)


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(
            f"unknown {name} {value!r}; choose one of: {', '.join(allowed)}"
        )


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(
            f"--{name.replace('_', '-')} must be a positive integer, got {value!r}"
        )


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
