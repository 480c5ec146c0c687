"""LiteRT (TFLite) files: conversion with builtin ops only, checks, and running them.

Every converted file is checked before it is kept: builtin ops only (no
Flex, custom or random op), a size consistent with its weight count (a file
that silently lost its weights is refused), and outputs close to the
SavedModel's on random inputs. Files are run with ``ai_edge_litert`` (the
LiteRT interpreter; ``tf.lite``'s is deprecated), through their signature
runner's named inputs and outputs.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Callable

import numpy as np

from tfvae.export.manifest import PRECISIONS, ExportError, tflite_name

# Max abs difference a converted file may show against the SavedModel on the
# check's inputs before export refuses it, relative to max(1, max |reference|).
# Loose on purpose: these catch broken files (lost weights, wrong graph), the
# tests state the tight tolerances. A full-integer int8 file rounds every
# activation to one of 256 steps of the range calibration saw, so each layer
# moves its output by a small fraction of that range, and a few layers add such
# errors up; a broken file moves outputs by a large part of their range. The
# check holds only for inputs inside the calibrated ranges (clipped activations
# look broken): files are checked on inputs drawn as they will be used
# (``exporting.check_inputs``).
EXPORT_CHECK_TOLERANCE = {"float32": 1e-3, "float16": 5e-2, "int8": 0.25}
# Bytes per weight of each precision: a file smaller than
# SIZE_SLACK * weights * bytes cannot hold its weights.
BYTES_PER_WEIGHT = {"float32": 4, "float16": 2, "int8": 1}
SIZE_SLACK = 0.8
# Builtin LiteRT ops that draw random numbers: samplers take noise as input instead.
RANDOM_OPS = frozenset({"RANDOM_UNIFORM", "RANDOM_STANDARD_NORMAL", "MULTINOMIAL"})


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
        details = runner.get_input_details()
        self.inputs = {k: d["index"] for k, d in details.items()}
        #: Each input's shape as the file declares it (-1: any size).
        self.input_shapes = {k: tuple(int(s) for s in d["shape_signature"])
                             for k, d in details.items()}
        self.outputs = {k: d["index"] for k, d in runner.get_output_details().items()}
        self._shapes: dict[str, tuple] = {}

    def __call__(self, **inputs) -> dict[str, np.ndarray]:
        # Lean on purpose: at batch 1 the invoke itself is short, so the Python
        # around it (checks, copies) is a visible share of the call.
        if inputs.keys() != self.inputs.keys():
            raise ExportError(
                f"signature {self.signature!r} takes inputs {sorted(self.inputs)}, "
                f"got {sorted(inputs)}"
            )
        interp, shapes = self.interpreter, self._shapes
        arrays, resize = {}, False
        for k, v in inputs.items():
            if not (type(v) is np.ndarray and v.dtype == np.float32 and v.flags.c_contiguous):
                v = np.ascontiguousarray(v, np.float32)
            arrays[k] = v
            resize = resize or shapes.get(k) != v.shape
        if resize:  # a new shape: checked once against the file's own
            for k, a in arrays.items():
                want = self.input_shapes[k]
                if a.ndim != len(want) or any(
                        w not in (-1, n) for w, n in zip(want, a.shape, strict=True)):
                    raise ExportError(f"input {k!r} of {self.signature!r} has shape "
                                      f"{list(a.shape)}; the file takes {list(want)} (-1: any)")
                interp.resize_tensor_input(self.inputs[k], list(a.shape))
            interp.allocate_tensors()
            self._shapes = {k: a.shape for k, a in arrays.items()}
        for k, a in arrays.items():
            interp.set_tensor(self.inputs[k], a)
        interp.invoke()
        # get_tensor returns a copy: the result outlives the next call.
        return {k: interp.get_tensor(i) for k, i in self.outputs.items()}


# ---------------------------------------------------------------- conversion


@contextlib.contextmanager
def native_logs_silenced():
    """Points file descriptors 1 and 2 at the null device for a conversion, then back.

    TensorFlow's converter and the LiteRT runtime log from C++ straight to
    those descriptors, several lines per converted file, whatever Python's
    logging levels or a ``TF_CPP_MIN_LOG_LEVEL`` set after TensorFlow started
    say. A failed conversion still reaches the caller as the converter's
    exception, whose text :func:`convert` reports.
    """
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    try:
        saved = (os.dup(1), os.dup(2))
    except OSError:  # no such descriptors (an embedded interpreter): nothing to silence
        yield
        return
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (null, *saved):
            os.close(fd)


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
    from tfvae._keras import tf

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
        with warnings.catch_warnings(), native_logs_silenced():
            # TensorFlow's int8 calibrator builds its own tf.lite.Interpreter, which warns
            # that it is deprecated; tfvae itself runs LiteRT files with ai_edge_litert.
            warnings.filterwarnings(
                "ignore", message=r"\s*Warning: tf\.lite\.Interpreter is deprecated",
                category=UserWarning)
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
    return name_tensors(content)


def name_tensors(content: bytes) -> bytes:
    """Gives each signature input and output tensor its signature name.

    The converter names them after TensorFlow's internal nodes
    (``StatefulPartitionedCall_1:0``); after this, ``get_input_details()`` and
    ``get_output_details()`` read ``z``, ``eps``, ``image``, ``mean``... as
    the signature runner does. Only tensor names change: the graph, the
    weights and the signature table stay as converted (the outputs are
    checked against the SavedModel afterwards).
    """
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(content), 0)
    for signature in model.signatureDefs or []:
        tensors = model.subgraphs[signature.subgraphIndex].tensors
        for entry in list(signature.inputs or []) + list(signature.outputs or []):
            tensors[entry.tensorIndex].name = entry.name
    builder = flatbuffers.Builder(len(content) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def random_inputs(signature_inputs: dict, n: int, seed: int) -> dict[str, np.ndarray]:
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


def check_outputs(content, inputs, reference, precision, name) -> None:
    with native_logs_silenced():  # LiteRT's "Created ... delegate" line
        outputs = LiteRTModel(content)(**inputs)
    for key, ref in reference.items():
        err = float(np.max(np.abs(outputs[key] - ref)))
        bound = EXPORT_CHECK_TOLERANCE[precision] * max(1.0, float(np.max(np.abs(ref))))
        if not np.isfinite(err) or err > bound:
            raise ExportError(
                f"{name} output {key!r} differs from the SavedModel by {err:.3g} (allowed "
                f"{bound:.3g} at {precision}): the conversion is broken; not exported"
            )
