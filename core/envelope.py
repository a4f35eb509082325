"""AES-256-GCM envelopes for data at rest: versioned keys, streamed in segments.

Every file that may carry PHI (spool, rejected, quarantine, outbox, blobs) and every PHI-bearing
column can be stored *sealed*. The format, chosen so that a 2 GB multi-frame never has to be
held in memory and so that a key can be rotated:

    header  = b"PAIE" | version (1 byte, 1) | len(key_id) (1 byte) | key_id (ASCII)
              | nonce prefix (8 random bytes) | segment size (4 bytes, big-endian)
    segment = AES-256-GCM(key, nonce = prefix | index (4 bytes), plaintext[<= segment size],
                          aad = header | index | final flag (1 byte))

The segment index and the final flag in each segment's associated data stop segments from
being reordered, dropped or the file from being truncated at a segment boundary (the STREAM
construction of Hoang, Reyhanitabar, Rogaway and Vizár). The key id in the header selects the
key, so files sealed under a retired key still open while ``pacsai keys rotate`` re-seals them.

Pure: keys come in as bytes; nothing here reads files, the environment or the clock. Random
nonce prefixes come from ``os.urandom`` (a 2^-64 collision chance per pair of files under one
key; each file's segments then count up).
"""

from __future__ import annotations

import itertools
import os
import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["EnvelopeError", "Keyring", "MAGIC", "Scratch", "SegmentReader", "is_sealed"]

MAGIC = b"PAIE"
VERSION = 1
SEGMENT = 1 << 20
"""Plaintext bytes per segment: 1 MiB keeps the 16-byte tags negligible and memory bounded."""
TAG = 16
_ALIGN = 64
"""``Scratch`` places each sealed segment at its file offset modulo this (see ``_encrypt``)."""
KEY_ID = r"^[A-Za-z0-9._-]{1,64}$"


class EnvelopeError(ValueError):
    """A sealed blob is malformed, was altered, or names a key this keyring lacks."""


@dataclass(slots=True)
class Scratch:
    """A writer thread's reusable output buffer for ``Keyring.seal_stream`` (one segment):
    sealing then allocates nothing per file, which on a busy intake costs more than the cipher
    (fresh 0.5 MiB buffers are page-faulted and zeroed by the kernel each time)."""

    sealed: bytearray = field(default_factory=lambda: bytearray(SEGMENT + TAG + _ALIGN))


def _joined(views: list[memoryview]) -> bytes | memoryview:
    """One segment's plaintext: the view itself when it is one piece (no copy)."""
    return views[0] if len(views) == 1 else b"".join(views)


def _encrypt(
    aead: AESGCM, key: bytes, head: _Header, index: int, pending: list[memoryview], final: bool, scratch: Scratch | None
) -> bytes | memoryview:
    """Seal one segment; into ``scratch.sealed`` when given and it fits, piece by piece (the
    Part 10 header and the data set are two buffers: not joined, GCM runs over both).

    In ``scratch`` the segment starts at its file offset modulo 64: the kernel copies a buffer
    whose alignment differs from the file offset's about ten times slower (measured: 190 vs
    18 us for 0.5 MiB), and the header puts segments at odd offsets.
    """
    nonce, aad = head.nonce(index), head.aad(index, final)
    size = sum(len(v) for v in pending)
    if scratch is None or size + TAG + _ALIGN > len(scratch.sealed):
        return aead.encrypt(nonce, _joined(pending), aad)
    shift = (len(head.raw) + index * (head.segment + TAG)) % _ALIGN
    out = memoryview(scratch.sealed)[shift:]
    if len(pending) == 1:
        aead.encrypt_into(nonce, pending[0], aad, out[: size + TAG])
        return out[: size + TAG]
    enc = Cipher(algorithms.AES(key), modes.GCM(nonce)).encryptor()
    enc.authenticate_additional_data(aad)
    at = 0
    for view in pending:  # GCM is a stream mode: each piece's ciphertext is as long as it is
        at += enc.update_into(view, out[at:])
    enc.finalize()
    out[at : at + TAG] = enc.tag
    return out[: at + TAG]


def is_sealed(prefix: bytes | memoryview) -> bool:
    """Whether data starting with ``prefix`` (at least 5 bytes) is one of our envelopes."""
    return bytes(prefix[:5]) == MAGIC + bytes([VERSION])


@dataclass(frozen=True, slots=True)
class _Header:
    key_id: str
    prefix: bytes
    segment: int
    raw: bytes

    @classmethod
    def make(cls, key_id: str, segment: int) -> _Header:
        kid = key_id.encode("ascii")
        prefix = os.urandom(8)
        raw = MAGIC + bytes([VERSION, len(kid)]) + kid + prefix + struct.pack(">I", segment)
        return cls(key_id, prefix, segment, raw)

    @classmethod
    def parse(cls, data: bytes | memoryview) -> _Header:
        if len(data) < 6 or not is_sealed(data):
            raise EnvelopeError("not a sealed envelope (bad magic or version)")
        n = data[5]
        end = 6 + n + 12
        if len(data) < end:
            raise EnvelopeError("sealed envelope header is truncated")
        kid = bytes(data[6 : 6 + n]).decode("ascii", "replace")
        prefix = bytes(data[6 + n : 6 + n + 8])
        (segment,) = struct.unpack(">I", bytes(data[6 + n + 8 : end]))
        if not 0 < segment <= 1 << 26:
            raise EnvelopeError(f"sealed envelope declares segment size {segment}")
        return cls(kid, prefix, segment, bytes(data[:end]))

    def aad(self, index: int, final: bool) -> bytes:
        return self.raw + struct.pack(">IB", index, 1 if final else 0)

    def nonce(self, index: int) -> bytes:
        return self.prefix + struct.pack(">I", index)


@dataclass(frozen=True, eq=False)  # hashed by identity: a cache key (api.dicomweb)
class Keyring:
    """Data keys by id (32 bytes each); ``current`` seals, every key opens.

    Attributes:
        keys: Key id -> 32-byte AES-256 key. Retired keys stay until nothing is sealed under them.
        current: The id new envelopes are sealed with.
    """

    keys: Mapping[str, bytes]
    current: str
    _aead: dict[str, AESGCM] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.current not in self.keys:
            raise EnvelopeError(f"current data key {self.current!r} is not in the keyring")
        for kid, key in self.keys.items():
            if len(key) != 32:
                raise EnvelopeError(f"data key {kid!r} is {len(key)} bytes; AES-256 needs 32")
            kid.encode("ascii")
            self._aead[kid] = AESGCM(key)

    def _cipher(self, key_id: str) -> AESGCM:
        try:
            return self._aead[key_id]
        except KeyError:
            raise EnvelopeError(f"sealed under data key {key_id!r}, which this keyring lacks") from None

    def seal_stream(
        self, chunks: Iterable[bytes | memoryview], segment: int = SEGMENT, scratch: Scratch | None = None
    ) -> Iterator[bytes | memoryview]:
        """Yield the header, then one sealed segment per ``segment`` bytes of ``chunks``.

        A segment that lies inside one chunk is encrypted from a view of it (no copy): sealing
        the spool's hot path costs the cipher's one pass, not extra copies of each instance.
        With ``scratch`` (a writer's own buffers) nothing is allocated per segment: each is
        sealed into ``scratch`` and yielded as a view that is valid until the next one is asked
        for, so the caller must write it out first.
        """
        head = _Header.make(self.current, segment)
        aead, key = self._cipher(self.current), self.keys[self.current]
        yield head.raw
        pending: list[memoryview] = []
        size = index = 0
        for chunk in chunks:
            view = memoryview(chunk).cast("B")
            while len(view):
                if size == segment:  # more follows: the full segment is not the final one
                    yield _encrypt(aead, key, head, index, pending, False, scratch)
                    pending, size, index = [], 0, index + 1
                take = view[: segment - size]
                pending.append(take)
                size += len(take)
                view = view[len(take) :]
        yield _encrypt(aead, key, head, index, pending, True, scratch)

    def open_stream(self, chunks: Iterable[bytes | memoryview]) -> Iterator[bytes]:
        """Yield the plaintext of a sealed stream segment by segment; raise on any alteration."""
        it = iter(chunks)
        buf = bytearray()
        head: _Header | None = None
        for chunk in it:
            buf += chunk
            if len(buf) >= 6 and len(buf) >= 6 + buf[5] + 12:
                head = _Header.parse(buf)
                del buf[: len(head.raw)]
                break
        if head is None:
            raise EnvelopeError("sealed envelope header is truncated")
        aead, step, index = self._cipher(head.key_id), head.segment + TAG, 0
        for chunk in itertools.chain([b""], it):  # first drain what came with the header
            buf += chunk
            while len(buf) > step:
                yield self._open_one(aead, head, index, bytes(buf[:step]), final=False)
                del buf[:step]
                index += 1
        yield self._open_one(aead, head, index, bytes(buf), final=True)

    @staticmethod
    def _open_one(aead: AESGCM, head: _Header, index: int, data: bytes | memoryview, final: bool) -> bytes:
        try:
            return aead.decrypt(head.nonce(index), data, head.aad(index, final))
        except InvalidTag:
            raise EnvelopeError(f"sealed segment {index} fails authentication (altered or truncated)") from None

    def seal(self, data: bytes | memoryview) -> bytes:
        """Seal ``data`` whole (small values: ledger columns, HL7 messages, outbox objects).

        What fits one segment (every column value) is sealed in one call, without the
        stream's generator: the HL7 store seals four or five values a message.
        """
        if len(data) > SEGMENT:
            return b"".join(self.seal_stream([data]))
        head = _Header.make(self.current, SEGMENT)
        sealed = self._cipher(self.current).encrypt(head.nonce(0), data, head.aad(0, True))
        return head.raw + sealed

    def open(self, data: bytes | memoryview) -> bytes:
        """Open a sealed ``data`` whole; raise ``EnvelopeError`` if altered or the key is unknown.

        Each segment is decrypted from a view of ``data``: one segment (up to 1 MiB, most
        instances) straight to the bytes returned, more into one buffer copied once.
        """
        view = memoryview(data).cast("B")
        head = _Header.parse(view[: 6 + 255 + 12])
        aead, step = self._cipher(head.key_id), head.segment + TAG
        body = view[len(head.raw) :]
        count = max(1, -(-len(body) // step))
        if len(body) < (count - 1) * step + TAG:
            raise EnvelopeError("sealed envelope is truncated")
        if count == 1:
            return self._open_one(aead, head, 0, body, final=True)
        out = bytearray(len(body) - count * TAG)
        for index in range(count):
            piece = body[index * step : (index + 1) * step]
            target = memoryview(out)[index * head.segment : index * head.segment + len(piece) - TAG]
            try:
                aead.decrypt_into(head.nonce(index), piece, head.aad(index, index == count - 1), target)
            except InvalidTag:
                raise EnvelopeError(f"sealed segment {index} fails authentication (altered or truncated)") from None
        return bytes(out)

    def segments(self, head: bytes | memoryview, sealed_size: int) -> SegmentReader:
        """What opening a sealed blob of ``sealed_size`` bytes one segment at a time needs,
        from its first bytes (at least its header: 6 + 255 + 12 bytes, or the whole blob).

        Raises:
            EnvelopeError: The header is malformed, names a key this keyring lacks, or the
                size cannot be a whole envelope (truncated).
        """
        header = _Header.parse(head)
        body = sealed_size - len(header.raw)
        step = header.segment + TAG
        count = max(1, -(-body // step))
        if body < (count - 1) * step + TAG:
            raise EnvelopeError("sealed envelope is truncated")
        return SegmentReader(self._cipher(header.key_id), header, count, body - count * TAG)

    def key_id_of(self, data: bytes | memoryview) -> str:
        """The id of the key ``data`` was sealed with (for rotation: which files to re-seal)."""
        return _Header.parse(data).key_id


@dataclass(frozen=True)
class SegmentReader:
    """Random access to a sealed blob's plaintext, one segment at a time (``Keyring.segments``):
    a reader of the header of a 2 GB multi-frame decrypts its first segment, not 2 GB. Each
    segment is authenticated as it is opened (its index and whether it is the last are in its
    associated data, so a segment moved or a blob cut short still fails); segments never
    opened are not checked, which is what a header read asks for.

    Attributes:
        count: Segments in the blob.
        size: Plaintext bytes in all.
    """

    _aead: AESGCM
    _header: _Header
    count: int
    size: int

    @property
    def segment(self) -> int:
        """Plaintext bytes per segment (the last may hold fewer)."""
        return self._header.segment

    def span(self, index: int) -> tuple[int, int]:
        """Where segment ``index`` lies in the sealed blob: offset and length."""
        step = self._header.segment + TAG
        start = len(self._header.raw) + index * step
        return start, (self.size - index * self._header.segment + TAG) if index == self.count - 1 else step

    def open(self, index: int, sealed: bytes | memoryview) -> bytes:
        """The plaintext of segment ``index`` from its sealed bytes (``span``).

        Raises:
            EnvelopeError: It fails authentication (altered, moved, or the blob truncated).
        """
        return Keyring._open_one(self._aead, self._header, index, sealed, final=index == self.count - 1)
