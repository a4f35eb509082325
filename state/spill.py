"""Data sets received to disk: the file helpers the intake needs to take one from a file.

A C-STORE data set longer than ``limits.spill_bytes`` arrives as a file in the spool's
``.incoming`` directory (``actors.adapters.dimse_limits``); the intake copies it, behind its
Part 10 header, into the temporary file it publishes, hashing and parsing it in blocks, so a
2 GB multi-frame never sits in memory.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

from core.errors import OutOfResources

__all__ = ["BLOCK", "copy_temp", "directory_usage", "read_blocks", "read_head"]

BLOCK = 1 << 20
"""Bytes read or written per call."""


def read_blocks(path: Path) -> Iterator[bytes]:
    """The file's bytes, ``BLOCK`` at a time."""
    with path.open("rb") as f:
        while block := f.read(BLOCK):
            yield block


def read_head(path: Path, size: int) -> bytes:
    """The first ``size`` bytes of a file (fewer if it is shorter)."""
    with path.open("rb") as f:
        return f.read(size)


def copy_temp(directory: Path, name: str, header: bytes, src: Path) -> Path:
    """Write ``header`` then the bytes of ``src`` to a temporary file in ``directory``, fsync
    it and return its path (``state.files.publish`` makes it visible).

    Raises:
        OutOfResources: The disk is full (ENOSPC / EDQUOT).
        OSError: Any other I/O failure; the temporary file is removed.
    """
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{name}.{os.getpid()}.{threading.get_ident()}.part"
    try:
        with tmp.open("wb") as out:
            out.write(header)
            for block in read_blocks(src):
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno in (28, 122):  # ENOSPC, EDQUOT
            raise OutOfResources(f"disk full writing {name}: {exc}") from exc
        raise
    return tmp


def directory_usage(path: Path) -> tuple[int, int]:
    """``(bytes, files)`` of the regular files directly in ``path`` (0, 0 if it does not exist)."""
    size = files = 0
    try:
        with os.scandir(path) as entries:
            for entry in entries:
                if entry.is_file(follow_symlinks=False):
                    size += entry.stat(follow_symlinks=False).st_size
                    files += 1
    except FileNotFoundError:
        return 0, 0
    return size, files
