"""Export of trained models to SavedModel and LiteRT (TFLite) for deployment.

An export directory holds::

    manifest.json              what is inside: signatures, shapes, meaning, hashes
    saved_model/               one SavedModel with the signatures decode, sample, encode
    decoder.tflite             z -> image (float32); also decoder_float16, decoder_int8
    sampler.tflite             noise -> image; also sampler_float16, sampler_int8
    encoder.tflite             image -> posterior parameters (or the code)

Every graph is plain TensorFlow: the TFP distribution layers are replaced by
the deterministic map from their parameters to what a user wants (Bernoulli
logits -> probabilities, a Gaussian's mean as is, a Normal's pre-softplus
scale -> scale). Samplers take their noise as an input, so the graphs hold no
random op and convert to builtin LiteRT ops only:

- ``gaussian``: ``eps ~ N(0, I)`` is the code;
- ``bernoulli``: uniforms ``u`` give ``z = u < sigmoid(prior logits)``;
- ``ae-gmm``: a uniform ``u`` picks a mixture component by inverse CDF and
  ``eps ~ N(0, I)`` gives ``z = mu_k + L_k eps``.

:func:`draw_noise` draws that noise for a model or an export, and
:func:`sample_from_noise` applies the Keras model to it, so the same noise
gives the same images from Keras, the SavedModel and LiteRT.

The graphs are built from a ``tf.Module`` that owns copies of the weights as
tracked variables, and every converted file is checked: builtin ops only, a
size consistent with the weight count, and outputs close to the SavedModel's
(a SavedModel whose function captured a Keras model through a closure once
converted to a 2.8 KB file that silently returned 0.5 everywhere).

Example:
  >>> import tfvae.export
  >>> tfvae.export.export_run("runs/z20", "exported/z20")
  >>> noise = tfvae.export.draw_noise("exported/z20", n=16, seed=0)
  >>> images = tfvae.export.ExportDir("exported/z20").run("sample", noise)["image"]
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tfvae.errors import RunDirError, TfvaeError

FORMAT = "tfvae-export"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SAVED_MODEL = "saved_model"

SIGNATURES = ("decode", "sample", "encode")
# Signature -> stem of its .tflite files.
STEMS = {"decode": "decoder", "sample": "sampler", "encode": "encoder"}
PRECISIONS = ("float32", "float16", "int8")
FORMATS = ("savedmodel", "tflite")

# Max abs difference a converted file may show against the SavedModel on
# random inputs before export refuses it, relative to max(1, max |reference|).
# Loose on purpose: these catch broken files (lost weights, wrong graph), the
# tests state the tight tolerances.
EXPORT_CHECK_TOLERANCE = {"float32": 1e-3, "float16": 5e-2, "int8": 0.25}
# Bytes per weight of each precision: a file smaller than
# SIZE_SLACK * weights * bytes cannot hold its weights.
BYTES_PER_WEIGHT = {"float32": 4, "float16": 2, "int8": 1}
SIZE_SLACK = 0.8
# Builtin LiteRT ops that draw random numbers: samplers take noise as input instead.
RANDOM_OPS = frozenset({"RANDOM_UNIFORM", "RANDOM_STANDARD_NORMAL", "MULTINOMIAL"})


class ExportError(TfvaeError):
    """An export cannot be made or read as asked (non-builtin ops, lost weights, bad --out)."""


def tflite_name(signature: str, precision: str = "float32") -> str:
    """File name of one signature at one precision: ``decoder.tflite``, ``sampler_int8.tflite``."""
    suffix = "" if precision == "float32" else f"_{precision}"
    return f"{STEMS[signature]}{suffix}.tflite"


# ---------------------------------------------------------------- noise -> code


@dataclasses.dataclass(frozen=True)
class Noise:
    """One noise input of a sampler: its name, per-sample shape and distribution."""

    name: str
    shape: tuple[int, ...]
    distribution: str  # "normal" (N(0, 1)) or "uniform" ([0, 1))

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "distribution": self.distribution}


def _gaussian_codes(params, noise):
    return noise["eps"]  # [batch, latent]: the prior is N(0, I)


def _order_key(x):
    """Int32 keys ordered as the float32 values ``x >= 0`` (IEEE 754 bit patterns).

    Thresholds kept as these keys stay exact in a float16 file, which rounds
    float constants only: a rounded threshold would flip the choices of the
    uniforms that fall between the two values.
    """
    import tensorflow as tf

    return tf.bitcast(tf.convert_to_tensor(x, tf.float32), tf.int32)


def _bernoulli_codes(params, noise):
    # z_i = 1 with probability p_i: u < p_i, compared as int32 keys (see _order_key).
    import tensorflow as tf

    return tf.cast(_order_key(noise["u"]) < params["prior_keys"], tf.float32)  # [batch, latent]


def _gmm_codes(params, noise):
    # Inverse CDF over the cumulative weights picks k; z = mu_k + L_k eps.
    import tensorflow as tf

    u = _order_key(noise["u"])  # [batch]
    bounds = params["cum_keys"]  # [K-1]: the first K-1 cumulative weights, as int32 keys
    k = tf.reduce_sum(tf.cast(u[:, None] >= bounds[None, :], tf.int32), axis=1)  # [batch] in [0, K)
    mu = tf.gather(params["means"], k)  # [batch, d]
    chol = tf.gather(params["cholesky"], k)  # [batch, d, d]
    return mu + tf.squeeze(tf.matmul(chol, noise["eps"][:, :, None]), -1)  # [batch, d]


def _no_params(model) -> dict:
    return {}


def _bernoulli_params(model) -> dict:
    import tensorflow as tf

    logits = tf.convert_to_tensor(model.prior_logits(), tf.float32)
    probs = tf.math.sigmoid(logits).numpy().astype(np.float32)
    return {"prior_keys": probs.view(np.int32)}


def _gmm_params(model) -> dict:
    gmm = model.mixture  # a fitted tfvae.gmm.GMMSampler, or None
    if gmm is None or getattr(gmm, "weights", None) is None:
        raise ExportError(
            "the autoencoder's Gaussian mixture is not fitted; call model.post_fit(x_train) "
            "or export a run directory that has gmm.npz"
        )
    weights = np.asarray(gmm.weights, np.float64)
    cum = np.cumsum(weights / weights.sum())
    return {
        "cum_keys": cum[:-1].astype(np.float32).view(np.int32),
        "means": np.asarray(gmm.means, np.float32),
        "cholesky": np.asarray(gmm.cholesky, np.float32),
    }


@dataclasses.dataclass(frozen=True)
class SamplerSpec:
    """How a model family turns noise into codes.

    Attributes:
      noise: the noise inputs, given the latent size.
      params: the model's sampler parameters as float32 numpy arrays.
      codes: ``(params, noise) -> z``, TensorFlow ops only (it is exported).
      prior: a JSON description of the prior for the manifest.
    """

    noise: Callable[[int], tuple[Noise, ...]]
    params: Callable
    codes: Callable
    prior: Callable[[dict], dict]


SAMPLERS = {
    "gaussian": SamplerSpec(
        noise=lambda d: (Noise("eps", (d,), "normal"),),
        params=_no_params,
        codes=_gaussian_codes,
        prior=lambda p: {"kind": "normal", "loc": 0.0, "scale": 1.0},
    ),
    "bernoulli": SamplerSpec(
        noise=lambda d: (Noise("u", (d,), "uniform"),),
        params=_bernoulli_params,
        codes=_bernoulli_codes,
        prior=lambda p: {"kind": "bernoulli", "probs": p["prior_keys"].view(np.float32).tolist()},
    ),
    "ae-gmm": SamplerSpec(
        noise=lambda d: (Noise("u", (), "uniform"), Noise("eps", (d,), "normal")),
        params=_gmm_params,
        codes=_gmm_codes,
        prior=lambda p: {
            "kind": "gaussian-mixture",
            "components": int(p["means"].shape[0]),
            "weights": np.diff(p["cum_keys"].view(np.float32), prepend=0.0, append=1.0).tolist(),
        },
    ),
}


def sampler_spec(model_type: str) -> SamplerSpec:
    try:
        return SAMPLERS[model_type]
    except KeyError:
        raise ExportError(
            f"model type {model_type!r} cannot be exported; tfvae exports {', '.join(SAMPLERS)}"
        ) from None


def noise_inputs(manifest_or_model) -> tuple[Noise, ...]:
    """The sampler's noise inputs of a model, a manifest dict or an export directory."""
    if isinstance(manifest_or_model, (str, os.PathLike)):
        manifest_or_model = read_manifest(manifest_or_model)
    if isinstance(manifest_or_model, dict):
        return tuple(
            Noise(n["name"], tuple(n["shape"]), n["distribution"])
            for n in manifest_or_model["noise"]
        )
    model = manifest_or_model
    return sampler_spec(model.model_type).noise(model.latent_dim)


def draw_noise(manifest_or_model, n: int, seed: int | None = 0) -> dict[str, np.ndarray]:
    """Draws the noise a sampler takes, as float32 arrays ``[n, *shape]``.

    Args:
      manifest_or_model: a tfvae model, a manifest dict, or an export directory.
      n: number of samples.
      seed: seed of ``numpy.random.default_rng``; the same seed gives the same noise.

    Returns:
      A dict from input name (``eps``, ``u``) to its array, ready for the
      ``sample`` signature or :func:`sample_from_noise`.
    """
    if isinstance(n, bool) or int(n) != n or int(n) <= 0:
        raise ExportError(f"n must be a positive integer, got {n!r}")
    rng = np.random.default_rng(seed)
    draws = {"normal": rng.standard_normal, "uniform": rng.random}
    return {
        spec.name: draws[spec.distribution]((int(n), *spec.shape)).astype(np.float32)
        for spec in noise_inputs(manifest_or_model)
    }


def sampler_codes(model, noise: dict):
    """The codes ``z`` ``[n, latent]`` (a tensor) the model's prior gives for this noise."""
    import tensorflow as tf

    spec = sampler_spec(model.model_type)
    params = {k: tf.constant(v) for k, v in spec.params(model).items()}
    noise = {k: tf.convert_to_tensor(np.asarray(v, np.float32)) for k, v in noise.items()}
    return spec.codes(params, noise)


def sample_from_noise(model, noise: dict) -> np.ndarray:
    """Images ``[n, D]`` from a Keras model for noise from :func:`draw_noise`.

    The reference path of the exported ``sample`` signature: the same noise
    gives the same images (probabilities or means) within the precision's
    tolerance.
    """
    return model.decode_mean(sampler_codes(model, noise)).numpy()


# ------------------------------------------------------ distribution heads


def _sigmoid(params):
    import tensorflow as tf

    return tf.math.sigmoid(params)


def _normal_params(params):
    # tfp.layers.IndependentNormal: loc, softplus(raw scale) = split(params, 2).
    import tensorflow as tf

    loc, raw = tf.split(params, 2, axis=-1)
    return {"mean": loc, "scale": tf.math.softplus(raw)}


# Decoder's distribution layer -> (output name, meaning, params -> output).
DECODER_HEADS = {
    "IndependentBernoulli": ("image", "probabilities", _sigmoid),
    "PixelNormal": ("image", "means", lambda params: params),
}
# Encoder's distribution layer -> (params -> {name: tensor}, meaning of each output).
ENCODER_HEADS = {
    "IndependentNormal": (
        _normal_params,
        {"mean": "posterior mean", "scale": "posterior standard deviation"},
    ),
    "IndependentBernoulli": (
        lambda params: {"probabilities": _sigmoid(params)},
        {"probabilities": "posterior probabilities q(z_i = 1 | x)"},
    ),
    None: (lambda params: {"code": params}, {"code": "deterministic code"}),
}


def split_head(net):
    """``(deterministic layers, name of the distribution layer or None)`` of a Sequential."""
    from tfvae._keras import tfpl

    layers = list(net.layers)
    if layers and isinstance(layers[-1], tfpl.DistributionLambda):
        return layers[:-1], type(layers[-1]).__name__
    return layers, None


def clone_body(layers, input_dim: int, name: str):
    """A new Sequential with copies of ``layers`` and their current weights."""
    from tfvae._keras import keras

    copies = [type(layer).from_config(layer.get_config()) for layer in layers]
    net = keras.Sequential([keras.Input(shape=(input_dim,))] + copies, name=name)
    for copy, layer in zip(copies, layers, strict=True):
        copy.set_weights(layer.get_weights())
    return net


def _lookup(registry, key, what):
    try:
        return registry[key]
    except KeyError:
        raise ExportError(
            f"{what} ending in {key!r} cannot be exported; tfvae exports "
            f"{', '.join(str(k) for k in registry)}"
        ) from None


def _count(variables) -> int:
    return int(sum(np.prod(v.shape) for v in variables))


def export_module(model):
    """A ``tf.Module`` with the ``decode``, ``sample`` and ``encode`` functions of a model.

    The module owns copies of the weights as tracked variables (no closure
    over the Keras model), so a SavedModel of it carries every weight.

    Returns:
      ``(module, info)``: info holds the outputs' meaning, the noise inputs,
      the weight count of each signature and the prior (for the manifest).
    """
    import tensorflow as tf

    spec = sampler_spec(model.model_type)
    decoder_layers, decoder_head = split_head(model.decoder)
    encoder_layers, encoder_head = split_head(model.encoder)
    out_name, meaning, to_output = _lookup(DECODER_HEADS, decoder_head, "a decoder")
    to_posterior, posterior_meaning = _lookup(ENCODER_HEADS, encoder_head, "an encoder")
    latent, dim = int(model.latent_dim), int(model.input_dim)
    noise = spec.noise(latent)

    class Exported(tf.Module):
        def __init__(self):
            super().__init__(name=f"tfvae_{model.model_type.replace('-', '_')}")
            self.decoder_net = clone_body(decoder_layers, latent, "decoder")
            self.encoder_net = clone_body(encoder_layers, dim, "encoder")
            self.sampler_params = {
                k: tf.Variable(v, trainable=False, name=k) for k, v in spec.params(model).items()
            }

        def _decode(self, z):
            return to_output(self.decoder_net(z, training=False))

        @tf.function(input_signature=[tf.TensorSpec([None, latent], tf.float32, name="z")])
        def decode(self, z):
            return {out_name: self._decode(z)}

        @tf.function(input_signature=[
            tf.TensorSpec([None, *n.shape], tf.float32, name=n.name) for n in noise
        ])
        def sample(self, *args):
            params = {k: tf.convert_to_tensor(v) for k, v in self.sampler_params.items()}
            z = spec.codes(params, {n.name: a for n, a in zip(noise, args, strict=True)})
            return {out_name: self._decode(z)}

        @tf.function(input_signature=[tf.TensorSpec([None, dim], tf.float32, name="x")])
        def encode(self, x):
            return to_posterior(self.encoder_net(x, training=False))

    module = Exported()
    info = {
        "decoder_output": out_name,
        "decoder_meaning": meaning,
        "encoder_outputs": posterior_meaning,
        "noise": noise,
        "weights": {
            "decode": _count(module.decoder_net.weights),
            "sample": _count(module.decoder_net.weights)
            + _count(module.sampler_params.values()),
            "encode": _count(module.encoder_net.weights),
        },
        "prior": spec.prior({k: v.numpy() for k, v in module.sampler_params.items()}),
    }
    return module, info


def signature_functions(module) -> dict:
    """Concrete functions of the module, keyed by signature name."""
    return {name: getattr(module, name).get_concrete_function() for name in SIGNATURES}


# ---------------------------------------------------------------- op check

_BUILTIN_NAMES = None


def tflite_ops(content: bytes) -> list[str]:
    """The operator codes a LiteRT flatbuffer uses: builtin names, or ``CUSTOM:<code>``.

    Parses the model's ``operator_codes`` table with the flatbuffer schema, so
    Flex (Select TF) and custom ops show as ``CUSTOM:FlexRandomUniform`` etc.
    """
    from ai_edge_litert import schema_py_generated as schema

    global _BUILTIN_NAMES
    if _BUILTIN_NAMES is None:
        _BUILTIN_NAMES = {
            v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")
        }
    model = schema.Model.GetRootAs(bytearray(content), 0)
    ops = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        # Codes above 127 live in builtin_code; older files only fill the deprecated byte.
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if builtin == schema.BuiltinOperator.CUSTOM:
            custom = code.CustomCode()
            ops.append("CUSTOM:" + (custom.decode() if custom else "?"))
        else:
            ops.append(_BUILTIN_NAMES.get(builtin, f"UNKNOWN_{builtin}"))
    return ops


def check_builtin_ops(content: bytes, what: str = "the converted graph") -> list[str]:
    """Returns the ops of a LiteRT file, or raises ExportError if any is not builtin."""
    ops = tflite_ops(content)
    if not ops:
        raise ExportError(f"{what} holds no operator; the file is not a usable model")
    custom = sorted({op for op in ops if op.startswith("CUSTOM:")})
    if custom:
        raise ExportError(
            f"{what} needs non-builtin ops {custom}: it would not run on a stock LiteRT "
            "runtime (Android, microcontrollers); the exported graph must use builtin ops only"
        )
    random = sorted(set(ops) & RANDOM_OPS)
    if random:
        raise ExportError(
            f"{what} holds random ops {random}: exported graphs take their noise as an input "
            "so that the same noise gives the same images everywhere"
        )
    return ops


def check_size(content: bytes, weights: int, precision: str, what: str) -> None:
    """Raises ExportError if a file is too small to hold ``weights`` weights."""
    floor = int(SIZE_SLACK * weights * BYTES_PER_WEIGHT[precision])
    if len(content) < floor:
        raise ExportError(
            f"{what} is {len(content)} bytes but its {weights} weights need at least about "
            f"{floor} bytes at {precision}: the converter dropped weights"
        )


# ---------------------------------------------------------------- running


class LiteRTModel:
    """A LiteRT file with one signature, run with ``ai_edge_litert``.

    Inputs are resized only when their shape changes, so repeated calls at one
    batch size cost an invoke and the copies.

    Args:
      path_or_content: a ``.tflite`` path or its bytes.
      num_threads: interpreter threads (None: LiteRT's default).

    Example:
      >>> m = LiteRTModel("exported/gaussian/decoder_int8.tflite", num_threads=1)
      >>> m(z=np.zeros([4, 20], np.float32))["image"].shape
      (4, 784)
    """

    def __init__(self, path_or_content, num_threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        if isinstance(path_or_content, (bytes, bytearray)):
            self.interpreter = Interpreter(model_content=bytes(path_or_content),
                                           num_threads=num_threads)
        else:
            self.interpreter = Interpreter(model_path=str(path_or_content),
                                           num_threads=num_threads)
        signatures = self.interpreter.get_signature_list()
        if len(signatures) != 1:
            raise ExportError(f"expected one signature in a tfvae LiteRT file, got {signatures}")
        (self.signature,) = signatures
        runner = self.interpreter.get_signature_runner(self.signature)
        self.inputs = {k: d["index"] for k, d in runner.get_input_details().items()}
        self.outputs = {k: d["index"] for k, d in runner.get_output_details().items()}
        self._shapes: dict[str, tuple] = {}

    def __call__(self, **inputs) -> dict[str, np.ndarray]:
        if set(inputs) != set(self.inputs):
            raise ExportError(
                f"signature {self.signature!r} takes inputs {sorted(self.inputs)}, "
                f"got {sorted(inputs)}"
            )
        interp = self.interpreter
        arrays = {k: np.ascontiguousarray(v, np.float32) for k, v in inputs.items()}
        if any(self._shapes.get(k) != a.shape for k, a in arrays.items()):
            for k, a in arrays.items():
                interp.resize_tensor_input(self.inputs[k], list(a.shape))
            interp.allocate_tensors()
            self._shapes = {k: a.shape for k, a in arrays.items()}
        for k, a in arrays.items():
            interp.set_tensor(self.inputs[k], a)
        interp.invoke()
        return {k: interp.get_tensor(i).copy() for k, i in self.outputs.items()}


# ---------------------------------------------------------------- conversion


def convert(saved_model_dir, signature: str, precision: str = "float32",
            representative: Callable | None = None) -> bytes:
    """Converts one signature of a SavedModel to LiteRT, builtin ops only.

    Args:
      saved_model_dir: a SavedModel with the signature.
      signature: ``decode``, ``sample`` or ``encode``.
      precision: ``float32``, ``float16`` (float16 weights) or ``int8``
        (dynamic range: int8 weights; full integer when ``representative`` is given).
      representative: for int8, a generator function of ``{input name: array}``
        calibration batches.

    Returns:
      The flatbuffer bytes, checked to use builtin ops only.
    """
    import tensorflow as tf

    if precision not in PRECISIONS:
        raise ExportError(f"unknown precision {precision!r}; choose {', '.join(PRECISIONS)}")
    converter = tf.lite.TFLiteConverter.from_saved_model(
        str(saved_model_dir), signature_keys=[signature]
    )
    # Builtins only: the converter fails on anything else, and the check below
    # catches what might slip through.
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if precision == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif precision == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if representative is not None:
            converter.representative_dataset = representative
    try:
        content = converter.convert()
    except Exception as exc:  # ConverterError and friends: report what the converter said
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        # "TF Select ops: MatrixInverse" names the non-builtin ops when that is the cause.
        cause = [line for line in lines if "Select ops:" in line or "Custom ops:" in line]
        detail = "; ".join(cause) if cause else (lines[0] if lines else "")
        raise ExportError(
            f"LiteRT conversion of {signature!r} at {precision} failed "
            f"({type(exc).__name__}): {detail[:400]}; the exported graph must use "
            "builtin LiteRT ops only"
        ) from None
    check_builtin_ops(content, f"{tflite_name(signature, precision)}")
    return content


def _random_inputs(signature_inputs: dict, n: int, seed: int) -> dict[str, np.ndarray]:
    """Plausible inputs of a signature: uniforms for images/noise u, normals otherwise."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, spec in signature_inputs.items():
        shape = (n, *spec["shape"][1:])
        if spec.get("distribution") == "uniform" or name == "x":
            out[name] = rng.random(shape).astype(np.float32)
        else:
            out[name] = rng.standard_normal(shape).astype(np.float32)
    return out


def _signature_io(module, info) -> dict:
    """Manifest entries for each signature: inputs and outputs with shapes and dtypes."""
    fns = signature_functions(module)
    noise = {n.name: n for n in info["noise"]}
    out = {}
    for name, fn in fns.items():
        inputs = {}
        for spec in fn.structured_input_signature[0]:
            entry = {"shape": [-1, *spec.shape[1:]], "dtype": spec.dtype.name}
            if name == "sample":
                entry["distribution"] = noise[spec.name].distribution
            inputs[spec.name] = entry
        outputs = {}
        for key, spec in fn.structured_outputs.items():
            meaning = (
                info["decoder_meaning"] if name in ("decode", "sample")
                else info["encoder_outputs"][key]
            )
            outputs[key] = {"shape": [-1, *spec.shape[1:]], "dtype": spec.dtype.name,
                            "meaning": meaning}
        out[name] = {
            "inputs": inputs,
            "outputs": outputs,
            "weights": info["weights"][name],
            "tflite_stem": STEMS[name],
        }
    return out


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _versions() -> dict:
    from importlib import metadata

    from tfvae.training import versions as library_versions

    return {**library_versions(), "ai_edge_litert": metadata.version("ai-edge-litert")}


def _as_tuple(value, allowed, what) -> tuple[str, ...]:
    values = (value,) if isinstance(value, str) else tuple(value)
    if "all" in values:
        values = allowed
    bad = [v for v in values if v not in allowed]
    if bad or not values:
        raise ExportError(f"unknown {what} {bad or values}; choose from {', '.join(allowed)}")
    return tuple(v for v in allowed if v in values)


def is_export_dir(path) -> bool:
    """Whether ``path`` holds a tfvae export (a manifest.json of this format)."""
    manifest = Path(path) / MANIFEST
    if not manifest.is_file():
        return False
    try:
        return json.loads(manifest.read_text()).get("format") == FORMAT
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False


def read_manifest(path) -> dict:
    """Reads the manifest of an export directory (or a manifest.json path)."""
    path = Path(path)
    manifest = path if path.name == MANIFEST else path / MANIFEST
    if not manifest.is_file():
        raise RunDirError(f"{path} is not a tfvae export: it has no {MANIFEST} (make one with "
                          "`tfvae export RUN_DIR --out DIR`)")
    try:
        data = json.loads(manifest.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunDirError(f"{manifest} is corrupt (not valid JSON: {exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise RunDirError(f"{manifest} is not a tfvae export manifest")
    files = data.get("files")
    if not isinstance(files, dict):
        raise RunDirError(f"{manifest} is corrupt: it has no 'files' table")
    # Names in a manifest someone sent us must stay inside the export directory.
    root = manifest.parent.resolve()
    for name in files:
        if not isinstance(name, str) or root not in (root / name).resolve().parents:
            raise RunDirError(f"{manifest} names a file outside its directory: {name!r}")
    return data


def _prepare_out(out: Path, overwrite: bool) -> None:
    """Refuses a non-empty --out, unless it is a previous export and ``overwrite`` is set."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ExportError(f"--out {out} exists and is not a directory; choose another --out")
    if not any(out.iterdir()):
        return
    if not is_export_dir(out):
        raise ExportError(
            f"--out {out} holds files that are not a tfvae export; tfvae never deletes them: "
            "choose an empty or new --out"
        )
    if not overwrite:
        raise ExportError(f"--out {out} already holds an export; pass --overwrite to replace it")


def _remove_previous(out: Path) -> None:
    """Deletes the files a previous export's manifest lists (and nothing else)."""
    manifest = read_manifest(out)
    root = out.resolve()
    for name in list(manifest.get("files", {})) + [MANIFEST]:
        path = (out / name).resolve()
        if root in path.parents and path.is_file():
            path.unlink()
    saved = out / SAVED_MODEL
    if saved.is_dir():  # prune the folders the listed files left empty
        for folder in sorted((p for p in saved.rglob("*") if p.is_dir()), reverse=True):
            if not any(folder.iterdir()):
                folder.rmdir()
        if not any(saved.iterdir()):
            saved.rmdir()


def export(
    model,
    out,
    formats=("savedmodel", "tflite"),
    precisions=PRECISIONS,
    representative: np.ndarray | None = None,
    run_info: dict | None = None,
    overwrite: bool = False,
    seed: int = 0,
) -> dict:
    """Exports a trained model's decoder, sampler and encoder.

    Args:
      model: a tfvae model (``gaussian``, ``bernoulli`` or ``ae-gmm``).
      out: the export directory (created; must be empty, or a previous
        export with ``overwrite=True``).
      formats: ``"savedmodel"``, ``"tflite"``, a tuple of them, or ``"all"``.
        The SavedModel is always built (the LiteRT files are converted from
        it) and kept when asked for.
      precisions: LiteRT precisions among ``float32``, ``float16``, ``int8``, or ``"all"``.
      representative: images ``[N, D]`` as the model sees them; with them
        int8 files are full-integer (calibrated activations) instead of
        dynamic range.
      run_info: ``{"config": ..., "evaluation": ..., "data": ...}`` for the manifest.
      overwrite: replace a previous export in ``out``.
      seed: seed of the random inputs the converted files are checked on.

    Returns:
      The manifest (also written to ``out/manifest.json``).

    Raises:
      ExportError: ``out`` is not usable, or a converted file has non-builtin
        ops, is too small for its weights, or disagrees with the SavedModel.
    """
    import tensorflow as tf

    formats = _as_tuple(formats, FORMATS, "format")
    precisions = _as_tuple(precisions, PRECISIONS, "precision")
    out = Path(out)
    _prepare_out(out, overwrite)
    module, info = export_module(model)
    io = _signature_io(module, info)

    parent = out.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=parent))
    try:
        saved = stage / SAVED_MODEL
        tf.saved_model.save(module, str(saved), signatures=signature_functions(module))
        loaded = tf.saved_model.load(str(saved))
        int8_mode = None
        if "tflite" in formats:
            calibration = _calibration(model, module, io, representative, seed)
            int8_mode = "full-integer" if calibration else "dynamic-range"
            for signature in SIGNATURES:
                check_inputs = _random_inputs(io[signature]["inputs"], 8, seed)
                reference = {
                    k: v.numpy()
                    for k, v in loaded.signatures[signature](
                        **{k: tf.constant(v) for k, v in check_inputs.items()}
                    ).items()
                }
                for precision in precisions:
                    name = tflite_name(signature, precision)
                    rep = calibration.get(signature) if precision == "int8" else None
                    content = convert(saved, signature, precision, rep)
                    check_size(content, io[signature]["weights"], precision, name)
                    _check_outputs(content, check_inputs, reference, precision, name)
                    (stage / name).write_bytes(content)
        del loaded
        if "savedmodel" not in formats:
            shutil.rmtree(saved)
        manifest = _manifest(model, info, io, formats, precisions, int8_mode, run_info, stage)
        (stage / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if out.exists() and any(out.iterdir()):
            _remove_previous(out)
        out.mkdir(parents=True, exist_ok=True)
        for item in stage.iterdir():
            os.replace(item, out / item.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return manifest


def _calibration(model, module, io, representative, seed) -> dict:
    """Calibration generators for full-integer int8, per signature ({} for dynamic range)."""
    if representative is None:
        return {}
    images = np.asarray(representative, np.float32).reshape(-1, int(model.input_dim))
    if not len(images):
        raise ExportError("the representative data set is empty; give at least one image")
    n = len(images)
    noise = draw_noise(model, n, seed)
    codes = module.encoder_net(images).numpy()
    head = io["encode"]["outputs"]
    if "mean" in head:  # posterior means as codes
        codes = codes[:, : model.latent_dim]
    elif "probabilities" in head:
        codes = (codes > 0).astype(np.float32)
    inputs = {"encode": {"x": images}, "decode": {"z": codes}, "sample": noise}

    def generator(batch):
        def gen():
            for i in range(n):
                yield {k: v[i : i + 1] for k, v in batch.items()}

        return gen

    return {name: generator(batch) for name, batch in inputs.items()}


def _check_outputs(content, inputs, reference, precision, name) -> None:
    outputs = LiteRTModel(content)(**inputs)
    for key, ref in reference.items():
        err = float(np.max(np.abs(outputs[key] - ref)))
        bound = EXPORT_CHECK_TOLERANCE[precision] * max(1.0, float(np.max(np.abs(ref))))
        if not np.isfinite(err) or err > bound:
            raise ExportError(
                f"{name} output {key!r} differs from the SavedModel by {err:.3g} (allowed "
                f"{bound:.3g} at {precision}): the conversion is broken; not exported"
            )


def _manifest(model, info, io, formats, precisions, int8_mode, run_info, stage) -> dict:
    run_info = run_info or {}
    files = {}
    for path in sorted(p for p in stage.rglob("*") if p.is_file()):
        files[path.relative_to(stage).as_posix()] = {
            "sha256": _sha256(path), "bytes": path.stat().st_size
        }
    tflite = {
        signature: {p: tflite_name(signature, p) for p in precisions}
        for signature in SIGNATURES
    } if "tflite" in formats else {}
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model_type": model.model_type,
        "latent_dim": int(model.latent_dim),
        "prior": info["prior"],
        "likelihood": model.likelihood,
        "input_dim": int(model.input_dim),
        "image_shape": list(model.image_shape),
        "decoder_output": info["decoder_meaning"],
        "noise": [n.to_dict() for n in info["noise"]],
        "signatures": io,
        "saved_model": SAVED_MODEL if "savedmodel" in formats else None,
        "tflite": tflite,
        "int8": int8_mode,
        "training": {k: run_info[k] for k in ("config", "data", "run") if k in run_info},
        "metrics": run_info.get("evaluation"),
        "versions": _versions(),
        "files": files,
    }
    if model.model_type == "ae-gmm":
        manifest["mixture_components"] = info["prior"]["components"]
    return manifest


def export_run(
    run_dir,
    out,
    formats=("savedmodel", "tflite"),
    precisions=PRECISIONS,
    representative: int = 0,
    overwrite: bool = False,
    which: str = "best",
) -> dict:
    """Exports a run directory's model (see :func:`export`).

    Args:
      run_dir: a tfvae run directory.
      out: the export directory.
      representative: if > 0, int8 files are full-integer, calibrated on that
        many training images of the run's data set (prepared as in training).
      which: ``"best"`` or ``"last"`` checkpoint.

    Returns:
      The manifest.
    """
    from tfvae import runs

    model, config = runs.load_model(run_dir, which)
    run_dir = Path(run_dir)
    info = {"config": config.to_dict(), "run": {"path": run_dir.name, "checkpoint": which}}
    if (run_dir / runs.EVALUATION).is_file():
        info["evaluation"] = runs.read_json(run_dir / runs.EVALUATION, "evaluation")
    if (run_dir / runs.STATUS).is_file():
        status = runs.read_json(run_dir / runs.STATUS, "run status")
        info["data"] = status.get("data")
        info["run"].update(
            {k: status.get(k) for k in ("status", "epochs_completed", "best_epoch")}
        )
    images = None
    if isinstance(representative, bool) or int(representative) < 0:
        raise ExportError(f"representative must be an integer >= 0, got {representative!r}")
    if representative:
        images = representative_images(config, int(representative))
    return export(model, out, formats, precisions, images, info, overwrite)


def representative_images(config, n: int) -> np.ndarray:
    """``n`` training images of a run's data set, as the model saw them in training."""
    import dataclasses as dc

    from tfvae import training

    config = dc.replace(config)
    _, splits = training.load_data(config)
    return training.train_float(splits, config.seed, limit=n)


# ---------------------------------------------------------------- loading


class ExportDir:
    """An export directory, run through its SavedModel or its LiteRT files.

    Only TensorFlow (SavedModel) or ``ai_edge_litert`` (LiteRT) is needed to
    run it; the model classes are not.

    Args:
      path: the export directory.
      verify: check every file against the manifest's sha256 first.

    Example:
      >>> d = ExportDir("exported/gaussian")
      >>> noise = draw_noise(d.manifest, 16, seed=0)
      >>> d.run("sample", noise, backend="tflite", precision="int8")["image"].shape
      (16, 784)
    """

    def __init__(self, path, verify: bool = False):
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        self._saved = None
        self._lite: dict = {}
        if verify:
            self.verify()

    def verify(self) -> None:
        """Raises ExportError if a listed file is missing or its sha256 differs."""
        for name, entry in self.manifest["files"].items():
            path = self.path / name
            if not path.is_file():
                raise ExportError(f"{path} is listed in the manifest but missing")
            if _sha256(path) != entry["sha256"]:
                raise ExportError(f"{path} does not match its sha256 in the manifest; re-export")

    def run(self, signature: str, inputs: dict, backend: str = "tflite",
            precision: str = "float32", num_threads: int | None = None) -> dict:
        """Runs one signature on numpy inputs; returns ``{output name: array}``."""
        if signature not in SIGNATURES:
            raise ExportError(f"unknown signature {signature!r}; choose {', '.join(SIGNATURES)}")
        if backend == "savedmodel":
            return self._run_saved(signature, inputs)
        if backend != "tflite":
            raise ExportError(f"unknown backend {backend!r}; choose savedmodel or tflite")
        name = self.manifest.get("tflite", {}).get(signature, {}).get(precision)
        if name is None:
            raise ExportError(
                f"{self.path} has no {precision} LiteRT file for {signature!r}; export it with "
                f"`tfvae export RUN_DIR --format tflite --quantize {precision}`"
            )
        key = (name, num_threads)
        if key not in self._lite:
            self._lite[key] = LiteRTModel(self.path / name, num_threads=num_threads)
        return self._lite[key](**inputs)

    def _run_saved(self, signature, inputs):
        import tensorflow as tf

        if self.manifest.get("saved_model") is None:
            raise ExportError(
                f"{self.path} has no SavedModel; export it with `tfvae export RUN_DIR "
                "--format savedmodel`"
            )
        if self._saved is None:
            self._saved = tf.saved_model.load(str(self.path / SAVED_MODEL))
        fn = self._saved.signatures[signature]
        result = fn(**{k: tf.constant(np.asarray(v, np.float32)) for k, v in inputs.items()})
        return {k: v.numpy() for k, v in result.items()}

    def sample(self, n: int, seed: int | None = 0, backend: str = "tflite",
               precision: str = "float32") -> np.ndarray:
        """Images ``[n, D]`` for the noise :func:`draw_noise` gives with this seed."""
        out = self.run("sample", draw_noise(self.manifest, n, seed), backend, precision)
        return out["image"]
