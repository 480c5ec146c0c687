"""Memory a command will need, estimated from sizes before anything is allocated.

A run whose networks, batches, evaluation or samples cannot fit in memory is
refused when it starts, with the estimate and the memory there is, rather
than failing with TensorFlow's ``ResourceExhaustedError`` after minutes of
work (or after training, in the final evaluation). The estimates count only
what the sizes alone make certain (dense weights, the largest activations,
the decoder outputs of an importance-sampling chunk), so they are lower
bounds: a refusal means the work cannot fit in the share of memory tfvae
plans for (:data:`MEMORY_SHARE`), never that it might not.

Only the standard library is imported: :class:`tfvae.config.Config` calls
:func:`check_config` while it validates, before TensorFlow loads.

Example:
  >>> from tfvae import budget
  >>> budget.observation_params("logistic", "decoder", 5)
  15
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from itertools import pairwise

from tfvae import options
from tfvae.errors import ConfigError

GIB = 1 << 30
#: Share of the physical memory a command may plan to use: the rest is the system's,
#: TensorFlow's own and what the estimates leave out.
MEMORY_SHARE = 0.75
#: Bytes of one float32 value.
FLOAT = 4
#: TensorFlow indexes some tensors with 32-bit integers: no tensor may hold more values.
MAX_TENSOR_VALUES = 2**31 - 1
#: Weights, gradients and Adam's two moments: the copies of every weight training keeps.
TRAINING_COPIES = 4
#: Decoder outputs per IWAE chunk below which :func:`tfvae.evaluate` batches examples
#: (its ``max_elements`` default).
IWAE_CHUNK_VALUES = 1 << 23
#: A decoded image is held as uint8 and, while it is resized, as float32 (one plus four bytes).
DECODE_BYTES_PER_VALUE = 5
#: Share of the memory that images being decoded at once may take.
DECODE_SHARE = 0.5


def total_memory() -> int:
    """Physical memory in bytes (0 when the system does not say)."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 0


def gib(nbytes: float) -> str:
    """``nbytes`` in GiB, as a short figure for messages."""
    value = nbytes / GIB
    if value >= 1e6:
        return f"{value:.3g} GiB"
    if value >= 100:
        return f"{value:,.0f} GiB"
    return f"{value:.2g} GiB" if value < 1 else f"{value:.1f} GiB"


def _refuse(cause: str, nbytes: float, what: str, detail: str = "",
            advice: str = "use smaller sizes") -> None:
    """Raises ConfigError when ``nbytes`` cannot fit in memory."""
    total = total_memory()
    if total and nbytes > total * MEMORY_SHARE:
        raise ConfigError(f"{cause} needs about {gib(nbytes)} {what}{detail}; the system "
                          f"has {gib(total)} of memory (tfvae plans for at most "
                          f"{gib(total * MEMORY_SHARE)}): {advice}")


def observation_params(likelihood, obs_scale="decoder", obs_components: int = 1) -> int:
    """Values the decoder outputs per data value (the observation head's ``params_size``).

    ``None`` (a likelihood the data will choose) counts the fewest, one.
    """
    if likelihood == "gaussian":
        return 2 if obs_scale == "decoder" else 1
    if likelihood == "logistic":
        return 2 if int(obs_components) == 1 else 3 * int(obs_components)
    return 1


def _workspace(likelihood, params: int) -> int:
    """Values alive per data value and sample while a decoder's output is scored."""
    # A logistic mixture evaluates two CDFs and a log-sum per component.
    return (3 * params if likelihood == "logistic" else params) + 2


@dataclass(frozen=True)
class Sizes:
    """The sizes that fix a run's memory, from its configuration.

    Attributes:
      input_dim: values per example (the fewest possible before the data are read).
      input_name: how ``input_dim`` is known, for messages.
      hidden, decoder_hidden: hidden layer sizes.
      decoder_flag: the option the decoder's sizes come from, for messages.
      latent_dim: latent units per layer.
      code_params: encoder outputs per latent unit (2 for a Gaussian code).
      output_params: decoder outputs per data value.
      output_name: what sets them, for messages.
      likelihood: the observation model (None: chosen from the data).
      upper_layers: stochastic layers above the first (sigmoid belief networks).
      pixels: height times width (the conv networks' dense layers are at least this wide).
      conv: whether the networks are convolutional.
    """

    input_dim: int
    input_name: str
    hidden: tuple
    decoder_hidden: tuple
    decoder_flag: str
    latent_dim: int
    code_params: int
    output_params: int
    output_name: str
    likelihood: str | None
    upper_layers: int
    pixels: int
    conv: bool

    @classmethod
    def of(cls, config) -> Sizes:
        """The sizes of a :class:`tfvae.Config` (data fields set or not)."""
        shape = config.image_shape
        if config.input_dim is not None:
            dim, name = int(config.input_dim), f"{int(config.input_dim):,} values per example"
        elif shape is not None:
            dim, name = math.prod(shape), f"--image-shape {','.join(map(str, shape))}"
        elif config.image_size is not None:
            dim = math.prod(config.image_size)
            name = f"--image-size {','.join(map(str, config.image_size))}"
        else:
            dim, name = 1, "the input"
        pixels = math.prod(shape[:2]) if shape is not None else \
            math.prod(config.image_size) if config.image_size is not None else dim
        mirrored = config.decoder_hidden is None
        decoder = tuple(reversed(config.hidden)) if mirrored else tuple(config.decoder_hidden)
        params = observation_params(config.likelihood, config.obs_scale, config.obs_components)
        output = f"{dim:,} values x {params} outputs"
        if config.obs_components > 1 and config.likelihood in (None, "logistic"):
            output = f"--obs-components {config.obs_components}"
        return cls(dim, name, tuple(config.hidden), decoder,
                   "--hidden" if mirrored else "--decoder-hidden", int(config.latent_dim),
                   2 if config.model == "gaussian" else 1, params, output, config.likelihood,
                   int(config.stochastic_layers) - 1 if config.model == "sbn" else 0,
                   min(pixels, dim), config.arch == "conv")

    def layers(self) -> list[tuple[str, int, str, int]]:
        """Every dense layer certain to exist: ``(from, size, to, size)``."""
        latent = f"--latent-dim {self.latent_dim}"
        first = (self.input_name, self.pixels if self.conv else self.input_dim)
        last = (self.output_name,
                self.pixels if self.conv else self.input_dim * self.output_params)
        chains = [
            [first] + [(f"--hidden {h}", h) for h in self.hidden]
            + [(latent, self.latent_dim * self.code_params)],
            [(latent, self.latent_dim)]
            + [(f"{self.decoder_flag} {h}", h) for h in self.decoder_hidden] + [last],
        ]
        for flag, sizes in (("--hidden", self.hidden), (self.decoder_flag, self.decoder_hidden)):
            # the upper layers' networks
            chain = [(latent, self.latent_dim)] + [(f"{flag} {h}", h) for h in sizes] \
                + [(latent, self.latent_dim)]
            chains += [chain] * self.upper_layers
        return [(a, m, b, n) for chain in chains for (a, m), (b, n) in pairwise(chain)]

    def weights(self) -> int:
        """Dense weights and biases."""
        return sum(m * n + n for _, m, _, n in self.layers())

    def widths(self) -> int:
        """Values one example leaves in the networks' layers (the decoder's output aside)."""
        hidden = sum(self.hidden) + sum(self.decoder_hidden)
        conv = 8 * self.pixels if self.conv else 0  # the first convolution's 32 filters at 1/4
        return self.input_dim + (hidden + 3 * self.latent_dim + conv) * (1 + self.upper_layers)


def check_config(config) -> None:
    """Refuses sizes whose networks cannot hold their weights in memory (ConfigError).

    Called by :class:`tfvae.Config`'s validation: it needs no data (the input
    size is the data's when known, else ``--image-shape``/``--image-size``,
    else one value).
    """
    sizes = Sizes.of(config)
    a, m, b, n = max(sizes.layers(), key=lambda layer: layer[1] * layer[3])
    count = sizes.weights()
    advice = "use smaller sizes" if not {a, b} & {sizes.input_name, sizes.output_name} else \
        ("use smaller sizes; the images of a --data-dir folder take the first one's size "
         "unless --image-size H,W is given")
    _refuse(_blame(a, b), count * FLOAT, "for the weights alone",
            f" ({count:.3g} weights; the largest layer joins {a} and {b})", advice)
    if m * n > MAX_TENSOR_VALUES:
        raise ConfigError(
            f"{_blame(a, b)}: the layer from {a} to {b} would hold {m * n:.3g} weights, more "
            f"than one TensorFlow tensor can ({MAX_TENSOR_VALUES:,}); use smaller sizes")


def _blame(a: str, b: str) -> str:
    """What sets a layer's two ends, for messages."""
    return " with ".join(dict.fromkeys(s for s in (a, b) if s != "the input"))


def samples_per_example(config) -> int:
    """Decoder passes per example in a training step (several for multi-sample estimators)."""
    if config.model not in ("bernoulli", "sbn"):
        return 1
    spec = options.ESTIMATORS[config.estimator]
    return int(config.num_samples) if spec.min_samples > 1 else spec.decoder_passes


def check_feasible(config, splits=None) -> None:
    """Refuses a training run that cannot finish: memory, tensor sizes, mixture size.

    Call it once the data are read (``config.input_dim`` and ``likelihood``
    set), before the model is built: it checks a training step (weights,
    gradients, Adam's moments, a batch's activations), the k-sample
    evaluations (``iwae_k``, ``eval_k``) and, for ``ae-gmm``, the mixture's
    components against the training codes it is fitted to.

    Args:
      config: the run's :class:`tfvae.Config`.
      splits: its prepared data (for the number of training examples), or None.

    Raises:
      ConfigError: naming the option, the estimate and the memory there is.
    """
    check_config(config)
    sizes = Sizes.of(config)
    weights = sizes.weights() * FLOAT
    per_sample = sizes.widths() + sizes.input_dim * _workspace(sizes.likelihood,
                                                               sizes.output_params)
    rows = int(config.batch_size) * samples_per_example(config)
    _tensor(rows * sizes.input_dim * sizes.output_params,
            f"--batch-size {config.batch_size} x {samples_per_example(config)} samples")
    activations = rows * per_sample * FLOAT  # what the backward pass keeps, at the least
    _refuse(f"--batch-size {config.batch_size} with {sizes.input_name}",
            weights * TRAINING_COPIES + activations, "to train",
            f" (weights, gradients and Adam's moments: {gib(weights * TRAINING_COPIES)}; a "
            f"batch's activations: {gib(activations)})")
    for flag in ("iwae_k", "eval_k"):
        k = int(getattr(config, flag))
        if k:
            check_iwae(k, sizes, weights, f"--{flag.replace('_', '-')} {k}")
    if config.model == "ae-gmm" and splits is not None and config.components != "auto":
        codes = len(splits.train)
        if int(config.components) > codes:
            raise ConfigError(
                f"--components {config.components} is more than the {codes:,} training "
                f"codes the mixture is fitted to; use at most {codes:,} (or 'auto')")


def check_iwae(k: int, sizes: Sizes, weights_bytes: int = 0, cause: str | None = None,
               chunk_values: int = IWAE_CHUNK_VALUES) -> None:
    """Refuses a k-sample evaluation whose chunk of one example cannot fit (ConfigError).

    :func:`tfvae.evaluate` scores ``max(1, chunk_values // (k * D))``
    examples at a time, so the smallest chunk is one example's ``k`` samples.
    """
    cause = cause or f"k={k}"
    rows = max(1, chunk_values // (k * sizes.input_dim))
    _tensor(rows * k * sizes.input_dim * sizes.output_params,
            f"{cause} with {sizes.input_name}")
    per_sample = sizes.input_dim * _workspace(sizes.likelihood, sizes.output_params) \
        + sum(sizes.decoder_hidden) + 3 * sizes.latent_dim
    _refuse(f"{cause} with {sizes.input_name}", weights_bytes + rows * k * per_sample * FLOAT,
            "to evaluate the k-sample bound", " (the decoder's outputs for k samples of "
            f"{'one example' if rows == 1 else f'{rows} examples'})")


def check_model_iwae(model, k: int, chunk_values: int = IWAE_CHUNK_VALUES) -> None:
    """:func:`check_iwae` for a built model (any object with the models' size attributes)."""
    likelihood = getattr(model, "likelihood", None)
    decoder = getattr(model, "decoder_sizes", ())
    dim = int(model.input_dim)
    params = observation_params(likelihood, getattr(model, "obs_scale", "decoder"),
                                getattr(model, "obs_components", 1))
    sizes = Sizes(dim, f"{dim:,} values per example", (), tuple(decoder), "--hidden",
                  int(getattr(model, "latent_dim", 1)), 1, params, "the output", likelihood, 0,
                  dim, False)
    check_iwae(int(k), sizes, chunk_values=chunk_values)


def _tensor(values: int, cause: str) -> None:
    if values > MAX_TENSOR_VALUES:
        raise ConfigError(f"{cause} makes a tensor of {values:.3g} values, more than "
                          f"TensorFlow indexes ({MAX_TENSOR_VALUES:,}); use smaller sizes")


def check_sample(n: int, noise_values: int, flag: str = "--n") -> None:
    """Refuses ``n`` samples whose noise (``n x noise_values`` float32) cannot fit in memory."""
    _refuse(f"{flag} {n:,}", n * noise_values * FLOAT, "for the sampler's noise alone",
            advice=f"use a smaller {flag}, or draw the samples in several calls with "
            "different seeds")


def decode_limit(parallel: int | None = None) -> int:
    """Values (height x width x channels) an image may decode to.

    ``tf.data`` decodes up to ``parallel`` images at once (default: the CPU
    count); together they may take :data:`DECODE_SHARE` of the memory.
    """
    total = total_memory()
    if not total:
        return MAX_TENSOR_VALUES
    parallel = parallel or os.cpu_count() or 1
    return min(MAX_TENSOR_VALUES,
               int(total * DECODE_SHARE) // (DECODE_BYTES_PER_VALUE * parallel))

