"""An export directory's manifest: names, reading, checks and the output folder.

Only the standard library and numpy: the CLI reads and checks manifests,
and refuses a bad ``--out``, before it imports TensorFlow.

A manifest is checked before anything it names is used: every path in it
stays inside the export directory and is listed with a digest, the LiteRT
table names tfvae's own file names, and its shapes agree with each other.
An export is written by :class:`Staging`: built in a staging folder beside
``--out`` that an OS lock marks as in use, then moved in all at once.

An export directory holds::

    manifest.json              what is inside: signatures, shapes, meaning, hashes
    saved_model/               one SavedModel with the signatures decode, sample, encode
    decoder.tflite             z -> image (float32); also decoder_float16, decoder_int8
    sampler.tflite             noise -> image; also sampler_float16, sampler_int8
    encoder.tflite             image -> posterior parameters (or the code)
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import shutil
import tempfile
from pathlib import Path, PurePosixPath

from tfvae.errors import RunDirError, TfvaeError
from tfvae.files import FileLock, sha256
from tfvae.sampler_noise import DISTRIBUTIONS

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
#: A manifest larger than this is refused unread: tfvae's own are far smaller.
MAX_MANIFEST_BYTES = 1 << 22
_SHA256 = re.compile(r"[0-9a-f]{64}")


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
    try:
        data = _load(manifest) if manifest.is_file() else None  # not a FIFO that never ends
    except (OSError, RunDirError):
        return False
    return isinstance(data, dict) and data.get("format") == FORMAT


def _corrupt(manifest: Path, what: str) -> RunDirError:
    return RunDirError(f"{manifest} is not a valid tfvae export manifest: {what}; re-export "
                       "the run with `tfvae export RUN_DIR --out DIR`")


def _load(manifest: Path):
    """The JSON of a manifest file; RunDirError when it is not JSON tfvae can read."""
    size = manifest.stat().st_size
    if size > MAX_MANIFEST_BYTES:
        raise _corrupt(manifest, f"it is {size} bytes, far more than a manifest holds")
    try:
        return json.loads(manifest.read_bytes().decode())
    # json raises RecursionError for deeply nested values, and ValueError for invalid
    # JSON, bad UTF-8 or an integer with more digits than Python converts.
    except (ValueError, RecursionError) as exc:
        raise _corrupt(manifest, f"not valid JSON ({type(exc).__name__}: "
                                 f"{str(exc)[:200]})") from None


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


def _is_spec(entry) -> bool:
    """Whether a signature's input or output entry is ``[-1, positive sizes...]`` float32."""
    shape = entry.get("shape") if isinstance(entry, dict) else None
    return (isinstance(shape, list) and len(shape) >= 1 and shape[0] == -1
            and all(type(s) is int and s > 0 for s in shape[1:])
            and entry.get("dtype", "float32") == "float32")


def _check_io(manifest: Path, data: dict) -> None:
    """Every signature's inputs and outputs are well formed; the noise is the sampler's input."""
    signatures = data["signatures"]
    for signature in SIGNATURES:
        for side in ("inputs", "outputs"):
            table = signatures[signature].get(side) if isinstance(
                signatures[signature], dict) else None
            if not isinstance(table, dict) or not table:
                raise _corrupt(manifest, f"the {signature!r} signature has no {side} table")
            bad = {k: v for k, v in table.items() if not _is_spec(v)}
            if bad:
                raise _corrupt(manifest, f"the {signature!r} {side} {bad} are not float32 "
                                         "shapes [-1, sizes...]")
    noise = data.get("noise")
    try:
        given = {n["name"]: [-1, *n["shape"]] for n in noise}
        kinds = {n["distribution"] for n in noise}
    except (KeyError, TypeError) as exc:
        raise _corrupt(manifest, f"malformed noise table ({type(exc).__name__}: {exc})") from None
    declared = {k: v["shape"] for k, v in signatures["sample"]["inputs"].items()}
    if given != declared or len(given) != len(noise) or not kinds <= set(DISTRIBUTIONS):
        raise _corrupt(manifest, f"its noise {noise} disagrees with the inputs of the "
                                 f"'sample' signature {declared}")


def _inside(root: Path, name) -> bool:
    """Whether ``name`` is a plain relative path whose file, links resolved, is in ``root``."""
    if not isinstance(name, str) or not name or "\\" in name or "\0" in name:
        return False
    parts = name.split("/")
    if PurePosixPath(name).is_absolute() or any(p in ("", ".", "..") for p in parts):
        return False
    return root in (root / name).resolve().parents


def _check_files(manifest: Path, data: dict) -> None:
    """Every file the manifest names stays in its folder and is listed with a digest."""
    files, tflite = data.get("files"), data.setdefault("tflite", {})
    if not isinstance(files, dict):
        raise RunDirError(f"{manifest} is corrupt: it has no 'files' table")
    if not isinstance(tflite, dict) or not all(
            s in SIGNATURES and isinstance(t, dict) for s, t in tflite.items()):
        raise _corrupt(manifest, f"its tflite table is not {{signature: {{precision: file}}}} "
                                 f"for the signatures {', '.join(SIGNATURES)}")
    # Names in a manifest someone sent us must stay inside the export directory.
    root = manifest.parent.resolve()
    for name in [*files, *(name for table in tflite.values() for name in table.values())]:
        if not _inside(root, name):
            raise RunDirError(f"{manifest} names a file outside its directory: {name!r}; "
                              "tfvae runs only the files of the export itself")
    for name, entry in files.items():
        if not (isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
                and _SHA256.fullmatch(entry["sha256"]) and type(entry.get("bytes")) is int
                and entry["bytes"] >= 0):
            raise _corrupt(manifest, f"the files entry of {name!r} has no valid sha256 and bytes")
    for signature, table in tflite.items():
        for precision, name in table.items():
            if precision not in PRECISIONS or name != tflite_name(signature, precision):
                raise _corrupt(manifest, f"its tflite table gives {name!r} for {signature!r} at "
                                         f"{precision!r}; tfvae names the files of a signature "
                                         f"{tflite_name(signature)!r}, "
                                         f"{tflite_name(signature, 'int8')!r}...")
            if name not in files:
                raise _corrupt(manifest, f"{name} (in its tflite table) is not listed with a "
                                         "digest in its files table")
    saved = data.get("saved_model")
    if saved not in (None, SAVED_MODEL) or (
            saved and f"{SAVED_MODEL}/saved_model.pb" not in files):
        raise _corrupt(manifest, f"its saved_model entry {saved!r} is not null or "
                                 f"{SAVED_MODEL!r} with {SAVED_MODEL}/saved_model.pb listed")


def read_manifest(path) -> dict:
    """Reads and checks the manifest of an export directory (or a manifest.json path).

    Checks the format and version; that every file it names (its ``files``,
    ``tflite`` and ``saved_model`` entries) is a relative path that stays
    inside the directory, links resolved, and is listed with a SHA-256 and a
    size; that its LiteRT table uses tfvae's file names; and that its shapes
    agree: image shape, signatures and the sampler's noise.

    Raises:
      tfvae.errors.RunDirError: what is wrong with the manifest (re-export the run).
    """
    path = Path(path)
    manifest = path if path.name == MANIFEST else path / MANIFEST
    if not manifest.is_file():
        raise RunDirError(f"{path} is not a tfvae export: it has no {MANIFEST} (make one with "
                          "`tfvae export RUN_DIR --out DIR`)")
    data = _load(manifest)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise RunDirError(f"{manifest} is not a tfvae export manifest")
    if data.get("format_version") not in READABLE_VERSIONS:
        raise RunDirError(f"{manifest} has format version {data.get('format_version')!r}; this "
                          f"tfvae reads versions {READABLE_VERSIONS}: re-export the run")
    _check_files(manifest, data)
    _check_shapes(manifest, data)
    try:
        _check_io(manifest, data)
    except (KeyError, TypeError, AttributeError) as exc:
        raise _corrupt(manifest, f"malformed signatures ({type(exc).__name__}: {exc})") from None
    return data


# ---------------------------------------------------------------- the output folder

#: Staging folders of exports into ``out`` are ``.{out.name}{STAGING}{pid}-{random}``.
STAGING = ".tfvae-staging-"
_LOCK = "lock"  # in a staging folder: held by the export building there
_NEW = "export"  # in a staging folder: the export being built
_OLD = "previous"  # in a staging folder: the export it replaces, during the swap


def unlisted_files(folder: Path, manifest: dict, under: str = "") -> list[str]:
    """Entries under ``folder`` (or its sub-folder ``under``) that are not the export's own.

    That is files its manifest does not list, links (tfvae never writes one)
    and anything neither a plain file nor a folder; folders themselves are
    the export's (TensorFlow writes an empty ``saved_model/assets``).
    """
    own = set(manifest["files"]) | {MANIFEST}
    found = []

    def fail(exc):
        raise exc

    for top, dirs, names in os.walk(folder / under, onerror=fail):
        for name in dirs + names:
            path = Path(top, name)
            rel = path.relative_to(folder).as_posix()
            if path.is_symlink() or not (path.is_dir() or (path.is_file() and rel in own)):
                found.append(rel)
    return sorted(found)


def _stagings(out: Path) -> list[tuple[Path, int]]:
    """The staging folders of exports into ``out``, live or stale, with their process ids."""
    pattern = re.compile(re.escape(f".{out.name}{STAGING}") + r"(\d+)-[a-z0-9_]+")
    try:
        entries = list(os.scandir(out.parent))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [(Path(e.path), int(m.group(1))) for e in entries
            if (m := pattern.fullmatch(e.name)) and e.is_dir(follow_symlinks=False)]


def _writer(folder: Path, pid: int) -> str | None:
    """Who builds an export in a staging folder now, or None when the folder is stale."""
    lock = folder / _LOCK
    if lock.is_symlink() or (lock.exists() and not lock.is_file()):
        return None  # not a lock tfvae made
    if lock.is_file():
        holder = FileLock.holder(lock)
        return None if holder is None else holder or f"process {pid}"
    try:  # made, its lock not yet taken (or never: its process died in between)
        os.kill(pid, 0)
    except PermissionError:  # a live process of another user
        pass
    except (OSError, OverflowError):
        return None
    return f"tfvae export process {pid}"


def writer(out) -> str | None:
    """Who is writing an export into ``out`` now (``"tfvae export process N"``), or None."""
    for folder, pid in _stagings(Path(os.path.abspath(out))):
        who = _writer(folder, pid)
        if who is not None:
            return who
    return None


def _busy(out: Path, who: str) -> ExportError:
    return ExportError(f"--out {out} is being written by another export ({who}); wait for it "
                       "to finish or choose another --out")


def check_out(out, overwrite: bool) -> Path:
    """Refuses an ``--out`` that cannot take a new export, with what to do instead.

    Refused: an ``--out`` another export is writing (named by its process
    id), a link, a file, a non-empty folder that is not a tfvae export, an
    export without ``overwrite``, and an export holding files its manifest
    does not list (tfvae deletes only an export's own files).
    """
    out = Path(out)
    who = writer(out)
    if who is not None:
        raise _busy(out, who)
    return _check_target(out, overwrite)


def _check_target(out: Path, overwrite: bool) -> Path:
    if out.is_symlink():
        raise ExportError(f"--out {out} is a symbolic link and tfvae does not write through "
                          f"links: give the folder itself ({os.path.realpath(out)}) or another "
                          "--out")
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
        raise ExportError(f"{out} already holds an export: pass overwrite=True (--overwrite)")
    try:
        foreign = unlisted_files(out, read_manifest(out))
    except RunDirError as exc:
        raise ExportError(f"--out {out} holds an export that tfvae cannot check, so --overwrite "
                          f"does not delete it; remove it yourself or choose another --out "
                          f"({exc})") from None
    if foreign:
        more = f" and {len(foreign) - 8} more" if len(foreign) > 8 else ""
        raise ExportError(
            f"--out {out} holds files that are not part of the export: "
            f"{', '.join(foreign[:8])}{more}; --overwrite replaces only the files the "
            "export's manifest lists: move these elsewhere or choose another --out"
        )
    return out


def _fsync(path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _recover(out: Path, stale: Path) -> None:
    """Removes the staging folder of a killed export; a swap it cut short is undone first."""
    old = stale / _OLD
    if old.is_dir() and not old.is_symlink() and not os.path.lexists(out):
        os.rename(old, out)  # the previous export goes back to its place
    shutil.rmtree(stale, ignore_errors=True)


class Staging:
    """The folder an export is built in, beside ``out``, and the swap that moves it there.

    The staging folder (``.{out.name}.tfvae-staging-{pid}-{random}``) holds an
    OS lock (:class:`tfvae.files.FileLock`) while its export runs: a second
    export into ``out`` is refused with this one's process id, and the next
    export into ``out`` removes the folder of a killed one (its lock dropped).
    :meth:`commit` renames a previous export aside into the staging folder and
    the new one to ``out``; :meth:`close` deletes the old one with the staging
    folder. ``out`` holds the old export or the new one, whole; a swap cut
    short by ``kill -9`` is undone by the next export (the old one goes back).

    Example:
      >>> with Staging("exports/z2", overwrite=True) as staging:
      ...     write_export(staging.folder)
      ...     staging.commit()
    """

    def __init__(self, out, overwrite: bool = False):
        self.out = Path(os.path.abspath(out))  # "." and "a/.." have no name to stage beside
        self.overwrite = overwrite
        self._root: Path | None = None
        self._lock: FileLock | None = None

    @property
    def folder(self) -> Path:
        """Where the export is built."""
        return self._root / _NEW

    def open(self) -> Staging:
        """Checks ``out``, makes and locks the staging folder and removes stale ones."""
        out = check_out(self.out, self.overwrite)
        out.parent.mkdir(parents=True, exist_ok=True)
        pid = os.getpid()
        self._root = Path(tempfile.mkdtemp(prefix=f".{out.name}{STAGING}{pid}-", dir=out.parent))
        try:
            self._lock = FileLock(self._root / _LOCK, note=f"tfvae export process {pid}")
            self._lock.acquire()
            for folder, other in _stagings(out):
                if folder != self._root:
                    who = _writer(folder, other)
                    if who is not None:
                        raise _busy(out, who)
                    _recover(out, folder)
            _check_target(out, self.overwrite)  # again, now that no other export writes it
            self.folder.mkdir()
        except BaseException:
            self.close()
            raise
        return self

    def commit(self) -> None:
        """Moves the export built in :attr:`folder` to ``out``, all at once."""
        out, old = self.out, self._root / _OLD
        for top, _, names in os.walk(self.folder):  # on the disk before it is published
            for name in names:
                _fsync(os.path.join(top, name))
        replacing = self.overwrite and out.is_dir() and any(out.iterdir())
        if replacing:
            _check_target(out, True)  # still an export of its own files only
            os.rename(out, old)
        try:
            os.rename(self.folder, out)
        except OSError as exc:
            if replacing:
                self._put_back(old)
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
                raise ExportError(f"--out {out} was filled by another program while the "
                                  "export was written; nothing was moved into it: choose "
                                  "another --out") from None
            raise
        with contextlib.suppress(OSError):  # the renames too (where a folder can be flushed)
            _fsync(out.parent)

    def _put_back(self, old: Path) -> None:
        try:
            os.rename(old, self.out)
        except OSError:  # out was made again meanwhile: keep the old export out of harm's way
            kept = self.out.with_name(f".{self.out.name}.tfvae-previous-{os.getpid()}")
            os.rename(old, kept)
            raise ExportError(f"--out {self.out} was made again by another program during "
                              f"the swap; the previous export is kept in {kept}") from None

    def close(self) -> None:
        """Removes the staging folder (and an export moved aside) and drops the lock."""
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> Staging:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()


def file_table(stage: Path) -> dict:
    """``{relative path: {"sha256", "bytes"}}`` of every file under ``stage``."""
    return {
        path.relative_to(stage).as_posix(): {"sha256": sha256(path), "bytes": path.stat().st_size}
        for path in sorted(p for p in stage.rglob("*") if p.is_file())
    }
