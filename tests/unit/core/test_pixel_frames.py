"""The one-pass frame split and the prefix header read (``core._pixel_frames``) agree with
pydicom's parsers and with reading the whole frame, whatever the items hold."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.encaps import generate_frames

from core._pixel_frames import _PREFIX, _read_header, _simple_frames
from core.codestreams import CodestreamError, read_header

_ITEM = b"\xfe\xff\x00\xe0"
_J2K = "1.2.840.10008.1.2.4.90"
_JPEG = "1.2.840.10008.1.2.4.50"


def _item(payload: bytes, length: int | None = None) -> bytes:
    return _ITEM + struct.pack("<L", len(payload) if length is None else length) + payload


@settings(max_examples=200, deadline=None)
@given(
    fragments=st.lists(st.binary(max_size=40), min_size=1, max_size=4),
    table=st.sampled_from([b"", b"\x00\x00\x00\x00", b"\x00\x00\x00\x00\x10\x00\x00\x00", b"\x01\x02"]),
    declared=st.integers(1, 4),
    cut=st.integers(0, 6),
    tail=st.sampled_from([b"", b"\xfe\xff\xdd\xe0\x00\x00\x00\x00", b"\x00"]),
)
def test_the_one_pass_split_gives_pydicoms_frames(fragments, table, declared, cut, tail) -> None:
    data = _item(table) + b"".join(_item(f) for f in fragments) + tail
    data = data[: len(data) - cut] if cut < len(data) - 8 else data
    simple = _simple_frames(data, declared)
    if simple is not None:  # else pydicom's parsers split it, as before
        assert [bytes(f) for f in simple] == list(generate_frames(data, number_of_frames=declared))


def _j2k(rows: int, columns: int, padding: int, end: bytes) -> bytes:
    siz = b"\xff\x4f\xff\x51" + struct.pack(">HHIIIIIIIIH", 41, 0, columns, rows, 0, 0, 0, 0, 0, 0, 1) + b"\x0f\x01\x01"
    return siz + bytes(padding) + end


@settings(max_examples=100, deadline=None)
@given(
    padding=st.sampled_from([0, 50, _PREFIX - 30, _PREFIX + 7, 2 * _PREFIX + 10, 3 * _PREFIX]),
    end=st.sampled_from([b"\xff\xd9", b"\xff\xd9\x00", b"\xff\xd9\x00\x00", b"\x12\x34", b"\xff\xd9\xff", b""]),
    jpeg=st.booleans(),
)
def test_the_prefix_read_is_the_whole_frame_read(padding: int, end: bytes, jpeg: bool) -> None:
    if jpeg:  # SOI, an APP segment, SOF0
        app = b"\xff\xe0" + struct.pack(">H", 2 + min(padding, 60000)) + bytes(min(padding, 60000))
        frame = b"\xff\xd8" + app + b"\xff\xc0\x00\x0b\x08\x00\x20\x00\x20\x01\x01\x11\x00" + bytes(64) + end
        ts = _JPEG
    else:
        frame, ts = _j2k(32, 32, padding, end), _J2K
    try:
        whole = read_header(ts, frame)
    except CodestreamError as exc:
        whole = str(exc)
    try:
        header, complete = _read_header(ts, memoryview(frame))
        assert header is not None
        assert (header.rows, header.columns, header.samples, header.precision, header.signed, complete) == (
            whole.rows,  # type: ignore[union-attr]
            whole.columns,  # type: ignore[union-attr]
            whole.samples,  # type: ignore[union-attr]
            whole.precision,  # type: ignore[union-attr]
            whole.signed,  # type: ignore[union-attr]
            whole.complete,  # type: ignore[union-attr]
        )
    except CodestreamError as exc:
        assert str(exc) == whole
