"""An export directory's manifest: names, reading, checks and the output folder.

Only the standard library and numpy: the CLI reads and checks manifests,
and refuses a bad ``--out``, before it imports TensorFlow.

An export directory holds::

    manifest.json              what is inside: signatures, shapes, meaning, hashes
    saved_model/               one SavedModel with the signatures decode, sample, encode
    decoder.tflite             z -> image (float32); also decoder_float16, decoder_int8
    sampler.tflite             noise -> image; also sampler_float16, sampler_int8
    encoder.tflite             image -> posterior parameters (or the code)
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from tfvae.errors import RunDirError, TfvaeError

FORMAT = "tfvae-export"
#: Version 2: ``image_shape`` is (H, W, C). Version 1 files (H, W) are read too.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
MANIFEST = "manifest.json"
SAVED_MODEL = "saved_model"

SIGNATURES = ("decode", "sample", "encode")
#: Signature -> stem of its .tflite files.
STEMS = {"decode": "decoder", "sample": "sampler", "encode": "encoder"}
PRECISIONS = ("float32", "float16", "int8")
#: ``--quantize`` value of each precision (float32 is "none": not quantized).
QUANTIZE_NAMES = {"float32": "none", "float16": "float16", "int8": "int8"}
FORMATS = ("savedmodel", "tflite")


class ExportError(TfvaeError):
    """An export cannot be made or read as asked (non-builtin ops, lost weights, bad --out)."""


def tflite_name(signature: str, precision: str = "float32") -> str:
    """File name of one signature at one precision: ``decoder.tflite``, ``sampler_int8.tflite``."""
    suffix = "" if precision == "float32" else f"_{precision}"
    return f"{STEMS[signature]}{suffix}.tflite"


def as_tuple(value, allowed, what) -> tuple[str, ...]:
    """Validated choices from a name, a sequence of names, or ``"all"``, in ``allowed`` order."""
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


def _corrupt(manifest: Path, what: str) -> RunDirError:
    return RunDirError(f"{manifest} is not a valid tfvae export manifest: {what}; re-export "
                       "the run with `tfvae export RUN_DIR --out DIR`")


def _check_shapes(manifest: Path, data: dict) -> None:
    """The manifest's image shape must agree with its own signatures."""
    try:
        shape = [int(s) for s in data["image_shape"]]
        if len(shape) == 2:
            shape.append(1)
        dim = int(data["input_dim"])
        latent = int(data["latent_dim"])
        signatures = data["signatures"]
        widths = {
            "decode image": signatures["decode"]["outputs"]["image"]["shape"][-1],
            "sample image": signatures["sample"]["outputs"]["image"]["shape"][-1],
            "encode x": signatures["encode"]["inputs"]["x"]["shape"][-1],
        }
        z_width = signatures["decode"]["inputs"]["z"]["shape"][-1]
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise _corrupt(manifest, f"missing or malformed shapes ({type(exc).__name__}: "
                                 f"{exc})") from None
    if len(shape) != 3 or math.prod(shape) != dim:
        raise _corrupt(manifest, f"image_shape {shape} does not hold input_dim {dim} values")
    wrong = {k: v for k, v in widths.items() if v != dim}
    if wrong:
        raise _corrupt(manifest, f"image_shape {shape} ({dim} values) disagrees with the "
                                 f"signatures' widths {wrong}")
    if z_width != latent:
        raise _corrupt(manifest, f"latent_dim {latent} disagrees with the decoder input {z_width}")
    declared = [entry.get("image_shape") for entry in (
        signatures["decode"]["outputs"]["image"], signatures["sample"]["outputs"]["image"],
        signatures["encode"]["inputs"]["x"])]
    if any(d is not None and list(d) != shape for d in declared):
        raise _corrupt(manifest, f"image_shape {shape} disagrees with the signatures' "
                                 f"image shapes {declared}")
    data["image_shape"] = shape


def read_manifest(path) -> dict:
    """Reads and checks the manifest of an export directory (or a manifest.json path).

    Checks the format and version, that every file it names stays inside the
    directory, and that its image shape agrees with its signatures.
    """
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
    if data.get("format_version") not in READABLE_VERSIONS:
        raise RunDirError(f"{manifest} has format version {data.get('format_version')!r}; this "
                          f"tfvae reads versions {READABLE_VERSIONS}: re-export the run")
    files = data.get("files")
    if not isinstance(files, dict):
        raise RunDirError(f"{manifest} is corrupt: it has no 'files' table")
    # Names in a manifest someone sent us must stay inside the export directory.
    root = manifest.parent.resolve()
    for name in files:
        if not isinstance(name, str) or root not in (root / name).resolve().parents:
            raise RunDirError(f"{manifest} names a file outside its directory: {name!r}")
    _check_shapes(manifest, data)
    return data


def check_out(out, overwrite: bool) -> Path:
    """Refuses a non-empty ``--out``, unless it is a previous export and ``overwrite`` is set."""
    out = Path(out)
    if not out.exists():
        return out
    if not out.is_dir():
        raise ExportError(f"--out {out} exists and is not a directory; choose another --out")
    if not any(out.iterdir()):
        return out
    if not is_export_dir(out):
        raise ExportError(
            f"--out {out} holds files that are not a tfvae export; tfvae never deletes them: "
            "choose an empty or new --out"
        )
    if not overwrite:
        raise ExportError(f"--out {out} already holds an export; pass --overwrite to replace it")
    return out


def remove_previous(out: Path) -> None:
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


def file_table(stage: Path) -> dict:
    """``{relative path: {"sha256", "bytes"}}`` of every file under ``stage``."""
    from tfvae.files import sha256

    return {
        path.relative_to(stage).as_posix(): {"sha256": sha256(path), "bytes": path.stat().st_size}
        for path in sorted(p for p in stage.rglob("*") if p.is_file())
    }


def verify_files(path: Path, manifest: dict) -> None:
    """Raises ExportError naming the first listed file that is missing or changed."""
    from tfvae.files import sha256

    for name, entry in manifest["files"].items():
        file = path / name
        if not file.is_file():
            raise ExportError(f"{file} is listed in the manifest but missing; re-export the run")
        if os.path.getsize(file) != entry.get("bytes") or sha256(file) != entry.get("sha256"):
            raise ExportError(
                f"{file} does not match its sha256 in the manifest: the file was changed or "
                "damaged after export; re-export the run (or pass verify=False / --no-verify "
                "to run it anyway)"
            )
