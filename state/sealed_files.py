"""PHI-bearing files at rest: written sealed (``core.envelope``), read whether sealed or not.

The spool, rejected data, the outbox and the blob store write through ``write_sealed`` (a
temporary file that ``state.files.publish`` or ``rename_many`` then makes visible) and read
through ``read_plain`` / ``open_plain``. A reader looks at the first bytes: a sealed file is
opened with the keyring, a plaintext one (written before encryption was turned on, or with it
off) is returned as it is, so turning encryption on needs no migration and ``pacsai keys
rotate`` can re-seal the files in place (``reseal_tree``).

The keyring is the one ``state.ledger.open_ledger`` loaded (``Ledger.keyring``); ``None`` means
encryption is off: files are written in clear, and a sealed file cannot be read.
"""

from __future__ import annotations

import io
import itertools
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from io import BytesIO
from pathlib import Path
from typing import Any, BinaryIO

from pydicom import dcmread
from pydicom.dataset import Dataset

from core.envelope import MAGIC, EnvelopeError, Keyring, Scratch, SegmentReader, is_sealed
from state.files import durable_write, publish, write_all, write_temp, write_temp_with
from state.layout import VarLayout
from state.spill import copy_temp, read_blocks

__all__ = [
    "EnvelopeError",
    "open_plain",
    "read_plain",
    "reseal_tree",
    "sealed_roots",
    "sealed_under",
    "write_sealed",
    "write_sealed_final",
]

_TEMPORARY = ".part"
"""``state.files.write_temp``'s suffix: a file being written, left to its writer."""


def sealed_roots(layout: VarLayout) -> tuple[Path, ...]:
    """The directories whose files may carry PHI: spool (quarantine included), rejected, outbox, blobs."""
    return (layout.spool, layout.rejected, layout.outbox, layout.blobs)


_local = threading.local()


def _scratch() -> Scratch:
    """This thread's sealing buffers (the intake writes from a pool of threads)."""
    scratch = getattr(_local, "scratch", None)
    if scratch is None:
        scratch = _local.scratch = Scratch()
    return scratch


def _write_stream(directory: Path, name: str, chunks: Iterable[bytes | memoryview]) -> Path:
    """Write ``chunks`` (each before the next is asked for) to a temporary file, fsync it.

    Raises:
        OutOfResources: The disk is full.
        OSError: Any other I/O failure; the temporary file is removed.
    """

    def write(fd: int) -> None:
        held: list[memoryview] = []
        for chunk in chunks:  # the header goes with the first segment: one aligned writev
            held.append(memoryview(chunk))
            if not isinstance(chunk, bytes):  # a scratch view: valid until the next chunk
                write_all(fd, held)
                held = []
        write_all(fd, held)

    return write_temp_with(directory, name, write)


def write_sealed(directory: Path, name: str, parts: Sequence[bytes | memoryview], ring: Keyring | None) -> Path:
    """``state.files.write_temp`` of ``parts`` sealed under ``ring.current`` (clear when ``None``).

    Each segment is sealed into this thread's scratch buffers and written before the next:
    no copy of the instance and no allocation per file.

    Raises:
        OutOfResources: The disk is full.
        OSError: Any other I/O failure; the temporary file is removed.
    """
    if ring is None:
        return write_temp(directory, name, parts)
    return _write_stream(directory, name, ring.seal_stream(parts, scratch=_scratch()))


def copy_sealed(directory: Path, name: str, header: bytes, src: Path, ring: Keyring | None) -> Path:
    """``state.spill.copy_temp`` (``header`` then the file ``src``, streamed), sealed when
    ``ring`` is given: a 2 GB data set received to disk is sealed 1 MiB at a time.

    Raises:
        OutOfResources: The disk is full.
        OSError: Any other I/O failure; the temporary file is removed.
    """
    if ring is None:
        return copy_temp(directory, name, header, src)
    chunks = itertools.chain([header], read_blocks(src))
    return _write_stream(directory, name, ring.seal_stream(chunks, scratch=_scratch()))


def write_sealed_final(final: Path, data: bytes | memoryview, ring: Keyring | None) -> None:
    """``state.files.durable_write`` of ``data``, sealed when ``ring`` is given."""
    if ring is None:
        durable_write(final, data)
    else:
        publish(write_sealed(final.parent, final.name, [data], ring), final)


def read_plain(path: Path | str, ring: Keyring | None) -> bytes:
    """The plaintext of the file at ``path``, sealed or not.

    Raises:
        EnvelopeError: The file is sealed and altered, or ``ring`` lacks its key (or is ``None``).
        OSError: The file cannot be read.
    """
    data = Path(path).read_bytes()
    if not is_sealed(data[:5]):
        return data
    if ring is None:
        raise EnvelopeError(f"{Path(path).name} is sealed but encryption is off (storage.encryption)")
    return ring.open(data)


class _SealedFile(io.RawIOBase):
    """The plaintext of a sealed file, decrypted one segment (1 MiB) at a time as it is read:
    a reader that stops early (a header, ``stop_before_pixels``) decrypts only the segments it
    reached, and the file is never held whole. Seekable; the last segment opened is kept."""

    def __init__(self, path: Path | str, ring: Keyring) -> None:
        super().__init__()
        self._file = open(path, "rb")  # noqa: SIM115 - closed by close()
        try:
            head = self._file.read(6 + 255 + 12)
            self._segments: SegmentReader = ring.segments(head, os.fstat(self._file.fileno()).st_size)
        except BaseException:
            self._file.close()
            raise
        self._pos = 0
        self._kept: tuple[int, bytes] = (-1, b"")

    @property
    def segments(self) -> int:
        """How many segments the file has."""
        return self._segments.count

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._segments.size}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._pos = base + offset
        return self._pos

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (all that is left when negative), across segments: short only
        at the end (``RawIOBase.read`` stops at a segment's end, which pydicom takes for EOF)."""
        left = self._segments.size - self._pos
        want = left if size is None or size < 0 else min(size, left)
        out = bytearray(max(want, 0))
        done = 0
        while done < want:
            n = self.readinto(memoryview(out)[done:])
            if not n:
                break
            done += n
        return bytes(out[:done])

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: Any) -> int:
        segments = self._segments
        if self._pos >= segments.size:
            return 0
        index, start = divmod(self._pos, segments.segment)
        if self._kept[0] != index:
            offset, length = segments.span(index)
            self._file.seek(offset)
            sealed = self._file.read(length)
            if len(sealed) != length:
                raise EnvelopeError(f"sealed segment {index} is truncated")
            self._kept = (index, segments.open(index, sealed))
        plain = self._kept[1]
        view = memoryview(buffer).cast("B")
        n = min(len(view), len(plain) - start)
        view[:n] = plain[start : start + n]
        self._pos += n
        return n

    def close(self) -> None:
        self._file.close()
        self._kept = (-1, b"")
        super().close()


def open_plain(path: Path | str, ring: Keyring | None) -> BinaryIO:
    """A binary file object over the plaintext of ``path`` (for ``pydicom.dcmread``).

    A plaintext file is opened as a file; a sealed one of several segments is decrypted a
    segment at a time as it is read (``_SealedFile``), one of a single segment at once. Either
    way pydicom reads only what it needs (e.g. with ``stop_before_pixels``).

    Raises:
        EnvelopeError: The file is sealed and ``ring`` is ``None``, lacks its key, or its
            header or size is not an envelope's (a segment that fails authentication raises
            when it is read).
        OSError: The file cannot be read.
    """
    f = open(path, "rb")  # noqa: SIM115 - returned to the caller, who closes it
    if not is_sealed(f.read(5)):
        f.seek(0)
        return f
    f.close()
    if ring is None:
        raise EnvelopeError(f"{Path(path).name} is sealed but encryption is off (storage.encryption)")
    sealed = _SealedFile(path, ring)
    if sealed.segments > 1:
        return sealed  # type: ignore[return-value]  # not a BufferedReader: pydicom would take its name
    with sealed:  # one segment (most instances): in memory, where pydicom's many small reads are cheap
        return BytesIO(sealed.read())


def dcmread_plain(path: Path | str, ring: Keyring | None, **kwargs: Any) -> Dataset:
    """``pydicom.dcmread`` of a file sealed or not (``kwargs``: ``stop_before_pixels`` ...).

    A sealed file read in part (``stop_before_pixels`` or ``specific_tags``) is decrypted
    only as far as pydicom reads (a 2 GB multi-frame's header: its first segment, not 2 GB);
    read whole, it is opened in one piece as before.

    Raises:
        EnvelopeError: The file is sealed and cannot be opened (see ``read_plain``).
        OSError: The file cannot be read.
    """
    with open(path, "rb") as f:
        sealed = is_sealed(f.read(5))
    if not sealed:  # by name, as before: pydicom then keeps no buffer (a dataset deep-copies)
        return dcmread(path, **kwargs)
    if not (kwargs.get("stop_before_pixels") or kwargs.get("specific_tags")):
        return dcmread(BytesIO(read_plain(path, ring)), **kwargs)  # left open: copies read it
    with open_plain(path, ring) as f:
        ds = dcmread(f, **kwargs)
    ds.buffer = None  # closed: nothing is read from it later (no deferred elements)
    return ds


def sealed_under(path: Path, ring: Keyring) -> bool:
    """Whether the file at ``path`` is sealed under ``ring.current``."""
    with open(path, "rb") as f:
        head = f.read(6 + 255 + 12)
    if not is_sealed(head[:5]):
        return False
    try:
        return ring.key_id_of(head) == ring.current
    except EnvelopeError:
        return False


def _candidates(roots: Sequence[Path]) -> Iterator[Path]:
    """Every regular file under ``roots`` but temporary ones."""
    for root in roots:
        for top, _dirs, files in os.walk(root):
            for name in files:
                path = Path(top) / name
                if not name.endswith(_TEMPORARY) and path.is_file() and not path.is_symlink():
                    yield path


def count_not_current(roots: Sequence[Path], ring: Keyring) -> int:
    """Files under ``roots`` not sealed under ``ring.current`` (0: retired keys may be dropped)."""
    return sum(1 for path in _candidates(roots) if not sealed_under(path, ring))


def reseal_tree(roots: Sequence[Path], ring: Keyring, *, clear_too: bool = True) -> int:
    """Re-seal every file under ``roots`` (``sealed_roots``) not sealed under ``ring.current``.

    Each file is replaced atomically (temporary file, fsync, rename), so a crash leaves either
    version, both readable while ``ring`` keeps the old key; running it again finishes the job.
    ``clear_too``: files in clear (written before encryption was on) are sealed as well.

    Returns:
        How many files were re-sealed.

    Raises:
        EnvelopeError: A sealed file is altered or names a key ``ring`` lacks.
    """
    done = 0
    for path in _candidates(roots):
        with open(path, "rb") as f:
            head = f.read(len(MAGIC) + 1)
        sealed = is_sealed(head)
        if (not sealed and not clear_too) or (sealed and sealed_under(path, ring)):
            continue
        data = read_plain(path, ring)
        publish(write_sealed(path.parent, path.name, [data], ring), path)
        done += 1
    return done
