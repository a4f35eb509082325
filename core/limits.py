"""Hostile-input bounds as pure logic: capped inflate, the pixel-count ceiling, quota and
per-peer accounting (issue 13, item 5).

The adapters (``actors.adapters.dimse``, ``actors.adapters.mllp``, ``state.spool``) hold the
sockets and files; what they decide with - how much may be inflated, whether a declared image
is too large to decode, whether a kept file fits the quota, whether a peer may open one more
connection - lives here so it is tested without a socket.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

from core.errors import OutOfResources

__all__ = ["InflateCapExceeded", "PeerSlots", "Quota", "inflate_capped", "pixel_count_problem"]

_STEP = 1 << 20
"""Most bytes one ``decompress`` call may produce: memory per call is bounded by this."""


class InflateCapExceeded(OutOfResources):
    """A deflated data set inflates past the configured cap (a deflate bomb, or simply too large)."""


def inflate_capped(chunks: Iterable[bytes | memoryview], cap: int, keep: int) -> tuple[bytes, int]:
    """Inflate a raw deflate stream (PS3.5 A.5: no zlib header) without ever holding more than
    ``keep`` bytes of its output.

    Each ``decompress`` call is bounded by ``max_length``, so a 1 KB input that would inflate
    to 10 GB costs at most ``cap`` bytes of work and ``keep`` + 1 MiB of memory.

    Args:
        chunks: The compressed bytes, in pieces (a file read in blocks, or one ``bytes``).
        cap: Most inflated bytes allowed.
        keep: How many inflated bytes to return (the head a parser needs).

    Returns:
        ``(head, total)``: the first ``keep`` inflated bytes and the inflated size.

    Raises:
        InflateCapExceeded: The stream inflates past ``cap``.
        zlib.error: The stream is not valid deflate data.

    >>> data = zlib.compress(b"x" * 5000)[2:-4]
    >>> head, total = inflate_capped([data], cap=10_000, keep=3)
    >>> head, total
    (b'xxx', 5000)
    """
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    head = bytearray()
    total = 0
    for chunk in chunks:
        pending = bytes(chunk)
        while pending and not inflater.eof:
            out = inflater.decompress(pending, _STEP)
            pending = inflater.unconsumed_tail
            total += len(out)
            if total > cap:
                raise InflateCapExceeded(f"deflated data set inflates past the cap of {cap} bytes (max_inflated_bytes)")
            if len(head) < keep:
                head += out[: keep - len(head)]
        if inflater.eof:
            break
    total += len(tail := inflater.flush())
    if total > cap:
        raise InflateCapExceeded(f"deflated data set inflates past the cap of {cap} bytes (max_inflated_bytes)")
    head += tail[: max(0, keep - len(head))]
    return bytes(head), total


def pixel_count_problem(rows: int, columns: int, frames: int, samples: int, ceiling: int) -> str | None:
    """Why an image's declared size is refused before any decode, or ``None`` if it fits.

    >>> pixel_count_problem(65535, 65535, 1000, 1, 1 << 31)[:40]
    'Rows x Columns x Number of Frames x Samp'
    >>> pixel_count_problem(512, 512, 1, 1, 1 << 31) is None
    True
    """
    count = max(rows, 0) * max(columns, 0) * max(frames, 1) * max(samples, 1)
    if count <= ceiling:
        return None
    return (
        f"Rows x Columns x Number of Frames x Samples per Pixel: {rows} x {columns} x {frames} x "
        f"{samples} = {count} pixels; expected at most {ceiling} (validation.max_pixels), not decoded"
    )


@dataclass(slots=True)
class Quota:
    """Bytes and files kept in a store with a byte and a file quota (0: nothing may be kept).

    Not thread-safe by itself; the adapter holding the store serialises ``take``.

    >>> q = Quota(max_bytes=100, max_files=2)
    >>> q.take(60), q.take(60), q.take(10), q.take(10)
    (True, False, True, False)
    """

    max_bytes: int
    max_files: int
    used_bytes: int = 0
    used_files: int = 0

    def take(self, size: int) -> bool:
        """Account for one more file of ``size`` bytes if it fits; whether it did."""
        if self.used_files + 1 > self.max_files or self.used_bytes + size > self.max_bytes:
            return False
        self.used_files += 1
        self.used_bytes += size
        return True

    def describe(self) -> str:
        """The quota and its use, for a log line or a status comment."""
        return f"{self.used_files}/{self.max_files} files, {self.used_bytes}/{self.max_bytes} bytes"


class PeerSlots:
    """Concurrent connections per peer address, and in all, with a cap on each.

    >>> slots = PeerSlots(per_peer=1, total=2)
    >>> slots.acquire("a"), slots.acquire("a"), slots.acquire("b"), slots.acquire("c")
    (True, False, True, False)
    >>> slots.release("a"); slots.acquire("c")
    True
    """

    def __init__(self, per_peer: int, total: int) -> None:
        """Args:
        per_peer: Most connections one address may hold.
        total: Most connections in all.
        """
        self._per_peer, self._total = per_peer, total
        self._open: dict[str, int] = {}
        self._count = 0
        self._lock = threading.Lock()

    def acquire(self, peer: str) -> bool:
        """Take a slot for ``peer`` if both caps allow; whether it was taken."""
        with self._lock:
            held = self._open.get(peer, 0)
            if held >= self._per_peer or self._count >= self._total:
                return False
            self._open[peer] = held + 1
            self._count += 1
            return True

    def release(self, peer: str) -> None:
        """Give back a slot ``peer`` took."""
        with self._lock:
            held = self._open.get(peer, 0)
            if held <= 0:
                return
            self._count -= 1
            if held == 1:
                del self._open[peer]
            else:
                self._open[peer] = held - 1

    @property
    def open(self) -> int:
        """Connections holding a slot now."""
        return self._count
