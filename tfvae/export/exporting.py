"""Writing an export: SavedModel, LiteRT files and the manifest, checked, then moved in.

Everything is built in a staging folder beside ``out`` and moved in only
when every file passed its checks, so a failed or interrupted export (a full
disk included) leaves ``out`` as it was.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path

import numpy as np

from tfvae import files
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
    as_tuple,
    check_out,
    file_table,
    remove_previous,
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
      seed: seed of the random inputs the converted files are checked on.

    Returns:
      The manifest (also written to ``out/manifest.json``).

    Raises:
      ExportError: ``out`` is not usable, or a converted file has non-builtin
        ops, is too small for its weights, or disagrees with the SavedModel.
      tfvae.files.StorageError: the disk is full (nothing is left behind).
    """
    formats = as_tuple(formats, FORMATS, "format")
    precisions = as_tuple(precisions, PRECISIONS, "precision")
    out = check_out(out, overwrite)
    from tfvae.export.graph import export_module, signature_io

    module, info = export_module(model)
    io = signature_io(module, info)
    parent = out.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=parent))
    try:
        with files.disk_errors(parent, f"the export {out}"):
            int8_mode = _write_files(stage, model, module, io, formats, precisions,
                                     representative, seed)
            manifest = _manifest(model, info, io, formats, precisions, int8_mode, run_info,
                                 stage)
            (stage / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            if out.exists() and any(out.iterdir()):
                remove_previous(out)
            out.mkdir(parents=True, exist_ok=True)
            for item in stage.iterdir():
                os.replace(item, out / item.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
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
        calibration = _calibration(model, module, representative, seed)
        int8_mode = "full-integer" if calibration else "dynamic-range"
        for signature in SIGNATURES:
            inputs = litert.random_inputs(io[signature]["inputs"], 8, seed)
            outputs = loaded.signatures[signature](
                **{k: tf.constant(v) for k, v in inputs.items()})
            reference = {k: v.numpy() for k, v in outputs.items()}
            for precision in precisions:
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


def _calibration(model, module, representative, seed) -> dict:
    """Calibration generators for full-integer int8, per signature ({} for dynamic range)."""
    if representative is None:
        return {}
    images = np.asarray(representative, np.float32).reshape(-1, int(model.input_dim))
    if not len(images):
        raise ExportError("the representative data set is empty; give at least one image")
    from tfvae.networks import split_head

    n = len(images)
    params = module.encoder_net(images)
    head = split_head(model.encoder)[1]
    codes = (params if head is None else head.code(params)).numpy()
    inputs = {"encode": {"x": images}, "decode": {"z": codes}, "sample": model.draw_noise(n, seed)}

    def generator(batch):
        def gen():
            for i in range(n):
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
    check_out(out, overwrite)  # paths first: refuse before loading anything
    model, config = load_model(run_dir, which)
    info = {"config": config.to_dict(), "run": {"path": run_dir.name, "checkpoint": which}}
    if (run_dir / layout.EVALUATION).is_file():
        info["evaluation"] = files.read_json(run_dir / layout.EVALUATION, "evaluation")
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
