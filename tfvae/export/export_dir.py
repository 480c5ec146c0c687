"""Running an export: its SavedModel or its LiteRT files, checked against the manifest.

Only TensorFlow (SavedModel) or ``ai_edge_litert`` (LiteRT) is needed to run
an export; the model classes are not.
"""

from __future__ import annotations

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
    verify_files,
)

BACKENDS = ("savedmodel", "tflite")


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

    Every file is checked against the manifest's sha256 before anything runs
    (``verify=False`` skips that), and every output against the manifest's
    shapes.

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

        ``precision`` None takes the most precise LiteRT file the export holds.
        """
        if signature not in SIGNATURES:
            raise ExportError(f"unknown signature {signature!r}; choose {', '.join(SIGNATURES)}")
        if backend == "savedmodel":
            result = self._run_saved(signature, inputs)
        elif backend == "tflite":
            from tfvae.export.litert import LiteRTModel

            name = self._lite_file(signature, precision)
            key = (name, num_threads)
            if key not in self._lite:
                self._lite[key] = LiteRTModel(self.path / name, num_threads=num_threads)
            result = self._lite[key](**inputs)
        else:
            raise ExportError(f"unknown backend {backend!r}; choose {', '.join(BACKENDS)}")
        self._check_outputs(signature, result)
        return result

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
            self._saved = tf.saved_model.load(str(self.path / SAVED_MODEL))
        fn = self._saved.signatures[signature]
        result = fn(**{k: tf.constant(np.asarray(v, np.float32)) for k, v in inputs.items()})
        return {k: v.numpy() for k, v in result.items()}

    def sample(self, n: int, seed: int | None = 0, backend: str = "tflite",
               precision: str | None = None) -> np.ndarray:
        """Images ``[n, D]`` for the noise :func:`draw_noise` gives with this seed."""
        return self.run("sample", draw_noise(self.manifest, n, seed), backend, precision)["image"]
