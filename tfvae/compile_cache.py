"""A disk cache of XLA's compiled programs, shared by the processes of one machine.

Every ``tfvae`` command compiles its XLA programs (the fused training loop,
the evaluation's passes) afresh: about a second of the README's main job
and, while LLVM runs, 80-110 MiB of a Fashion-MNIST run's peak memory.
TensorFlow can save each compiled program and load it in a later process instead
(``TF_XLA_FLAGS=--tf_xla_persistent_cache_directory=DIR``), but used as it
is, that folder is fragile: one file that is cut short or edited fails every
compilation that reads it, and a full disk fails the compilation that would
write (TensorFlow raises in both cases; measured on TensorFlow 2.21).

This module keeps a store TensorFlow never writes to and hands each
process a private folder:

- the store keeps one folder per machine kind (TensorFlow version, CPU model
  and features, XLA flags), so a program is never loaded on a CPU it was not
  compiled for;
- each entry has a SHA-256 sidecar written after it; a process starts with
  hard links to (or copies of) the entries that are whole and whose sidecar
  matches, in a private folder that TensorFlow reads and writes;
- at exit, the programs the process compiled are published to the store
  through temporary files and renames, and the oldest entries beyond
  :data:`MAX_BYTES` are removed;
- with less than :data:`MIN_FREE_BYTES` free, TensorFlow only reads;
- an error of the store's files leaves the cache out (or the store as it
  was). Two failures still reach a command, and :func:`explained` turns them
  into clear errors: a disk that fills while it runs, and a program that
  passed the checks yet TensorFlow cannot load (then removed from the store).

The ``tfvae`` command enables it; set ``TFVAE_COMPILE_CACHE`` to a folder to
move it or to ``off`` to turn it off. From Python, call :func:`enable`
before the first compiled function runs. On a hit TensorFlow logs two
"Loading XLA:CPU AOT result" error lines about CPU features
(``prefer-no-scatter``/``prefer-no-gather``, tuning hints that are not CPU
features); they are harmless, and the command hides TensorFlow's log lines.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import platform
import shutil
import tempfile
import time
from importlib import metadata
from pathlib import Path

from tfvae import files
from tfvae.errors import TfvaeError

#: The environment variable naming the store (``off``, ``0`` or ``none``: no cache).
ENV = "TFVAE_COMPILE_CACHE"
#: The store's size limit; the oldest entries beyond it are removed at exit.
MAX_BYTES = 64 << 20
#: Below this much free space on the store's disk, TensorFlow only reads the cache.
MIN_FREE_BYTES = 256 << 20
#: TensorFlow's flag for the folder (it also reads ``..._read_only``).
FLAG = "--tf_xla_persistent_cache_directory"
_OFF = {"off", "0", "none", "false", "no"}
_SIDECAR = ".sha256"
_STAGING = "staging-"
_LOCK = ".lock"

_enabled: CompileCache | None = None


class CacheError(TfvaeError):
    """TensorFlow could not load a program of the cache (see :func:`error_for`)."""


def default_dir() -> Path | None:
    """The store named by ``TFVAE_COMPILE_CACHE``, else ``$XDG_CACHE_HOME/tfvae/xla``.

    None when the variable says ``off`` (or ``0``, ``none``).
    """
    value = os.environ.get(ENV)
    if value is not None:
        if value.strip().lower() in _OFF or not value.strip():
            return None
        return Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tfvae" / "xla"


def _machine_kind() -> str:
    """A name for what a compiled program depends on besides its graph."""
    try:
        tf_version = metadata.version("tensorflow")
    except metadata.PackageNotFoundError:
        tf_version = "unknown"
    parts = [tf_version, platform.machine(), os.environ.get("XLA_FLAGS", ""),
             os.environ.get("TF_XLA_FLAGS", "")]
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            seen = set()
            for line in f:
                key = line.split(":", 1)[0].strip()
                if key in ("vendor_id", "model name", "flags", "Features", "CPU part") \
                        and key not in seen:
                    seen.add(key)
                    parts.append(line.strip())
    except OSError:
        parts.append(platform.processor())
    digest = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
    return f"tf{tf_version}-{platform.machine()}-{digest}"


def _entries(folder: Path) -> list[Path]:
    return [p for p in folder.glob("*.pb") if not p.name.startswith(".")]


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(data) or shift > 63:
            raise ValueError("cut short")
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i
        shift += 7


def _well_formed(data: bytes) -> bool:
    """Whether ``data`` parses as TensorFlow's cache entry: its key, HLO and program.

    The entry (``XlaSerializedCacheEntry``) is three length-delimited
    protobuf fields (1 key, 2 HLO module, 3 executable); a file cut short
    overruns the last one. TensorFlow fails every compilation that reads
    such a file ("Read less bytes than requested").
    """
    seen, i = set(), 0
    try:
        while i < len(data):
            tag, i = _varint(data, i)
            if tag & 7 != 2 or tag >> 3 not in (1, 2, 3):
                return False
            size, i = _varint(data, i)
            i += size
            if size == 0 or i > len(data):
                return False
            seen.add(tag >> 3)
    except ValueError:
        return False
    return seen == {1, 2, 3}


def _valid(entry: Path) -> bool:
    """Whether the entry is whole and matches the digest its sidecar recorded."""
    try:
        recorded = entry.with_name(entry.name + _SIDECAR).read_text().strip()
        data = entry.read_bytes()
    except (OSError, ValueError):
        return False
    return bool(recorded) and hashlib.sha256(data).hexdigest() == recorded \
        and _well_formed(data)


def _try_lock(path: Path):
    """An open descriptor holding an exclusive lock on ``path``, or None if it is held."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): every staging folder counts as in use
        return None
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


class CompileCache:
    """One process's view of the store: its private folder, and what it found there.

    Made by :meth:`open`; :meth:`close` publishes and removes the private
    folder (:func:`enable` registers it to run at exit).

    Attributes:
      store: the machine kind's folder of the store.
      folder: the private folder TensorFlow reads and writes.
      writable: False when TensorFlow only reads (little free space).
      loaded: names of the valid entries the process started with.
    """

    def __init__(self, store: Path, folder: Path, writable: bool, loaded: set, lock):
        self.store, self.folder, self.writable, self.loaded = store, folder, writable, loaded
        self._lock = lock
        self.published: list[str] = []

    @classmethod
    def open(cls, root) -> CompileCache | None:
        """Stages the valid entries of ``root`` for this machine; None if that fails."""
        try:
            store = Path(root) / _machine_kind()
            store.mkdir(parents=True, exist_ok=True)
            _remove_abandoned(store)
            folder = Path(tempfile.mkdtemp(prefix=_STAGING, dir=store))
        except OSError:
            return None
        lock = _try_lock(folder / _LOCK)
        loaded = set()
        try:
            for entry in _entries(store):
                if not _valid(entry):
                    continue
                try:
                    os.link(entry, folder / entry.name)
                except OSError:
                    shutil.copyfile(entry, folder / entry.name)
                loaded.add(entry.name)
            writable = shutil.disk_usage(store).free >= MIN_FREE_BYTES
        except OSError:
            shutil.rmtree(folder, ignore_errors=True)
            if lock is not None:
                os.close(lock)
            return None
        return cls(store, folder, writable, loaded, lock)

    def flags(self) -> str:
        """The ``TF_XLA_FLAGS`` that point TensorFlow at the private folder."""
        text = f"{FLAG}={self.folder}"
        if not self.writable:
            text += " --tf_xla_persistent_cache_read_only=true"
        return text

    def new_entries(self) -> list[str]:
        """Names of the programs this process compiled and saved (not yet published)."""
        try:
            return sorted(p.name for p in _entries(self.folder) if p.name not in self.loaded)
        except OSError:
            return []

    def close(self) -> None:
        """Publishes the new programs, removes the private folder, trims the store."""
        if self.folder is None:
            return
        with contextlib.suppress(OSError, TfvaeError):  # a full disk: StorageError
            for name in self.new_entries():
                content = (self.folder / name).read_bytes()
                if not _well_formed(content):
                    continue
                files.atomic_write_bytes(self.store / name, content, durable=False)
                # The sidecar last: until it matches, other processes skip the entry.
                files.atomic_write_bytes(self.store / (name + _SIDECAR),
                                         hashlib.sha256(content).hexdigest().encode(),
                                         durable=False)
                self.published.append(name)
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder = None
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None
        with contextlib.suppress(OSError):
            trim(self.store.parent)


def _remove_abandoned(store: Path, grace: float = 60.0) -> None:
    """Removes private folders of processes that ended without cleaning up (killed)."""
    for folder in store.glob(_STAGING + "*"):
        lock = folder / _LOCK
        if lock.exists():
            fd = _try_lock(lock)
            if fd is None:
                continue  # its process is running
            shutil.rmtree(folder, ignore_errors=True)
            os.close(fd)
        else:
            # Made but not yet locked, or its process died in between.
            with contextlib.suppress(OSError):
                if time.time() - folder.stat().st_mtime > grace:
                    shutil.rmtree(folder, ignore_errors=True)


def trim(root, max_bytes: int = MAX_BYTES) -> list[Path]:
    """Removes the oldest entries under ``root`` until they total at most ``max_bytes``.

    Returns the removed entries.
    """
    found = []
    for store in Path(root).iterdir():
        if not store.is_dir():
            continue
        for entry in _entries(store):
            with contextlib.suppress(OSError):
                stat = entry.stat()
                found.append((stat.st_mtime, stat.st_size, entry))
    total = sum(size for _, size, _ in found)
    removed = []
    for _, size, entry in sorted(found):
        if total <= max_bytes:
            break
        for path in (entry, entry.with_name(entry.name + _SIDECAR)):
            with contextlib.suppress(OSError):
                path.unlink()
        total -= size
        removed.append(entry)
    for store in {entry.parent for entry in removed}:
        with contextlib.suppress(OSError):
            store.rmdir()  # only if nothing is left in it
    return removed


#: What TensorFlow says when a program in the cache folder cannot be loaded. Not
#: "Read less bytes than requested", which TensorFlow also says of any file cut
#: short (a run's training state, for one): the entries are checked whole first.
_LOAD_FAILURES = ("Serialized cache key does not match", "Serialized HLO does not match",
                  "No binary found in serialized entry")


@contextlib.contextmanager
def explained(advice: str):
    """Re-raises a failure the cache caused as the clear error of :func:`error_for`."""
    try:
        yield
    except Exception as exc:
        error = error_for(exc, advice)
        if error is None:
            raise
        raise error from None


def error_for(exc: BaseException, advice: str):
    """A clear error for a failure the cache caused, else None.

    Two remain possible. The disk holding the private folder fills between
    the start of a process and a compilation (TensorFlow raises
    ``ResourceExhaustedError``): the error names the cache and what to do. A
    program that passed its checks (whole, its digest matching) still
    cannot be loaded: the programs this process loaded are removed from the
    store, so the next run compiles them. ``advice`` says how to go on.
    """
    cache = _enabled
    if cache is None or cache.folder is None or isinstance(exc, TfvaeError):
        return None  # (a TfvaeError says what to do already)
    text = "".join(str(e) for e in files.error_chain(exc))
    if files.no_space(exc) and str(cache.folder) in text:
        free = files._free_mib(cache.store)
        room = "" if free is None else f" ({free:.1f} MiB free)"
        return files.StorageError(
            f"the disk holding the compile cache {cache.store} is full{room}: TensorFlow "
            f"could not save a compiled program there. Free some space (or set {ENV}=off), "
            f"then {advice}")
    failure = next((failure for failure in _LOAD_FAILURES if failure in text), None)
    if cache.loaded and failure is not None:
        for name in cache.loaded:
            for path in (cache.store / name, cache.store / (name + _SIDECAR)):
                with contextlib.suppress(OSError):
                    path.unlink()
        return CacheError(
            f"TensorFlow could not load a compiled program from the compile cache "
            f"{cache.store} ({failure}); the programs this command "
            f"loaded are removed from it, so the next run compiles them: {advice}")
    return None


def enable(root=None) -> CompileCache | None:
    """Turns the cache on for this process; returns it, or None when it stays off.

    Call it before the first XLA compilation of the process (TensorFlow reads
    ``TF_XLA_FLAGS`` once, at its first compilation). It stays off when
    ``TFVAE_COMPILE_CACHE`` says ``off``, when ``TF_XLA_FLAGS`` already names
    a cache folder (yours is used as you set it), when the store's folder
    cannot be made, or when its path holds a space (``TF_XLA_FLAGS`` splits
    on spaces). Calling it again returns the first cache.

    Args:
      root: the store (default: :func:`default_dir`).
    """
    global _enabled
    if _enabled is not None:
        return _enabled
    root = default_dir() if root is None else Path(root)
    flags = _without_inherited(os.environ.get("TF_XLA_FLAGS", ""))
    if flags != os.environ.get("TF_XLA_FLAGS", flags):  # never a parent's folder, cache or not
        os.environ["TF_XLA_FLAGS"] = flags
    if root is None or FLAG in flags:
        return None
    cache = CompileCache.open(root)
    if cache is None:
        return None
    if any(ch.isspace() for ch in str(cache.folder)):
        cache.close()
        return None
    os.environ["TF_XLA_FLAGS"] = f"{flags} {cache.flags()}".strip()
    atexit.register(cache.close)
    _enabled = cache
    return cache


def _without_inherited(flags: str) -> str:
    """``TF_XLA_FLAGS`` without the private folder a parent tfvae process put there."""
    tokens, kept = flags.split(), []
    for i, token in enumerate(tokens):
        ours = token.startswith(FLAG + "=") and Path(token.split("=", 1)[1]).name.startswith(
            _STAGING)
        after_ours = i and token == "--tf_xla_persistent_cache_read_only=true" and \
            Path(tokens[i - 1].split("=", 1)[-1]).name.startswith(_STAGING)
        if not (ours or after_ours):
            kept.append(token)
    return " ".join(kept)
