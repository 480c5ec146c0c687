"""Run configuration: one dataclass whose fields map one to one onto CLI options.

Each field carries its help text and, for a choice, the table of
:mod:`tfvae.options` it takes its values from; ``tfvae train``'s click
options are generated from these fields, so names, defaults and help exist
once. The configuration is written as ``config.json`` next to every
checkpoint and read back by :func:`tfvae.load_run`, so a run can always be
rebuilt from its directory without pickle. Validation happens here, at the
boundary where options enter, so the rest of the library can trust them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import operator
import os
from typing import Any

from tfvae import budget, options
from tfvae.errors import ConfigError
from tfvae.sizes import image_shape_3d, parse_shape, parse_sizes

# Config fields that describe the network (passed to every model constructor);
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
    "obs_scale",
    "obs_components",
    "levels",
    "activation",
    "center_input",
    "init",
    "head_init",
)

#: Fields a resumed run may change (``tfvae train --resume DIR --epochs N``).
RESUMABLE_FIELDS = ("epochs", "strategy")

#: Largest seed: stateless seeds are int32 pairs. Seeds derived from it
#: (``seed + 1000 * epoch`` for a resumed run's data order, below ``2**32`` as
#: numpy's legacy seeding needs) stay in range because epochs are bounded too.
MAX_SEED = 2**31 - 1
#: Most epochs a run may ask for.
MAX_EPOCHS = 1_000_000
#: Most importance samples per example (``--iwae-k``, ``--eval-k``, ``tfvae evaluate --k``)
#: and samples per example of a multi-sample estimator (``--num-samples``).
MAX_K = 100_000
#: Most mixture components: of the codes' mixture (``--components``), each fitted to codes
#: of its own, and of a logistic likelihood (``--obs-components``).
MAX_COMPONENTS = 1000
#: Most hidden layers per network, and most stochastic layers.
MAX_LAYERS = 100


def _option(default, help: str, *, choices=None, kind=None, flag=None, cli=True,
            show_default=True):
    """A dataclass field with what the CLI needs to offer it as an option.

    Args:
      default: the default value (the CLI shows it unless ``show_default`` is off).
      help: the option's help text.
      choices: a table of :mod:`tfvae.options` the value must be a key of.
      kind: ``"sizes"`` (comma-separated layer sizes), ``"shape"``, ``"path"``,
        ``"str"``, ``"int"``, ``"float"``, or None (the click type follows the
        default's Python type).
      flag: a click declaration such as ``"--learn-prior/--fixed-prior"``.
      cli: whether ``tfvae train`` offers it.
    """
    metadata = {"help": help, "choices": choices, "kind": kind, "flag": flag, "cli": cli,
                "show_default": show_default}
    return dataclasses.field(default=default, metadata=metadata)


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

    model: str = _option("gaussian", "Model family.", choices=options.MODELS)
    dataset: str | None = _option(
        None, "mnist-10k (embedded, the default), digits (scikit-learn), or a "
        "tensorflow-datasets name (mnist, fashion_mnist, binarized_mnist, kmnist...).",
        show_default=False)
    data_dir: str | None = _option(
        None, "A directory of MNIST-format IDX .gz files, one .npz or .npy file, or a "
        "folder of PNG/JPEG images (sub-folders as labels).",
        kind="path")
    tfds_data_dir: str | None = _option(
        None, "tensorflow-datasets data directory holding prepared data sets.", kind="path")
    binarize: str | None = _option(
        None, "Binarization [default: dynamic for a Bernoulli likelihood, none for a "
        "Gaussian one].", choices=options.BINARIZE)
    likelihood: str | None = _option(
        None, "Observation model [default: bernoulli for pixels, gaussian for real-valued "
        "data such as digits].", choices=options.LIKELIHOODS)
    arch: str = _option("mlp", "Encoder and decoder architecture.", choices=options.ARCHS)
    epochs: int = _option(20, "Training epochs.")
    latent_dim: int = _option(20, "Size of the latent code.")
    hidden: tuple[int, ...] = _option((400,), "Encoder hidden sizes, e.g. 400 or 512,256.",
                                      kind="sizes")
    activation: str = _option("relu", "Nonlinearity of the hidden dense layers.",
                              choices=options.ACTIVATIONS)
    init: str | None = _option(
        None, "How the hidden layers' weights start [default: fan-in for a Gaussian likelihood "
        "with --obs-scale shared, glorot otherwise].", choices=options.INITS, show_default=False)
    head_init: str | None = _option(
        None, "How the layers giving the distributions' parameters start [default: --init].",
        choices=options.INITS)
    decoder_hidden: tuple[int, ...] | None = _option(
        None, "Decoder hidden sizes [default: the encoder's, mirrored]; '' for linear.",
        kind="sizes")
    kl_warmup: int = _option(0, "Epochs of linear KL warm-up (0: none).")
    batch_size: int = _option(128, "Examples per training step (the global batch).")
    lr: float = _option(1e-3, "Adam learning rate.")
    seed: int = _option(0, "Seed of initialisation, data order and training noise.")
    val_fraction: float = _option(
        0.05, "Share of the training split held out to pick the best checkpoint.")
    val_size: int | None = _option(
        None, "Number of training examples held out instead of --val-fraction (e.g. 10000).",
        kind="int")
    val_order: str = _option("random", "Which training examples are held out.",
                             choices=options.VAL_ORDERS)
    center_input: bool = _option(
        False, "Subtract the training mean from the encoder's input (a saved model weight); "
        "networks reading binary codes see 2z-1.",
        flag="--center-input")
    output_bias_from_data: bool = _option(
        False, "Start the decoder's output bias at the training mean (the logit of it for "
        "Bernoulli pixels; Gaussian and logistic scales also at the data's spread per pixel; "
        "mlp decoders).", flag="--output-bias-from-data")
    eval_k: int = _option(
        0, "Also log the k-sample bound on the validation and test splits during training "
        "(0: off; e.g. 100).")
    eval_every: int = _option(1, "Epochs between those evaluations (with --eval-k).")
    min_scale: float = _option(
        1e-3, "Floor of the Gaussian likelihood's scale (and of the logistic's, in [0, 1] units).")
    obs_scale: str = _option("decoder", "Scale of a Gaussian likelihood.",
                             choices=options.OBS_SCALES)
    obs_components: int = _option(
        1, "Logistic components per pixel and channel (logistic likelihood).")
    iwae_k: int = _option(100, "Importance samples for the test log-likelihood after training.")
    deterministic: bool = _option(
        False, "Turn on TensorFlow op determinism: same seed, same figures exactly "
        "(may be slower).", flag="--deterministic")
    precision: str | None = _option(
        None, "Precision the networks compute in: float32, or bfloat16 or float16 as Keras' "
        "mixed precision (variables, distributions and the loss stay float32) [default: "
        "Keras' global policy, float32 unless set].", choices=options.PRECISIONS,
        show_default=False)
    strategy: str = _option(
        "default", "tf.distribute strategy: one device, every local GPU (mirrored), or "
        "several machines described by TF_CONFIG (multiworker); --batch-size is the global "
        "batch, split across replicas.", choices=options.STRATEGIES)
    # Bernoulli-latent VAE.
    estimator: str = _option("ema", "Gradient estimator (bernoulli and sbn models).",
                             choices=options.ESTIMATORS)
    baseline_decay: float = _option(
        0.9, "Moving-average baseline decay (bernoulli and sbn models, ema and nvil).")
    num_samples: int = _option(
        4, "Samples per example for rloo / vimco (bernoulli and sbn models).")
    temperature: float = _option(
        0.5, "Concrete relaxation temperature of gumbel / straight-through (bernoulli and sbn "
        "models); lower: less bias, more variance.")
    learn_prior: bool = _option(False, "Learned prior logits (bernoulli and sbn models).",
                                flag="--learn-prior/--fixed-prior")
    stochastic_layers: int = _option(2, "Layers of --latent-dim binary units (sbn model).")
    inference: str = _option(
        "amortized", "How posteriors are fitted (mean-field: sbn model, linear layers, Bernoulli "
        "pixels).", choices=options.INFERENCE)
    mean_field_steps: int = _option(
        5, "Updates of a batch's mean-field parameters before each weight step "
        "(--inference mean-field).")
    mean_field_eval_steps: int = _option(
        50, "Updates of the mean-field parameters fitted to validation and test examples "
        "(--inference mean-field).")
    prior_lr: float | None = _option(
        None, "Train the learned prior logits with plain SGD at this learning rate (e.g. 0.01) "
        "[default: with the model's Adam].", kind="float")
    # Autoencoder + Gaussian mixture.
    components: int | str = _option(
        10, "Mixture components, or 'auto' to choose by BIC (ae-gmm model).", kind="str")
    covariance: str = _option("full", "Mixture covariance type (ae-gmm model).",
                              choices=options.COVARIANCES)
    image_size: tuple[int, ...] | None = _option(
        None, "Height,width to resize (centre-crop) the images of a --data-dir folder to "
        "[default: the first image's size].", kind="shape")
    image_shape: tuple[int, ...] | None = _option(
        None, "Height,width,channels of flat (N, D) rows [default: from the data].", kind="shape")
    bad_images: str = _option(
        "refuse", "What to do with images of a --data-dir folder that cannot be read or "
        "decoded (checked before training).", choices=options.BAD_IMAGES)
    # Filled in from the data when the run starts.
    input_dim: int | None = _option(None, "Values per example (from the data).", cli=False)
    levels: int | None = _option(
        None, "Values per pixel and channel of discrete data (from the data).", cli=False)
    train_examples: int | None = _option(None, "Training examples (from the data).", cli=False)

    def __post_init__(self):
        for name in ("data_dir", "tfds_data_dir"):  # a pathlib.Path is recorded as text
            if isinstance(getattr(self, name), os.PathLike):
                setattr(self, name, os.fspath(getattr(self, name)))
        self.hidden = parse_sizes(self.hidden, "hidden")
        if self.decoder_hidden is not None:
            self.decoder_hidden = parse_sizes(self.decoder_hidden, "decoder_hidden")
        if self.image_shape is not None:
            self.image_shape = image_shape_3d(parse_shape(self.image_shape, "image_shape"))
        if self.image_size is not None:
            self.image_size = parse_shape(self.image_size, "image_size")
            if len(self.image_size) != 2:
                raise ConfigError(f"--image-size must be height,width, got {self.image_size}")
        self.validate()

    def validate(self) -> None:
        """Raises ConfigError naming the first invalid field and what to use instead."""
        for f in dataclasses.fields(self):
            table = f.metadata.get("choices")
            value = getattr(self, f.name)
            if table is not None and value is not None and value not in table:
                raise ConfigError(
                    f"unknown {f.name} {value!r}; choose one of: {', '.join(table)}"
                )
        if self.dataset is not None and self.data_dir is not None:
            raise ConfigError("give either --dataset or --data-dir, not both")
        for name in ("epochs", "latent_dim", "batch_size", "iwae_k", "num_samples",
                     "obs_components", "eval_every", "stochastic_layers"):
            _positive_int(name, getattr(self, name))
        if self.val_size is not None:
            _positive_int("val_size", self.val_size)
        if isinstance(self.eval_k, bool) or not isinstance(self.eval_k, int) or self.eval_k < 0:
            raise ConfigError(f"--eval-k must be an integer >= 0, got {self.eval_k!r}")
        self._check_upper_bounds()
        if self.prior_lr is not None and not (_finite(self.prior_lr) and self.prior_lr > 0):
            raise ConfigError(f"--prior-lr must be a positive number, got {self.prior_lr!r}")
        if isinstance(self.kl_warmup, bool) or not isinstance(self.kl_warmup, int) \
                or self.kl_warmup < 0:
            raise ConfigError(
                f"--kl-warmup must be an integer >= 0 (epochs), got {self.kl_warmup!r}"
            )
        self.seed = check_seed(self.seed)
        if not (_finite(self.lr) and self.lr > 0):
            raise ConfigError(f"--lr must be a positive number, got {self.lr!r}")
        if not (_finite(self.val_fraction) and 0.0 <= self.val_fraction < 1.0):
            raise ConfigError(
                f"--val-fraction must be in [0, 1), got {self.val_fraction!r}; use 0 for none"
            )
        if not (_finite(self.min_scale) and self.min_scale > 0):
            raise ConfigError(f"--min-scale must be a positive number, got {self.min_scale!r}")
        if self.output_bias_from_data and self.arch == "conv":
            raise ConfigError("--output-bias-from-data sets a dense output layer's bias, and the "
                              "conv decoder ends in a transposed convolution: use --arch mlp, "
                              "or leave out --output-bias-from-data")
        if not (_finite(self.baseline_decay) and 0.0 <= self.baseline_decay < 1.0):
            raise ConfigError(f"--baseline-decay must be in [0, 1), got {self.baseline_decay!r}")
        if not (_finite(self.temperature) and self.temperature > 0):
            raise ConfigError(f"--temperature must be a positive number (e.g. 0.5), "
                              f"got {self.temperature!r}")
        needed = options.ESTIMATORS[self.estimator].min_samples
        if self.num_samples < needed:
            raise ConfigError(
                f"--estimator {self.estimator} needs --num-samples >= {needed}, "
                f"got {self.num_samples}"
            )
        self.components = parse_components(self.components)
        check_inference(self)
        if self.tfds_data_dir is not None:
            check_text_path(self.tfds_data_dir, "--tfds-data-dir")
        budget.check_config(self)

    def _check_upper_bounds(self) -> None:
        """Sizes past which no run finishes, whatever the memory (ConfigError)."""
        for name, most, why in (
            ("epochs", MAX_EPOCHS, "epochs"),
            ("iwae_k", MAX_K, "importance samples per example"),
            ("eval_k", MAX_K, "importance samples per example"),
            ("num_samples", MAX_K, "samples per example"),
            ("obs_components", MAX_COMPONENTS, "mixture components"),
            ("stochastic_layers", MAX_LAYERS, "stochastic layers"),
        ):
            value = getattr(self, name)
            if value > most:
                raise ConfigError(f"--{name.replace('_', '-')} {value} is more than tfvae "
                                  f"supports ({most:,} {why}); use a smaller value")
        for name in ("hidden", "decoder_hidden"):
            sizes = getattr(self, name) or ()
            if len(sizes) > MAX_LAYERS:
                raise ConfigError(f"--{name.replace('_', '-')} gives {len(sizes)} layers, more "
                                  f"than tfvae supports ({MAX_LAYERS})")

    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments every model constructor takes (data fields must be set)."""
        if self.input_dim is None or self.image_shape is None:
            raise ConfigError("input_dim and image_shape are filled in from the data first")
        kwargs = {name: getattr(self, name) for name in MODEL_FIELDS}
        kwargs["levels"] = kwargs["levels"] or 256
        return kwargs

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
        try:
            return cls(**data)
        except TypeError as exc:  # e.g. a list where a number belongs
            raise ConfigError(f"invalid configuration: {exc}") from None

    @classmethod
    def from_json(cls, text: str) -> Config:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"configuration is not valid JSON: {exc}") from None
        return cls.from_dict(data)


#: Most mean-field updates per batch (``--mean-field-steps``, ``--mean-field-eval-steps``).
MAX_MEAN_FIELD_STEPS = 100_000


def check_inference(config) -> None:
    """Refuses ``--inference mean-field`` where its closed-form bound does not apply.

    Called by validation and again once the data have set the likelihood.
    """
    for name in ("mean_field_steps", "mean_field_eval_steps"):
        _positive_int(name, getattr(config, name))
        if getattr(config, name) > MAX_MEAN_FIELD_STEPS:
            raise ConfigError(f"--{name.replace('_', '-')} {getattr(config, name)} is more than "
                              f"tfvae supports ({MAX_MEAN_FIELD_STEPS:,}); use fewer")
    if config.train_examples is not None:
        _positive_int("train_examples", config.train_examples)
    if config.inference == "amortized":
        return
    flag = f"--inference {config.inference}"
    if config.model != "sbn":
        raise ConfigError(f"{flag} trains sigmoid belief networks: use it with --model sbn, or "
                          "leave out --inference")
    if config.hidden or config.decoder_hidden or config.arch != "mlp":
        raise ConfigError(f"{flag} needs linear layers (its bound is closed form for linear "
                          "conditionals) and has no encoder: pass --hidden '' (no "
                          "--decoder-hidden, --arch mlp), or use --inference amortized")
    if config.likelihood not in (None, "bernoulli"):
        raise ConfigError(f"{flag} needs Bernoulli pixels, not --likelihood {config.likelihood}: "
                          "binary or binarized data with --likelihood bernoulli")
    if config.strategy != "default":
        raise ConfigError(f"{flag} trains on one device: leave out --strategy")
    if config.precision not in (None, "float32"):
        raise ConfigError(f"{flag} fits its posteriors and weights in float32: leave out "
                          f"--precision {config.precision} (and keep Keras' global policy float32)")


def parse_components(value) -> int | str:
    """``"auto"`` or a positive int, from an int or its text (``--components``)."""
    if value == "auto":
        return "auto"
    try:
        number = int(value)
        if isinstance(value, bool) or (isinstance(value, float) and number != value):
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigError(
            f"--components must be a positive integer or 'auto', got {value!r}"
        ) from None
    _positive_int("components", number)
    if number > MAX_COMPONENTS:
        raise ConfigError(f"--components {number} is more than tfvae fits ({MAX_COMPONENTS:,}); "
                          "use fewer, or 'auto' to choose by BIC")
    return number


def check_seed(seed, flag: str = "--seed") -> int:
    """``seed`` as an int if it is an integer in ``[0, MAX_SEED]``; ConfigError otherwise."""
    try:
        value = None if isinstance(seed, bool) else operator.index(seed)
    except TypeError:
        value = None
    if value is None or not 0 <= value <= MAX_SEED:
        raise ConfigError(f"{flag} must be an integer from 0 to {MAX_SEED}, got {seed!r}")
    return value


def check_text_path(path, flag: str) -> str:
    """``path`` as text if its name is valid UTF-8 (TensorFlow takes paths as text).

    Raises:
      ConfigError: naming the option and the path, its undecodable bytes escaped.
    """
    raw = os.fsencode(path)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        shown = raw.decode("utf-8", "backslashreplace")
        raise ConfigError(f"{flag} {shown}: the name is not valid UTF-8, and TensorFlow takes "
                          "file names as UTF-8 text; rename it or choose another path") from None


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(
            f"--{name.replace('_', '-')} must be a positive integer, got {value!r}"
        )


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
