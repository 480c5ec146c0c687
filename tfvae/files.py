"""Small, safe file operations shared by runs, samplers and exports.

Every write goes through a temporary file in the same folder and an atomic
rename, so a crash, a ``kill -9`` or a full disk never leaves a half-written
file under the real name; a failed write removes its temporary file. Nothing
is written through a link: a temporary file is always a new one
(``O_CREAT | O_EXCL | O_NOFOLLOW``) and its rename replaces a link at the real
name rather than the link's target, and the lock file is opened with
``O_NOFOLLOW`` and refused when it has another name. A full disk (or quota)
becomes a :class:`StorageError` that names the place and says what to do,
instead of the raw ``OSError`` text. :func:`read_json` reads a JSON file or
says what is wrong with it (nesting too deep included); :func:`uninterrupted`
holds Ctrl-C and SIGTERM back while a sequence of writes completes.
:func:`sha256` digests a whole file (run records and export manifests keep
such digests), and :class:`FileLock` is the one inter-process lock. Only the
standard library is used here.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
import signal
import stat
import threading
from pathlib import Path

from tfvae.errors import RunDirError, TfvaeError

#: errno values that mean "no room left" (a full disk or an exhausted quota).
NO_SPACE = {errno.ENOSPC, errno.EDQUOT}


#: Open flags that refuse a symbolic link as the last part of a path (where the
#: platform has them) and keep the descriptor from child processes.
_NO_FOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def link_refused(path, kind: str = "symbolic") -> RunDirError:
    """The error for an entry tfvae would write that is a link (``symbolic`` or ``hard``)."""
    return RunDirError(
        f"{path} is a {kind} link: tfvae writes a run's files in place and never through a "
        "link, which could replace a file elsewhere; remove the link (move what it points to "
        "into its place if it belongs to the run) and try again"
    )


def _new_file(path: Path, prefix: str, suffix: str) -> tuple[int, Path]:
    """A new, empty file beside ``path``, open for writing: ``(descriptor, its path)``.

    ``O_EXCL`` makes it here or fails, so nothing that already has the name
    (a file, or a link to one) is opened; the mode is what ``open`` gives
    under the process's umask.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NO_FOLLOW
    for _ in range(100):
        tmp = path.with_name(f"{prefix}{secrets.token_hex(6)}{suffix}")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary file name", str(path.parent))


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
    fd, tmp = _new_file(path, f".{path.name}.", ".tmp")
    try:
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
    ``np.savez``, ``savefig``). The temporary file is made new and empty
    before the writer opens it by name, so the writer never follows a link
    someone left there; its name ends with the real one, so format detection
    by extension still works. On failure it is removed.
    """
    path = Path(path)
    fd, tmp = _new_file(path, ".tmp-", f"-{path.name}")
    os.close(fd)
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
    with open(path, "rb") as f:
        content = f.read()
    try:
        return json.loads(content.decode())
    except RecursionError:
        reason = "nested too deeply"
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer too long
        reason = str(exc)
    raise RunDirError(f"{path} is corrupt (the {what} is not valid JSON: {reason})")


@contextlib.contextmanager
def uninterrupted(deliver: bool = True):
    """Holds SIGINT (Ctrl-C) and SIGTERM back until the block ends.

    For a sequence of writes that must all happen or none (the files of an
    epoch and the record that names them): a signal that comes in the block
    is delivered to the handler in place before it once the block ends, or
    with ``deliver=False`` dropped (the process is stopping already). Signals
    reach only the main thread: elsewhere, and for a signal whose handler
    Python did not install, this does nothing.

    Example:
      >>> with uninterrupted():
      ...     pass  # replace the weights, then write the record naming them
    """
    held, came = {}, []
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(sig) is not None:
                held[sig] = signal.signal(sig, lambda signum, frame: came.append(signum))
    try:
        yield
    finally:
        for sig, handler in held.items():
            signal.signal(sig, handler)
        if deliver:
            for sig in dict.fromkeys(came):
                signal.raise_signal(sig)


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
    into the file so that the refusal can say who holds it. The file is
    opened without following a link and is refused (RunDirError) when it is
    a link or not a plain file, so the note never lands in a file elsewhere.
    On a platform without ``flock`` the lock is not enforced.

    Example:
      >>> with FileLock("runs/z2/.lock", note="tfvae process 1234"):
      ...     pass  # write what the lock guards
    """

    def __init__(self, path, note: str = ""):
        self.path = Path(path)
        self.note = note
        self._file = None

    def _open(self):
        """The lock file, made if missing, never through a link and never truncated here."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | _NO_FOLLOW, 0o666)
        except OSError:
            if os.path.islink(self.path):  # O_NOFOLLOW's ELOOP (EMLINK on some systems)
                raise link_refused(self.path) from None
            if os.path.isdir(self.path):
                raise RunDirError(f"{self.path} is a folder, not a lock file; remove it and "
                                  "try again") from None
            raise
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            os.close(fd)
            if stat.S_ISREG(info.st_mode):  # another name of someone's file
                raise link_refused(self.path, "hard")
            raise RunDirError(f"{self.path} is not a plain file; remove it and try again")
        return os.fdopen(fd, "r+")

    def _still_named(self, handle) -> bool:
        """Whether the path still names the file locked through ``handle`` (a holder that
        ends may remove its lock file, and another process make a new one)."""
        try:
            now = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            return False
        mine = os.fstat(handle.fileno())
        return (mine.st_dev, mine.st_ino) == (now.st_dev, now.st_ino)

    def acquire(self) -> FileLock:
        if self._file is not None:  # held already
            return self
        try:
            import fcntl
        except ImportError:  # no flock on this platform: nothing to enforce
            self._file = self._open()
            return self
        for _ in range(5):
            handle = self._open()
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.seek(0)
                owner = handle.read().strip()
                handle.close()
                raise LockHeld(self.path, owner) from None
            if self._still_named(handle):
                break
            handle.close()  # locked a file removed meanwhile: lock the one named now
        else:
            raise LockHeld(self.path, "")
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

            handle = os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK | _NO_FOLLOW))
        except (ImportError, OSError):  # no flock here, no lock file, or a link: no holder
            return None
        with handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                return None  # not a lock file tfvae made (acquire refuses it)
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
