"""Writing an export: SavedModel, LiteRT files and the manifest, checked, then moved in.

Everything is built in a staging folder beside ``out`` and moved in only
when every file passed its checks (:class:`~tfvae.export.manifest.Staging`),
so a failed or interrupted export (a full disk, Ctrl-C, SIGTERM, ``kill -9``)
leaves ``out`` as it was, and a second export into ``out`` is refused while
one runs. Ctrl-C and SIGTERM stop an export at its next step at the latest.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import shutil
import signal
import threading
from importlib import metadata
from pathlib import Path

import numpy as np

from tfvae import files
from tfvae.errors import Interrupted
from tfvae.export import litert
from tfvae.export.manifest import (
    FORMAT,
    FORMAT_VERSION,
    FORMATS,
    MANIFEST,
    PRECISIONS,
    SAVED_MODEL,
    SIGNATURES,
    STEMS,
    ExportError,
    Staging,
    as_tuple,
    check_out,
    file_table,
    read_manifest,
    tflite_name,
)
from tfvae.runtime import versions


def export(
    model,
    out,
    formats=FORMATS,
    precisions=PRECISIONS,
    representative: np.ndarray | None = None,
    run_info: dict | None = None,
    overwrite: bool = False,
    seed: int = 0,
) -> dict:
    """Exports a trained model's decoder, sampler and encoder.

    Args:
      model: a tfvae model (any family of :data:`tfvae.runs.FAMILIES`).
      out: the export directory (created; must be empty, or a previous
        export with ``overwrite=True``).
      formats: ``"savedmodel"``, ``"tflite"``, a tuple of them, or ``"all"``.
        The SavedModel is always built (the LiteRT files are converted from
        it) and kept when asked for.
      precisions: LiteRT precisions among ``float32``, ``float16``, ``int8``, or ``"all"``.
      representative: images ``[N, D]`` as the model sees them; with them
        int8 files are full-integer (calibrated activations) instead of
        dynamic range.
      run_info: ``{"config": ..., "evaluation": ..., "data": ..., "run": ...}`` for the manifest.
      overwrite: replace a previous export in ``out``.
      seed: seed of the inputs the converted files are checked on (see
        :func:`check_inputs`); full-integer calibration draws with ``seed + 1``.

    Returns:
      The manifest (also written to ``out/manifest.json``).

    Raises:
      ExportError: ``out`` is not usable (another export is writing it; it
        holds files that are not an export's own), or a converted file has
        non-builtin ops, is too small for its weights, or disagrees with the
        SavedModel. ``out`` is then as it was.
      tfvae.files.StorageError: the disk is full (nothing is left behind).
      tfvae.errors.Interrupted: Ctrl-C or SIGTERM; the message says what ``out`` holds.
    """
    formats = as_tuple(formats, FORMATS, "format")
    precisions = as_tuple(precisions, PRECISIONS, "precision")
    _refuse_encoderless(model)
    out = check_out(out, overwrite)
    with _stopping(out) as stop:
        staging = Staging(out, overwrite)
        try:
            with files.disk_errors(out.parent, f"the export {out}"):
                manifest = _build(staging.open().folder, model, formats, precisions,
                                  representative, run_info, seed)
                with stop.shielded():
                    staging.commit()
        finally:
            with stop.shielded():
                staging.close()
        if stop.requested:  # a signal during the swap: the export is whole, but say so
            raise Interrupted(f"interrupted as the export finished: {out} holds the new export")
    return manifest


def _refuse_encoderless(model) -> None:
    if getattr(model, "encoder", None) is None:
        raise ExportError(
            f"this {model.model_type} model has no encoder (it fits each example's posterior by "
            f"{getattr(model, 'inference', 'optimisation')} inference), and an export holds an "
            "encode signature; draw images with `tfvae sample` or model.sample instead")


def _build(stage, model, formats, precisions, representative, run_info, seed) -> dict:
    """Writes the export's files and manifest in ``stage``, checked; returns the manifest."""
    from tfvae.export.graph import export_module, signature_io

    module, info = export_module(model)
    io = signature_io(module, info)
    int8_mode = _write_files(stage, model, module, io, formats, precisions, representative, seed)
    _stop_point()
    manifest = _manifest(model, info, io, formats, precisions, int8_mode, run_info, stage)
    (stage / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    read_manifest(stage)  # what readers will check, checked before it replaces out
    _stop_point()
    return manifest


def _write_files(stage, model, module, io, formats, precisions, representative, seed):
    """The SavedModel and the checked LiteRT files in ``stage``; returns the int8 mode."""
    from tfvae._keras import tf
    from tfvae.export.graph import signature_functions

    saved = stage / SAVED_MODEL
    tf.saved_model.save(module, str(saved), signatures=signature_functions(module))
    int8_mode = None
    if "tflite" in formats:
        loaded = tf.saved_model.load(str(saved))
        images = _representative_array(model, representative)
        calibration = _calibration(model, module, images, seed)
        int8_mode = "full-integer" if calibration else "dynamic-range"
        checks = check_inputs(model, io, images, seed)
        for signature in SIGNATURES:
            inputs = checks[signature]
            outputs = loaded.signatures[signature](
                **{k: tf.constant(v) for k, v in inputs.items()})
            reference = {k: v.numpy() for k, v in outputs.items()}
            for precision in precisions:
                _stop_point()
                name = tflite_name(signature, precision)
                rep = calibration.get(signature) if precision == "int8" else None
                content = litert.convert(saved, signature, precision, rep)
                litert.check_size(content, io[signature]["weights"], precision, name)
                litert.check_outputs(content, inputs, reference, precision, name)
                (stage / name).write_bytes(content)
        del loaded
    if "savedmodel" not in formats:
        shutil.rmtree(saved)
    return int8_mode


#: Rows of each signature's inputs a converted file is checked on.
CHECK_ROWS = 8
#: Sampler draws full-integer calibration takes at least (noise costs no data):
#: activation ranges are the extremes seen in calibration, and the more draws,
#: the further into a sampler's tails they reach before clipping.
CALIBRATION_DRAWS = 1000


def _representative_array(model, representative) -> np.ndarray | None:
    """The representative images as float32 ``[N, D]``, or None."""
    if representative is None:
        return None
    images = np.asarray(representative, np.float32).reshape(-1, int(model.input_dim))
    if not len(images):
        raise ExportError("the representative data set is empty; give at least one image")
    return images


def sampler_codes(model, n: int, seed) -> np.ndarray:
    """``n`` codes ``[n, latent]`` drawn as the model's sampler draws them (its prior).

    Binary codes for the Bernoulli and SBN families, mixture codes for
    ``ae-gmm``, N(0, I) codes for the Gaussian VAE: what a decoder meets in
    generation.
    """
    return np.asarray(model.codes_for(model.draw_noise(n, seed)), np.float32)


def check_inputs(model, io, images, seed) -> dict:
    """Per signature, the inputs a converted file is checked on, as the files are used.

    ``decode`` takes codes from the model's own sampler (:func:`sampler_codes`):
    a decoder of binary codes is never fed Normal ones, which a full-integer
    file, calibrated on binary codes, clips. ``sample`` takes the sampler's
    noise. ``encode`` takes rows of the representative images when there are
    some (a full-integer encoder is calibrated on them; uniform noise images
    drive its activations outside the calibrated ranges), else uniform images.
    """
    rng = np.random.default_rng(seed)
    if images is None:
        encode = litert.random_inputs(io["encode"]["inputs"], CHECK_ROWS, seed)
    else:
        encode = {"x": images[np.sort(rng.permutation(len(images))[:CHECK_ROWS])]}
    return {"decode": {"z": sampler_codes(model, CHECK_ROWS, seed)},
            "sample": model.draw_noise(CHECK_ROWS, seed), "encode": encode}


def _calibration(model, module, images, seed) -> dict:
    """Calibration generators for full-integer int8, per signature ({} for dynamic range).

    The decoder is calibrated on the codes it meets in use: the encoder's
    codes of the representative images (reconstruction) and codes from the
    model's sampler (generation); the sampler on its noise. Sampler draws
    number at least :data:`CALIBRATION_DRAWS` and use ``seed + 1``, apart from
    the check's draws.
    """
    if images is None:
        return {}
    from tfvae.networks import split_head

    draws = max(len(images), CALIBRATION_DRAWS)
    params = module.encoder_net(images)
    head = split_head(model.encoder)[1]
    codes = (params if head is None else head.code(params)).numpy()
    codes = np.concatenate([codes, sampler_codes(model, draws, seed + 1)])
    inputs = {"encode": {"x": images}, "decode": {"z": codes},
              "sample": model.draw_noise(draws, seed + 1)}

    def generator(batch):
        def gen():
            for i in range(len(next(iter(batch.values())))):
                yield {k: v[i : i + 1] for k, v in batch.items()}

        return gen

    return {name: generator(batch) for name, batch in inputs.items()}


def _manifest(model, info, io, formats, precisions, int8_mode, run_info, stage) -> dict:
    run_info = run_info or {}
    tflite = {
        signature: {p: tflite_name(signature, p) for p in precisions}
        for signature in SIGNATURES
    } if "tflite" in formats else {}
    for signature, entry in io.items():
        entry["tflite_stem"] = STEMS[signature]
    return {
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
        "versions": {**versions(), "ai_edge_litert": metadata.version("ai-edge-litert")},
        "files": file_table(stage),
    }


def export_run(
    run_dir,
    out,
    formats=FORMATS,
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
    from tfvae.runs import layout, record
    from tfvae.runs.store import load_model

    if isinstance(representative, bool) or int(representative) < 0:
        raise ExportError(f"representative must be an integer >= 0, got {representative!r}")
    as_tuple(formats, FORMATS, "format")
    as_tuple(precisions, PRECISIONS, "precision")
    run_dir = layout.check_run_dir(run_dir)
    out = check_out(out, overwrite)  # paths first: refuse before loading anything
    with _stopping(out):  # Ctrl-C while the model loads stops the export too
        model, config = load_model(run_dir, which)
        info = {"config": config.to_dict(), "run": {"path": run_dir.name, "checkpoint": which}}
        evaluation = record.read_evaluation(run_dir)
        if evaluation is not None:
            info["evaluation"] = evaluation
        status = record.read_status(run_dir)
        if status:
            info["data"] = status.get("data")
            info["run"].update(
                {k: status.get(k) for k in ("status", "epochs_completed", "best_epoch")})
        images = representative_images(config, int(representative)) if representative else None
        return export(model, out, formats, precisions, images, info, overwrite)


def representative_images(config, n: int) -> np.ndarray:
    """``n`` training images of a run's data set, as the model saw them in training."""
    import dataclasses

    from tfvae.runs.run_data import load_data, train_float

    config = dataclasses.replace(config)
    _, splits = load_data(config)
    return train_float(splits, config.seed, limit=n)


# ---------------------------------------------------------------- Ctrl-C and SIGTERM


class _Stop:
    """What SIGINT and SIGTERM do during an export: stop it now, or at its next step.

    The first signal raises KeyboardInterrupt wherever Python is, as Ctrl-C
    does. But TensorFlow runs Python in finalizers (``AtomicFunction.__del__``),
    and an exception raised in one is printed and dropped: so the signal is
    also recorded, and :func:`_stop_point`, called between the export's steps,
    raises it again. While :meth:`shielded` (the swap, the clean-up) a signal
    is only recorded.
    """

    def __init__(self):
        self.requested = False
        self._shields = 0

    def handle(self, signum, frame):
        first, self.requested = not self.requested, True
        if first and not self._shields:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def shielded(self):
        self._shields += 1
        try:
            yield
        finally:
            self._shields -= 1


_STOP: _Stop | None = None


def _stop_point() -> None:
    """Raises KeyboardInterrupt if a signal asked the export of this thread to stop."""
    if (_STOP is not None and _STOP.requested
            and threading.current_thread() is threading.main_thread()):
        raise KeyboardInterrupt


@contextlib.contextmanager
def _stopping(out: Path):
    """While active: SIGINT and SIGTERM stop the export (main thread), which raises
    :class:`~tfvae.errors.Interrupted` saying what ``out`` holds."""
    global _STOP
    if threading.current_thread() is not threading.main_thread():
        yield _Stop()  # signals go to the main thread only
        return
    if _STOP is not None:  # export within export_run: the outer one serves
        yield _STOP
        return
    kept = out.is_dir() and any(out.iterdir())
    _STOP, old = _Stop(), {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, _STOP.handle)
        yield _STOP
    except Interrupted:
        raise
    except KeyboardInterrupt:
        held = f"{out} keeps the export it held" if kept else f"nothing was written to {out}"
        raise Interrupted(f"interrupted: the export was stopped; {held}") from None
    finally:
        _STOP = None
        for sig, handler in old.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
