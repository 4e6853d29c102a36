"""Durable, atomic file writes shared by every role (checkpoints, ledgers, vaults),
and what makes a state folder (a coordinator's run folder, a site's state folder)
safe to run in: one permission rule, folders 0700 and files 0600 whoever writes
them (:func:`private`), and one process at a time (:class:`PidLock`)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fedvault.common.errors import ConfigError


@contextmanager
def naming(path: Path) -> Iterator[None]:
    """Re-raise an :class:`OSError` that names no file (a full disk: "No space
    left on device", from ``write``/``fsync``) as one naming ``path``."""
    try:
        yield
    except OSError as exc:
        if exc.filename is not None or exc.errno is None:
            raise
        raise OSError(exc.errno, exc.strerror, str(path)) from exc


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new file in ``folder`` durable (POSIX)."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new file, whole,
    and so that it survives a crash once this returns. Raises :class:`OSError`
    naming ``path`` (e.g. a full disk), the old file intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with naming(path), os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


@contextlib.contextmanager
def private(folder: Path) -> Iterator[None]:
    """Make ``folder`` and everything in it private to this user (folders 0700,
    files 0600; links are left alone), and create every file and folder private
    during the block: the umask is 077 for this process and for the processes it
    starts (Flower's state database, logs, ledgers).

    Raises:
        OSError: when ``folder`` cannot be created.
    """
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    for path in (folder, *folder.rglob("*")):
        with contextlib.suppress(OSError):  # vanished meanwhile, or not ours
            mode = path.lstat().st_mode
            if stat.S_ISDIR(mode) and stat.S_IMODE(mode) & 0o077:
                path.chmod(0o700)
            elif stat.S_ISREG(mode) and stat.S_IMODE(mode) & 0o077:
                path.chmod(0o600)
    previous = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(previous)


class FolderInUseError(ConfigError):
    """Another live process holds a state folder's lock (:class:`PidLock`)."""

    def __init__(self, message: str, *, pid: int) -> None:
        super().__init__(message)
        self.pid = pid


def _read_pid(fd: int) -> int:
    with contextlib.suppress(OSError, ValueError):
        return int(os.pread(fd, 32, 0).decode().strip() or 0)
    return 0


class PidLock:
    """One process at a time for a state folder: an exclusive ``flock`` on ``path``,
    which holds the holder's pid. The OS drops the lock however the holder ends
    (SIGKILL included), so a lock file left behind never blocks anyone.

    Use as a context manager, or :meth:`acquire` and :meth:`release`.
    """

    def __init__(self, path: Path, *, what: str, wait: float = 2.0) -> None:
        self.path, self.what, self.wait = path, what, wait
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, waiting up to ``wait`` seconds for a brief holder
        (a :func:`lock_holder` probe).

        Raises:
            FolderInUseError: naming ``what`` and the holder's pid, when another
                process holds it.
            OSError: when the lock file cannot be created.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + self.wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.1)
                    continue
                pid = _read_pid(fd)
                os.close(fd)
                holder = f"pid {pid}" if pid else "another process"
                raise FolderInUseError(
                    f"{self.what} is in use by {holder} ({self.path})", pid=pid
                ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Give the lock up (the file stays: removing it would race a waiter)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> PidLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_holder(path: Path) -> int | None:
    """The pid of the live process holding the :class:`PidLock` at ``path`` (0 when
    it has not written its pid yet), or None when nobody holds it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_pid(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
