"""Grep a var directory's raw bytes for a patient's identifiers (issue 13: encryption at rest).

Every regular file is read as bytes, and so is what it inflates to when it is gzip, zlib or a
raw deflate stream (rotated logs, a deflated data set). Each needle is looked for in the
encodings it would be stored in: ASCII/UTF-8 (DICOM, HL7, JSON, SQLite text), UTF-16 (a
SQLite database in UTF-16 or a Windows tool's export), and HL7-escaped where it has a
separator (``^`` -> ``\\S\\``). Sealed files are AES-GCM ciphertext: a needle of 8 or more
characters turns up there by chance with probability ~ size / 2^64.
"""

from __future__ import annotations

import gzip
import os
import stat
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

__all__ = ["encodings", "loose_modes", "phi_hits"]


def encodings(needle: str) -> set[bytes]:
    """The byte sequences ``needle`` would appear as at rest."""
    forms = {needle, needle.replace("^", "\\S\\"), needle.replace("^", " ")}
    out = {f.encode("utf-8") for f in forms}
    return out | {f.encode("utf-16-le") for f in forms}


def _views(data: bytes) -> Iterator[tuple[str, bytes]]:
    yield "raw", data
    for name, inflate in (
        ("gzip", gzip.decompress),
        ("zlib", zlib.decompress),
        ("deflate", lambda b: zlib.decompress(b, -zlib.MAX_WBITS)),
    ):
        try:
            yield name, inflate(data)
        except (OSError, EOFError, zlib.error):
            continue


def phi_hits(root: Path, needles: Iterable[str], skip: Iterable[Path] = ()) -> list[str]:
    """``"<path> [<view>]: <needle>"`` for every needle found in a file under ``root``."""
    wanted = {n: encodings(n) for n in needles}
    skipped = {p.resolve() for p in skip}
    hits = []
    for top, _dirs, files in os.walk(root):
        for name in files:
            path = Path(top) / name
            if path.is_symlink() or not path.is_file() or any(path.resolve().is_relative_to(s) for s in skipped):
                continue
            for view, data in _views(path.read_bytes()):
                for needle, forms in wanted.items():
                    if any(form in data for form in forms):
                        hits.append(f"{path.relative_to(root)} [{view}]: {needle}")
    return hits


def loose_modes(root: Path) -> list[str]:
    """``"<path> <mode>"`` for every file or directory under ``root`` that its group or others
    may access (files must be 0600, directories 0700: umask 077)."""
    loose = []
    for top, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            path = Path(top) / name
            mode = stat.S_IMODE(path.lstat().st_mode)
            if mode & 0o077 and not path.is_symlink():
                loose.append(f"{path.relative_to(root)} {mode:o}")
    return loose
