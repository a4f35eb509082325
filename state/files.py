"""Durable files: write, fsync, atomic rename, fsync the directory (the one durability helper).

A file written by ``durable_write`` either exists with all its bytes after a crash or power loss,
or does not exist at all. This is what lets the listener answer C-STORE success, and what the
blob store, the outbox and the SR writer rely on too.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from core.errors import OutOfResources

__all__ = [
    "PRIVATE_UMASK",
    "check_free_space",
    "durable_write",
    "ensure_dir",
    "fsync_dir",
    "fsync_dirs",
    "private_umask",
    "publish",
    "rename_many",
    "write_all",
    "write_temp",
    "write_temp_with",
]

logger = logging.getLogger(__name__)

PRIVATE_UMASK = 0o077
"""Files 0600 and directories 0700 whoever creates them (SQLite, logs, Ray's own files too)."""


def private_umask() -> None:
    """Set this process's umask to ``PRIVATE_UMASK`` (idempotent; children inherit it).

    Called where processes start: the composition root before it starts Ray (so the raylet
    and every worker it forks inherit it), each actor when it opens its ledger, and
    ``open_ledger`` for the API replicas and command-line tools.
    """
    os.umask(PRIVATE_UMASK)


def fsync_dir(path: Path) -> None:
    """fsync a directory so that entries created or renamed in it survive a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_dir(path: Path) -> None:
    """Create ``path`` (and parents) durably, each 0700: each new directory entry is fsynced."""
    if path.is_dir():
        return
    ensure_dir(path.parent)
    try:
        path.mkdir(mode=0o700)  # PHI lives below: owner only, whatever the umask
    except FileExistsError:
        return
    fsync_dir(path.parent)


def write_temp(directory: Path, name: str, parts: Sequence[bytes | memoryview]) -> Path:
    """Write ``parts`` to a temporary file in ``directory`` and fsync it; return its path.

    ``publish`` makes it visible under its final name. The OS calls release the GIL, so
    another thread can parse or hash meanwhile.

    Raises:
        OutOfResources: The disk is full (ENOSPC / EDQUOT).
        OSError: Any other I/O failure; the temporary file is removed.
    """
    return write_temp_with(directory, name, lambda fd: write_all(fd, [memoryview(p) for p in parts]))


def write_temp_with(directory: Path, name: str, write: Callable[[int], None]) -> Path:
    """The temporary-file protocol every writer of a durable file shares (plain, sealed,
    copied from a spilled data set): ``write(fd)`` fills an owner-only temporary file in
    ``directory`` (0700), which is then fsynced; ``publish`` makes it visible.

    Raises:
        OutOfResources: The disk is full (ENOSPC / EDQUOT).
        OSError: Any other I/O failure; the temporary file is removed.
    """
    ensure_dir(directory)
    # One writer thread owns each temp name, so no random name (mkstemp) is needed.
    tmp = directory / f".{name}.{os.getpid()}.{threading.get_ident()}.part"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # owner only: PHI
        try:
            write(fd)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno in (28, 122):  # ENOSPC, EDQUOT
            raise OutOfResources(f"disk full writing {name}: {exc}") from exc
        raise
    return tmp


def write_all(fd: int, views: list[memoryview]) -> None:
    """Write every byte of ``views`` to ``fd`` with as few ``writev`` calls as the OS allows."""
    while views:
        written = os.writev(fd, views)
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if views and written:
            views[0] = views[0][written:]


def publish(tmp: Path, final: Path) -> None:
    """Rename a written temporary file to its final name (atomic) and fsync the directory."""
    ensure_dir(final.parent)
    os.replace(tmp, final)
    fsync_dir(final.parent)


def rename_many(moves: Sequence[tuple[Path, Path]]) -> list[OSError | None]:
    """Rename each ``(temporary, final)`` pair (atomic each); ``fsync_dirs`` makes them durable.

    A group of files renamed together costs one directory fsync per directory instead of one
    per file: every rename is made first, so one fsync covers every entry of its directory.

    Returns:
        Per pair, ``None`` (renamed) or the ``OSError`` that stopped it; a temporary file that
        was not renamed is removed.
    """
    errors: list[OSError | None] = []
    for tmp, final in moves:
        try:
            ensure_dir(final.parent)
            os.replace(tmp, final)
            errors.append(None)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            errors.append(exc)
    return errors


def fsync_dirs(directories: Iterable[Path]) -> None:
    """fsync each directory once (``rename_many``'s entries survive a crash once it returns).

    Raises:
        OSError: A directory could not be synced (the others were).
    """
    failed: OSError | None = None
    for directory in dict.fromkeys(directories):
        try:
            fsync_dir(directory)
        except OSError as exc:
            failed = failed or exc
    if failed is not None:
        raise failed


def durable_write(final: Path, data: bytes | memoryview) -> None:
    """Write ``data`` to ``final`` so that it is on disk when this returns.

    Write to a temporary file in the same directory, fsync it, rename it over ``final``
    (atomic on POSIX), then fsync the directory.

    Raises:
        OutOfResources: The disk is full (ENOSPC / EDQUOT).
        OSError: Any other I/O failure; nothing is left at ``final``.
    """
    publish(write_temp(final.parent, final.name, [data]), final)


def check_free_space(path: Path, min_free_bytes: int) -> None:
    """Raise ``OutOfResources`` when the filesystem holding ``path`` is below its floor."""
    try:
        free = shutil.disk_usage(path).free
    except FileNotFoundError:  # a new spool: created once, not looked up on every call
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        free = shutil.disk_usage(path).free
    if free < min_free_bytes:
        raise OutOfResources(f"spool disk has {free} bytes free; the configured floor is {min_free_bytes}")
