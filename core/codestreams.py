"""Headers of compressed pixel frames: JPEG (ISO 10918), JPEG-LS (ISO 14495), JPEG 2000 (ISO
15444) and RLE (PS3.5 G), read without decoding.

A frame's own header says how many rows, columns and components it holds and whether it is
complete (ends with its end-of-image marker). Comparing that with the data set's pixel
description finds most broken encapsulated data in microseconds, before (or instead of) a full
decode. PS3.5 A.4 requires these to agree with Rows, Columns and Samples per Pixel.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = [
    "CodestreamError",
    "JPEG2000_SYNTAXES",
    "JPEG_LS_SYNTAXES",
    "JPEG_SYNTAXES",
    "RLE_SYNTAX",
    "StreamHeader",
    "read_header",
    "rle_segment_count",
]

JPEG_SYNTAXES = frozenset(
    {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70"}
)
"""JPEG Baseline, Extended (8 and 12 bit), Lossless Process 14 and its SV1 selection."""
JPEG_LS_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"})
"""JPEG-LS lossless and near-lossless."""
JPEG2000_SYNTAXES = frozenset(
    {
        "1.2.840.10008.1.2.4.90",
        "1.2.840.10008.1.2.4.91",
        "1.2.840.10008.1.2.4.201",
        "1.2.840.10008.1.2.4.202",
        "1.2.840.10008.1.2.4.203",
    }
)
"""JPEG 2000 (lossless only, lossy) and High-Throughput JPEG 2000."""
RLE_SYNTAX = "1.2.840.10008.1.2.5"
"""RLE Lossless (PS3.5 Annex G)."""

_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7})
"""Start-of-frame markers: ISO 10918-1 B.1.1.3, and SOF55 of JPEG-LS (ISO 14495-1 C.2.2)."""
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"


class CodestreamError(ValueError):
    """A frame's header is malformed."""


@dataclass(frozen=True, slots=True)
class StreamHeader:
    """What a frame's header says.

    Attributes:
        rows: Image height.
        columns: Image width.
        samples: Components per pixel.
        precision: Bits per sample (the largest among components).
        signed: Whether samples are signed (JPEG 2000 only; ``None`` elsewhere).
        complete: Whether the stream ends with its end-of-image marker (EOI / EOC).
    """

    rows: int
    columns: int
    samples: int
    precision: int
    signed: bool | None
    complete: bool


def read_header(transfer_syntax_uid: str, frame: bytes) -> StreamHeader | None:
    """Return the header of one encapsulated frame, or ``None`` when ``transfer_syntax_uid``
    has no header reader here (RLE, MPEG, private syntaxes).

    Raises:
        CodestreamError: The header is malformed or missing.
    """
    if transfer_syntax_uid in JPEG_SYNTAXES or transfer_syntax_uid in JPEG_LS_SYNTAXES:
        return _jpeg(frame)
    if transfer_syntax_uid in JPEG2000_SYNTAXES:
        return _jpeg2000(frame)
    return None


def _ends_with(frame: bytes, marker: bytes) -> bool:
    """Whether the frame ends with ``marker``, allowing the padding to an even length (PS3.5
    A.4: a null byte; some encoders pad with ``ff`` instead)."""
    return marker in frame.rstrip(b"\x00")[-(len(marker) + 1) :]


def _jpeg(frame: bytes) -> StreamHeader:
    if frame[:2] != b"\xff\xd8":
        raise CodestreamError(f"starts with {frame[:2].hex()}; expected the SOI marker ffd8")
    pos = 2
    while pos + 4 <= len(frame):
        if frame[pos] != 0xFF:
            raise CodestreamError(f"byte {pos} is {frame[pos]:02x}; expected a marker (ff..)")
        marker = frame[pos + 1]
        if marker == 0xFF:  # fill byte before a marker (ISO 10918-1 B.1.1.2)
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        (length,) = struct.unpack(">H", frame[pos + 2 : pos + 4])
        if marker in _SOF:
            return _jpeg_sof(frame[pos + 4 : pos + 2 + length], _ends_with(frame, b"\xff\xd9"))
        if marker == 0xDA:
            raise CodestreamError("start of scan before any start-of-frame marker")
        pos += 2 + length
    raise CodestreamError("no start-of-frame marker")


def _jpeg_sof(segment: bytes, complete: bool) -> StreamHeader:
    # Every SOF variant, JPEG-LS's SOF55 included, starts with P, Y, X, Nf.
    if len(segment) < 6:
        raise CodestreamError(f"SOF segment of {len(segment)} bytes; expected at least 6")
    precision, rows, columns, components = struct.unpack(">BHHB", segment[:6])
    return StreamHeader(rows, columns, components, precision, None, complete)


def _jpeg2000(frame: bytes) -> StreamHeader:
    stream = _jp2_codestream(frame) if frame.startswith(_JP2_SIGNATURE) else frame
    if stream[:4] != b"\xff\x4f\xff\x51":
        raise CodestreamError(f"starts with {stream[:4].hex()}; expected SOC + SIZ (ff4fff51)")
    if len(stream) < 42:
        raise CodestreamError(f"SIZ segment truncated ({len(stream)} bytes)")
    xsiz, ysiz, xosiz, yosiz = struct.unpack(">IIII", stream[8:24])
    (components,) = struct.unpack(">H", stream[40:42])
    sizes = stream[42 : 42 + 3 * components : 3]
    if components < 1 or len(sizes) != components:
        raise CodestreamError(f"SIZ lists {components} components; the segment is shorter")
    precision = max((s & 0x7F) + 1 for s in sizes)
    signed = any(s & 0x80 for s in sizes)
    complete = _ends_with(stream, b"\xff\xd9")
    return StreamHeader(ysiz - yosiz, xsiz - xosiz, components, precision, signed, complete)


def _jp2_codestream(frame: bytes) -> bytes:
    """The contiguous codestream box (``jp2c``) of a JP2 file (ISO 15444-1 I.5.4)."""
    pos = 0
    while pos + 8 <= len(frame):
        size, kind = struct.unpack(">I4s", frame[pos : pos + 8])
        header = 8
        if size == 1:
            (size,) = struct.unpack(">Q", frame[pos + 8 : pos + 16])
            header = 16
        end = len(frame) if size == 0 else pos + size
        if kind == b"jp2c":
            return frame[pos + header : end]
        if size < header:
            break
        pos = end
    raise CodestreamError("JP2 file without a contiguous codestream box (jp2c)")


def rle_segment_count(frame: bytes) -> int:
    """Return the number of segments an RLE frame declares, after checking its header
    (PS3.5 G.5: 64 bytes, segment count then 15 offsets, the first 64, offsets increasing).

    Raises:
        CodestreamError: The header is malformed.
    """
    if len(frame) < 64:
        raise CodestreamError(f"RLE frame of {len(frame)} bytes; expected a 64-byte header")
    count, *offsets = struct.unpack("<16I", frame[:64])
    if not 1 <= count <= 15:
        raise CodestreamError(f"RLE header declares {count} segments; expected 1 to 15")
    used = offsets[:count]
    if used[0] != 64:
        raise CodestreamError(f"first RLE segment at offset {used[0]}; expected 64")
    if any(b <= a for a, b in zip(used, used[1:], strict=False)) or used[-1] >= len(frame):
        raise CodestreamError(f"RLE segment offsets {used} are not increasing inside the frame")
    return count
