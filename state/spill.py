"""Data sets received to disk: the file helpers the intake needs to take one from a file.

A C-STORE data set longer than ``limits.spill_bytes`` arrives as a file in the spool's
``.incoming`` directory (``actors.adapters.dimse_limits``); the intake copies it, behind its
Part 10 header, into the temporary file it publishes, hashing and parsing it in blocks, so a
2 GB multi-frame never sits in memory.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from state.files import write_all, write_temp_with

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

    def write(fd: int) -> None:
        write_all(fd, [memoryview(header)])
        for block in read_blocks(src):
            write_all(fd, [memoryview(block)])

    return write_temp_with(directory, name, write)  # owner-only file in a 0700 directory


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
