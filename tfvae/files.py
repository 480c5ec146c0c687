"""Small, safe file operations shared by runs, samplers and exports.

Every write goes through a temporary file in the same folder and an atomic
rename, so a crash, a ``kill -9`` or a full disk never leaves a half-written
file under the real name; a failed write removes its temporary file. A full
disk (or quota) becomes a :class:`StorageError` that names the place and
says what to do, instead of the raw ``OSError`` text. :func:`sha256` digests
a whole file (run records and export manifests keep such digests), and
:class:`FileLock` is the one inter-process lock. Only the standard library
is used here.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

from tfvae.errors import RunDirError, TfvaeError

#: errno values that mean "no room left" (a full disk or an exhausted quota).
NO_SPACE = {errno.ENOSPC, errno.EDQUOT}


def _umask() -> int:
    try:  # Linux says it without changing it
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: read it by setting it back at once
    os.umask(mask)
    return mask


#: Mode of the files tfvae writes: what ``open`` gives under the process's umask
#: (``mkstemp``, which makes the temporary file before its rename, gives 0600).
_FILE_MODE = 0o666 & ~_umask()


class StorageError(TfvaeError):
    """A file could not be written because its file system is full."""


def _free_mib(path: Path) -> float | None:
    try:
        return shutil.disk_usage(path).free / 2**20
    except OSError:
        return None


def error_chain(exc: BaseException | None):
    """``exc`` and the errors it wraps (``__cause__``, else ``__context__``), each once."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def no_space(exc: BaseException) -> bool:
    """Whether ``exc`` (or an error it wraps) is a full-disk error."""
    # h5py and TensorFlow wrap the OSError in their own errors and messages.
    return any((isinstance(e, OSError) and e.errno in NO_SPACE)
               or "No space left on device" in str(e) or "errno = 28" in str(e)
               for e in error_chain(exc))


def storage_error(path, what: str, advice: str = "") -> StorageError:
    """The error to raise when writing ``what`` under ``path`` hit a full disk."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    free = _free_mib(folder)
    room = "" if free is None else f" ({free:.1f} MiB free)"
    return StorageError(
        f"the disk holding {folder} is full{room}: {what} could not be written. "
        f"Free some space{', then ' + advice if advice else ''}"
    )


@contextlib.contextmanager
def disk_errors(path, what: str, advice: str = ""):
    """Turns a full-disk error raised inside the block into a StorageError."""
    try:
        yield
    except StorageError:
        raise
    except Exception as exc:
        if no_space(exc):
            raise storage_error(path, what, advice) from None
        raise


def advised(exc: BaseException, advice: str) -> BaseException:
    """``exc``, or for a StorageError that says only "Free some space" one that
    also says ``advice`` (", then resume with ...")."""
    if isinstance(exc, StorageError) and str(exc).endswith("Free some space"):
        return StorageError(f"{exc}, then {advice}")
    return exc


def atomic_write_bytes(path, content: bytes, durable: bool = True) -> None:
    """Writes ``content`` to ``path`` through a temporary file and a rename.

    Readers see the old file or the new one, never a part. ``durable`` also
    flushes the content to the disk before the rename (``fsync``), so that a
    power cut cannot leave an empty file under the name; files derived from a
    durable one (and rewritten from it) can skip that wait.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, _FILE_MODE)  # mkstemp's 0600 -> what open() would give
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if no_space(exc):
            raise storage_error(path, path.name) from None
        raise


def atomic_write_text(path, text: str, durable: bool = True) -> None:
    """Writes text to ``path`` through a temporary file and a rename."""
    atomic_write_bytes(path, text.encode(), durable)


def atomic_write_json(path, data, durable: bool = True) -> None:
    """Writes ``data`` as indented, key-sorted JSON through a temporary file."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n", durable)


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path beside ``path``; renames it onto ``path`` on success.

    For writers that want a file name rather than bytes (``save_weights``,
    ``np.savez``). The temporary name keeps the real suffix, so format
    detection by extension still works. On failure it is removed.
    """
    path = Path(path)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if no_space(exc):
            raise storage_error(path, path.name) from None
        raise


def read_json(path, what: str):
    """Reads a JSON file, or raises RunDirError naming the file and what it should hold."""
    path = Path(path)
    if not path.is_file():
        raise RunDirError(f"{path} is missing: the {what} cannot be read")
    try:
        with open(path, "rb") as f:
            return json.loads(f.read().decode())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunDirError(f"{path} is corrupt ({what} is not valid JSON: {exc})") from None


def sha256(file) -> str:
    """Hex SHA-256 of a whole file: a path, or a binary file open for reading (read from
    its start, so that the digest is of the very file a caller keeps open)."""
    import hashlib

    digest = hashlib.sha256()
    with contextlib.ExitStack() as stack:
        if isinstance(file, (str, os.PathLike)):
            file = stack.enter_context(open(file, "rb"))
        else:
            file.seek(0)
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class LockHeld(TfvaeError):
    """Another process holds a :class:`FileLock`; ``owner`` is the note it left in the file."""

    def __init__(self, path, owner: str):
        self.path, self.owner = Path(path), owner
        super().__init__(f"{path} is held by {owner or 'another process'}")


class FileLock:
    """An exclusive OS lock (``flock``) on a file, held by this process until released.

    The kernel drops the lock when the process ends however it ends
    (``kill -9`` included), so a stale lock cannot outlive its process; a
    second holder (another process, or another ``FileLock`` in this one) gets
    :class:`LockHeld` at once instead of waiting. The holder writes ``note``
    into the file so that the refusal can say who holds it. On a platform
    without ``flock`` the lock is not enforced.

    Example:
      >>> with FileLock("runs/z2/.lock", note="tfvae process 1234"):
      ...     pass  # write what the lock guards
    """

    def __init__(self, path, note: str = ""):
        self.path = Path(path)
        self.note = note
        self._file = None

    def acquire(self) -> FileLock:
        if self._file is not None:  # held already
            return self
        handle = open(self.path, "a+")  # noqa: SIM115 (held until release)
        try:
            import fcntl
        except ImportError:  # no flock on this platform: nothing to enforce
            self._file = handle
            return self
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            owner = handle.read().strip()
            handle.close()
            raise LockHeld(self.path, owner) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{self.note}\n" if self.note else "")
        handle.flush()
        self._file = handle
        return self

    def release(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()  # closing drops the flock
            self._file = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock now."""
        return self._file is not None

    @staticmethod
    def holder(path) -> str | None:
        """The note of whoever holds the lock on ``path`` now, or None when nobody does.

        A probe that takes and drops a shared lock at once and creates nothing;
        an empty string means a holder that left no note. The answer can be
        out of date as soon as it is given (a holder may start or end next).
        """
        try:
            import fcntl

            handle = open(path)  # noqa: SIM115 (closed below)
        except (ImportError, OSError):  # no flock here, or no lock file: nobody holds it
            return None
        with handle:
            try:  # shared: two probes do not refuse each other
                fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                return handle.read().strip()
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        return None

    def __enter__(self) -> FileLock:
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
