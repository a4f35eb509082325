"""Encapsulated Pixel Data split into frames (PS3.5 A.4) and each frame's header checked
against the pixel description (``core.pixels``), without decoding.

The common layouts (every item complete; one frame, or one fragment per frame) are split in one
pass over the items, frames as memoryviews of the Pixel Data (not copied); a frame header is
read from the frame's first 4 KiB and its end marker from its last bytes. Anything else is read
by pydicom's parsers and whole frames, as before, so that findings are worded the same.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames, parse_basic_offsets, parse_fragments
from pydicom.uid import UID

from core._elements import describe
from core.codestreams import (
    JPEG2000_SYNTAXES,
    JPEG_LS_SYNTAXES,
    JPEG_SYNTAXES,
    RLE_SYNTAX,
    CodestreamError,
    StreamHeader,
    read_header,
    rle_segment_count,
)
from core.reasons import Problem, ReasonCode

if TYPE_CHECKING:
    from core.pixels import PixelDescription

__all__ = ["header_problems", "split_frames"]

_ITEM_TAG = b"\xfe\xff\x00\xe0"


def split_frames(ds: Dataset, ts: str, desc: PixelDescription) -> tuple[Sequence[bytes | memoryview], list[Problem]]:
    """Split encapsulated Pixel Data into frames (PS3.5 A.4), checking the frame count."""
    where = describe("PixelData")
    data = ds.get_item(0x7FE00010, keep_deferred=True).value
    if not isinstance(data, bytes | bytearray | memoryview) or not data:
        return [], [Problem(ReasonCode.PIXEL_DATA_MISSING, f"{where}: empty; expected fragments")]
    data = bytes(data)
    if data[:4] != _ITEM_TAG:
        return [], [
            Problem(
                ReasonCode.PIXEL_DATA_UNDECODABLE,
                f"{where}: not encapsulated; expected an item sequence (PS3.5 A.4) for {UID(ts).name}",
            )
        ]
    simple = _simple_frames(data, desc.frames)
    return (simple, []) if simple is not None else _pydicom_frames(data, desc.frames)


def _pydicom_frames(data: bytes, declared: int) -> tuple[Sequence[bytes | memoryview], list[Problem]]:
    """Frames as pydicom splits them, for any layout; its errors are quoted in the findings."""
    where = describe("PixelData")
    try:
        offsets = parse_basic_offsets(data)
        count, _ = parse_fragments(data)
    except (ValueError, EOFError) as exc:
        return [], [
            Problem(
                ReasonCode.PIXEL_DATA_UNDECODABLE,
                f"{where}: fragments cannot be read ({exc}); expected PS3.5 A.4 items",
            )
        ]
    if (offsets and len(offsets) != declared) or count < declared:
        found = len(offsets) if offsets else count
        what = "Basic Offset Table entries" if offsets else "fragments"
        return [], [
            Problem(
                ReasonCode.FRAME_COUNT_MISMATCH,
                f"{describe('NumberOfFrames')}: got {declared}; the Pixel Data has {found} {what}",
            )
        ]
    try:
        frames = list(generate_frames(data, number_of_frames=declared))
    except (ValueError, EOFError, IndexError) as exc:
        return [], [
            Problem(ReasonCode.FRAME_COUNT_MISMATCH, f"{where}: cannot be split into {declared} frame(s): {exc}")
        ]
    if len(frames) != declared:
        return [], [
            Problem(
                ReasonCode.FRAME_COUNT_MISMATCH,
                f"{describe('NumberOfFrames')}: got {declared}; found {len(frames)} frames",
            )
        ]
    return frames, []


_U32 = struct.Struct("<L")
_ITEM_HEADER = struct.Struct("<4sL")


def _simple_frames(data: bytes, declared: int) -> Sequence[bytes | memoryview] | None:
    """The frames of the common layouts, read in one pass over the items (no BytesIO): every
    item complete and ending exactly at the end of the data, and either one frame (all its
    fragments joined, Basic Offset Table empty or of one entry) or one fragment per frame with
    an empty Basic Offset Table. These are what pydicom's ``generate_frames`` returns for them;
    anything else (``None``) is read by pydicom, whose errors the messages quote."""
    size = len(data)
    if size < 8:
        return None
    table = _U32.unpack_from(data, 4)[0]
    pos = 8 + table
    if table % 4 or pos > size or (table and (declared != 1 or table != 4)):
        return None
    spans = []
    while pos < size:
        if pos + 8 > size:
            return None
        tag, length = _ITEM_HEADER.unpack_from(data, pos)
        end = pos + 8 + length
        if tag != _ITEM_TAG or end > size:  # a delimiter, an undefined or overlong length...
            return None
        spans.append((pos + 8, end))
        pos = end
    if not spans or (declared != 1 and len(spans) != declared):
        return None
    view = memoryview(data)
    frames = [view[start:end] for start, end in spans]  # views: a frame is not copied
    return [b"".join(frames)] if declared == 1 and len(frames) > 1 else frames


_PREFIX = 4096
_HEADER_SYNTAXES = JPEG_SYNTAXES | JPEG_LS_SYNTAXES | JPEG2000_SYNTAXES


def _read_header(ts: str, frame: bytes | memoryview) -> tuple[StreamHeader | None, bool]:
    """``read_header(ts, bytes(frame))`` and whether the frame is complete, without copying a
    large frame: its header is read from its first 4 KiB and its end marker from its last bytes. A JPEG marker walk or JPEG 2000 SIZ
    segment that succeeds on the prefix read the same bytes it reads in the whole frame (a walk
    that runs past the prefix fails there); any failure, and JP2 files (whose boxes are sized
    against the whole file), are read whole, so errors are worded as before."""
    if (
        len(frame) <= 2 * _PREFIX
        or ts not in _HEADER_SYNTAXES
        or (ts in JPEG2000_SYNTAXES and frame[:4] != b"\xff\x4f\xff\x51")
    ):
        return _whole(ts, frame)
    try:
        header = read_header(ts, bytes(frame[:_PREFIX]))
    except CodestreamError:
        return _whole(ts, frame)
    return header, header is not None and _ends_with_eoi(frame)


def _whole(ts: str, frame: bytes | memoryview) -> tuple[StreamHeader | None, bool]:
    header = read_header(ts, bytes(frame))
    return header, header is not None and header.complete


def _ends_with_eoi(frame: bytes | memoryview) -> bool:
    """``codestreams._ends_with(frame, b"\\xff\\xd9")`` (EOI and EOC), reading only the tail: once
    the trailing null bytes are stripped from the last 64 bytes, three remain to look at."""
    tail = bytes(frame[-64:]).rstrip(b"\x00")
    if len(tail) < 3 and len(frame) > 64:
        tail = bytes(frame).rstrip(b"\x00")
    return b"\xff\xd9" in tail[-3:]


def header_problems(ts: str, frames: Sequence[bytes | memoryview], desc: PixelDescription) -> list[Problem]:
    where = describe("PixelData")
    for index, frame in enumerate(frames, start=1):
        try:
            problem = _header_problem(ts, frame, desc)
        except CodestreamError as exc:
            return [Problem(ReasonCode.PIXEL_DATA_UNDECODABLE, f"{where}: frame {index} header: {exc}")]
        if problem:
            code = (
                ReasonCode.PIXEL_DATA_UNDECODABLE
                if problem.startswith("truncated")
                else ReasonCode.PIXEL_ATTRIBUTES_INCONSISTENT
            )
            return [Problem(code, f"{where}: frame {index}: {problem}")]
    return []


def _header_problem(ts: str, frame: bytes | memoryview, desc: PixelDescription) -> str:
    if ts == RLE_SYNTAX:
        segments = rle_segment_count(frame)
        expected = desc.samples * max(1, desc.bits_allocated // 8)
        if segments != expected:
            return (
                f"RLE header has {segments} segments; SamplesPerPixel {desc.samples} x "
                f"BitsAllocated {desc.bits_allocated} / 8 needs {expected}"
            )
        return ""
    header, complete = _read_header(ts, frame)
    if header is None:
        return ""
    if (header.rows, header.columns, header.samples) != (desc.rows, desc.columns, desc.samples):
        return (
            f"the codestream holds {header.rows} x {header.columns} x {header.samples} "
            f"samples; Rows x Columns x SamplesPerPixel say {desc.rows} x {desc.columns} x "
            f"{desc.samples}"
        )
    if header.signed is not None and header.signed != bool(desc.pixel_representation):
        return (
            f"the JPEG 2000 codestream is {'signed' if header.signed else 'unsigned'}; "
            f"PixelRepresentation (0028,0103) says {desc.pixel_representation}"
        )
    if not complete:
        return "truncated: the codestream has no end-of-image marker"
    return ""
