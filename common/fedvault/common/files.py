"""Durable, atomic file writes shared by every role (checkpoints, ledgers, vaults),
and the one permission rule of a state folder (a coordinator's run folder, a site's
state folder): folders 0700, files 0600, whoever writes them (:func:`private`)."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path


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
    and so that it survives a crash once this returns."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
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
