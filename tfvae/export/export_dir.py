"""Running an export: its SavedModel or its LiteRT files, checked against the manifest.

Only TensorFlow (SavedModel) or ``ai_edge_litert`` (LiteRT) is needed to run
an export; the model classes are not.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from tfvae import sampler_noise as noise_lib
from tfvae.export.manifest import (
    PRECISIONS,
    QUANTIZE_NAMES,
    SAVED_MODEL,
    SIGNATURES,
    ExportError,
    read_manifest,
    unlisted_files,
)
from tfvae.files import sha256

BACKENDS = ("savedmodel", "tflite")


def verify_files(path: Path, manifest: dict) -> None:
    """Raises ExportError naming the first listed file that is missing or changed."""
    for name, entry in manifest["files"].items():
        file = path / name
        if not file.is_file():
            raise ExportError(f"{file} is listed in the manifest but missing; re-export the run")
        if os.path.getsize(file) != entry["bytes"] or sha256(file) != entry["sha256"]:
            raise _changed(file)


def _changed(file) -> ExportError:
    return ExportError(
        f"{file} does not match its sha256 in the manifest: the file was changed or "
        "damaged after export; re-export the run (or pass verify=False / --no-verify "
        "to run it anyway)"
    )


def _described(shape, dtype) -> str:
    return f"[{', '.join('n' if s in (-1, None) else str(s) for s in shape)}] {dtype}"


def _table(specs: dict) -> str:
    return ", ".join(f"{k} {_described(*v)}" for k, v in sorted(specs.items()))


def noise_inputs(source) -> tuple[noise_lib.Noise, ...]:
    """The sampler's noise inputs of a model, a manifest dict or an export directory."""
    if isinstance(source, (str, os.PathLike)):
        source = read_manifest(source)
    if isinstance(source, dict):
        return tuple(noise_lib.Noise.from_dict(n) for n in source["noise"])
    return source.noise_inputs()


def draw_noise(source, n: int, seed: int | None = 0) -> dict[str, np.ndarray]:
    """Draws the noise a sampler takes, as float32 arrays ``[n, *shape]``.

    Args:
      source: a tfvae model, a manifest dict, or an export directory.
      n: number of samples.
      seed: seed of ``numpy.random.default_rng``; the same seed gives the same noise.

    Returns:
      A dict from input name (``eps``, ``u``) to its array, ready for the
      ``sample`` signature or :func:`sample_from_noise`.
    """
    return noise_lib.draw(noise_inputs(source), n, seed)


def sample_from_noise(model, inputs: dict) -> np.ndarray:
    """Images ``[n, D]`` from a Keras model for noise from :func:`draw_noise`.

    The reference of the exported ``sample`` signature: the same noise gives
    the same images (probabilities or means) within the precision's tolerance.
    """
    return model.decode_mean(model.codes_for(inputs)).numpy()


class ExportDir:
    """An export directory, run through its SavedModel or its LiteRT files.

    What runs is checked before it runs:

    - the manifest (:func:`~tfvae.export.manifest.read_manifest`): every file
      it names is inside the directory and listed with a SHA-256, and its
      shapes agree with each other (always, whatever ``verify`` says);
    - every file against its SHA-256 (``verify=False`` skips only this); a
      LiteRT file is digested again as it is loaded, and the SavedModel
      folder may hold no file the manifest does not list;
    - each model file's own signature (input and output names, shapes,
      dtypes) against the manifest's, when it is loaded;
    - each call's inputs against that signature (names, rank, sizes, a
      numeric dtype, one batch size for all), and its outputs after.

    Anything that does not fit raises :class:`ExportError` (or
    :class:`tfvae.errors.RunDirError` for the manifest) saying what.

    Args:
      path: the export directory.
      verify: check every file against the manifest's sha256 first.

    Example:
      >>> d = ExportDir("exported/gaussian")
      >>> noise = draw_noise(d.manifest, 16, seed=0)
      >>> d.run("sample", noise, backend="tflite", precision="int8")["image"].shape
      (16, 784)
    """

    def __init__(self, path, verify: bool = True):
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        self.verified = verify
        self._saved = None
        self._lite: dict = {}
        if verify:
            self.verify()

    def verify(self) -> None:
        """Raises ExportError if a listed file is missing or its sha256 differs."""
        verify_files(self.path, self.manifest)

    @property
    def precisions(self) -> tuple[str, ...]:
        """LiteRT precisions this export holds, most precise first."""
        held = set(self.manifest.get("tflite", {}).get("sample", {}))
        return tuple(p for p in PRECISIONS if p in held)

    def _lite_file(self, signature: str, precision: str | None) -> str:
        files = self.manifest.get("tflite", {}).get(signature, {})
        if precision is None:
            if not self.precisions:
                raise ExportError(f"{self.path} has no LiteRT files; use backend='savedmodel' "
                                  "or export with `--format tflite`")
            precision = self.precisions[0]
        if precision not in files:
            have = ", ".join(self.precisions) or "none"
            raise ExportError(
                f"{self.path} has no {precision} LiteRT file for {signature!r} (it has: {have}); "
                f"export one with `tfvae export RUN_DIR --format tflite --quantize "
                f"{QUANTIZE_NAMES.get(precision, precision)}`"
            )
        return files[precision]

    def run(self, signature: str, inputs: dict, backend: str = "tflite",
            precision: str | None = None, num_threads: int | None = None) -> dict:
        """Runs one signature on numpy inputs; returns ``{output name: array}``.

        Args:
          signature: ``decode``, ``sample`` or ``encode``.
          inputs: ``{input name: array [n, ...]}`` as the manifest's signature
            declares them (:func:`draw_noise` gives the sampler's); numbers
            of any dtype, run as float32.
          backend: ``tflite`` or ``savedmodel``.
          precision: LiteRT file to run; None takes the most precise one the export holds.
          num_threads: LiteRT interpreter threads (None: LiteRT's default).

        Raises:
          ExportError: an input's names, shape or dtype do not fit the model, or a model
            file does not match the manifest.
        """
        if signature not in SIGNATURES:
            raise ExportError(f"unknown signature {signature!r}; choose {', '.join(SIGNATURES)}")
        if backend not in BACKENDS:
            raise ExportError(f"unknown backend {backend!r}; choose {', '.join(BACKENDS)}")
        inputs = self._checked_inputs(signature, inputs)
        if backend == "savedmodel":
            result = self._run_saved(signature, inputs)
        else:
            result = self._lite_model(signature, precision, num_threads)(**inputs)
        self._check_outputs(signature, result)
        return result

    def _checked_inputs(self, signature: str, inputs) -> dict[str, np.ndarray]:
        """The inputs as float32 arrays, or ExportError naming the one that does not fit."""
        declared = self.manifest["signatures"][signature]["inputs"]
        if not isinstance(inputs, dict) or set(inputs) != set(declared):
            got = sorted(inputs) if isinstance(inputs, dict) else type(inputs).__name__
            raise ExportError(f"{signature!r} takes the inputs {sorted(declared)}, got {got}")
        arrays = {}
        for name, spec in declared.items():
            try:
                value = np.asarray(inputs[name])
            except (TypeError, ValueError) as exc:
                raise ExportError(f"input {name!r} of {signature!r} is not an array: "
                                  f"{exc}") from None
            want = _described(spec["shape"], "float32")
            if value.dtype.kind not in "biuf":
                raise ExportError(f"input {name!r} of {signature!r} holds {value.dtype} values; "
                                  f"the model takes {want} numbers")
            if value.ndim != len(spec["shape"]) or list(value.shape[1:]) != spec["shape"][1:]:
                raise ExportError(
                    f"input {name!r} of {signature!r} has shape {list(value.shape)}, but the model "
                    f"takes {want} (n rows); give an array of that shape")
            arrays[name] = np.ascontiguousarray(value, np.float32)
        batches = {k: a.shape[0] for k, a in arrays.items()}
        if len(set(batches.values())) > 1 or 0 in batches.values():
            raise ExportError(f"the inputs of {signature!r} must have one batch size, at least 1: "
                              f"got {batches}")
        return arrays

    def _check_signature(self, signature: str, what: str, inputs: dict, outputs: dict) -> None:
        """``inputs``, ``outputs``: ``{name: (shape, dtype)}`` of a model file, or ExportError."""
        io = self.manifest["signatures"][signature]
        for side, found in (("inputs", inputs), ("outputs", outputs)):
            declared = {k: ([-1 if s is None else s for s in v["shape"]], "float32")
                        for k, v in io[side].items()}
            found = {k: ([-1 if s is None else int(s) for s in shape], dtype)
                     for k, (shape, dtype) in found.items()}
            if found != declared:
                raise ExportError(
                    f"{self.path}: {what} has the {side} {_table(found)}, but the manifest "
                    f"declares {_table(declared)} for {signature!r}: the manifest does not "
                    "describe these files; re-export the run")

    def _lite_model(self, signature: str, precision: str | None, num_threads: int | None):
        """The LiteRT file of a signature, loaded once, checked against the manifest."""
        from tfvae.export.litert import LiteRTModel

        name = self._lite_file(signature, precision)
        key = (name, num_threads)
        if key not in self._lite:
            content = (self.path / name).read_bytes()
            entry = self.manifest["files"][name]
            if self.verified and (len(content) != entry["bytes"] or
                                  hashlib.sha256(content).hexdigest() != entry["sha256"]):
                raise _changed(self.path / name)  # changed since verify()
            try:
                model = LiteRTModel(content, num_threads=num_threads)
            except (ValueError, RuntimeError) as exc:  # not a model the interpreter reads
                raise ExportError(f"{self.path / name} is not a LiteRT model ({exc}); "
                                  "re-export the run") from None
            if model.signature != signature:
                raise ExportError(f"{self.path / name} holds the {model.signature!r} signature, "
                                  f"not {signature!r}: re-export the run")
            runner = model.interpreter.get_signature_runner(model.signature)
            self._check_signature(signature, name, *(
                {k: (list(d["shape_signature"]), np.dtype(d["dtype"]).name)
                 for k, d in details.items()}
                for details in (runner.get_input_details(), runner.get_output_details())))
            self._lite[key] = model
        return self._lite[key]

    def _check_outputs(self, signature: str, result: dict) -> None:
        declared = self.manifest["signatures"][signature]["outputs"]
        for name, entry in declared.items():
            got = result.get(name)
            width = entry["shape"][-1]
            if got is None or got.shape[-1] != width:
                raise ExportError(
                    f"{self.path}: the {signature!r} output {name!r} has shape "
                    f"{None if got is None else got.shape}, but the manifest declares width "
                    f"{width}: the manifest does not describe these files; re-export the run"
                )

    def _run_saved(self, signature, inputs):
        from tfvae._keras import tf

        if self.manifest.get("saved_model") is None:
            raise ExportError(
                f"{self.path} has no SavedModel; export it with `tfvae export RUN_DIR "
                "--format savedmodel`"
            )
        if self._saved is None:
            folder = self.path / SAVED_MODEL
            if folder.is_symlink() or not folder.is_dir():
                raise ExportError(f"{folder} is not a folder of the export; re-export the run")
            unlisted = unlisted_files(self.path, self.manifest, SAVED_MODEL)
            if unlisted:  # TensorFlow would read them too
                raise ExportError(f"{folder} holds files its manifest does not list: "
                                  f"{', '.join(unlisted[:8])}; re-export the run")
            try:
                saved = tf.saved_model.load(str(folder))
            except Exception as exc:  # TensorFlow's own errors: a damaged or foreign SavedModel
                raise ExportError(f"{folder} cannot be loaded ({type(exc).__name__}: "
                                  f"{str(exc)[:300]}); re-export the run") from None
            for name in SIGNATURES:
                if name not in saved.signatures:
                    raise ExportError(f"{folder} has no {name!r} signature; re-export the run")
                fn = saved.signatures[name]
                self._check_signature(name, SAVED_MODEL, *(
                    {k: (spec.shape.as_list() if spec.shape.rank else [], spec.dtype.name)
                     for k, spec in table.items()}
                    for table in (fn.structured_input_signature[1], fn.structured_outputs)))
            self._saved = saved
        fn = self._saved.signatures[signature]
        result = fn(**{k: tf.constant(v) for k, v in inputs.items()})
        return {k: v.numpy() for k, v in result.items()}

    def sample(self, n: int, seed: int | None = 0, backend: str = "tflite",
               precision: str | None = None) -> np.ndarray:
        """Images ``[n, D]`` for the noise :func:`draw_noise` gives with this seed."""
        return self.run("sample", draw_noise(self.manifest, n, seed), backend, precision)["image"]
