"""Hostile-input bounds (issue 13, item 5): capped inflate, the pixel ceiling, quota and
per-peer accounting, the spill buffer and the MLLP framer's frame tracking."""

from __future__ import annotations

import time
import zlib

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from actors.adapters.dimse_limits import SpillBuffer
from actors.adapters.mllp import MllpFramer, frame
from core.limits import InflateCapExceeded, PeerSlots, Quota, inflate_capped, pixel_count_problem
from core.validation import ReasonCode, ValidationPolicy, Validator


def deflate_bomb(mebibytes: int, prefix: bytes = b"") -> bytes:
    """A raw deflate stream of ``prefix`` then ``mebibytes`` MiB of zeros, about 1 KB per MiB.

    After a full flush a deflate stream is byte-aligned and refers to nothing before it, so one
    compressed MiB of zeros can be repeated: a 10 GiB bomb is built without compressing 10 GiB.
    """
    head = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    start = head.compress(prefix) + head.flush(zlib.Z_FULL_FLUSH)
    block = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    mib = block.compress(bytes(1 << 20)) + block.flush(zlib.Z_FULL_FLUSH)
    return start + mib * mebibytes + b"\x03\x00"  # an empty final block ends the stream


def test_inflate_returns_the_head_and_the_size():
    data = bytes(range(256)) * 1000
    raw = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    stream = raw.compress(data) + raw.flush()
    pieces = [stream[i : i + 100] for i in range(0, len(stream), 100)]
    assert inflate_capped(pieces, cap=len(data), keep=300) == (data[:300], len(data))


def test_a_ten_gib_deflate_bomb_stops_at_the_cap_in_bounded_time():
    bomb = deflate_bomb(10 * 1024, prefix=b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100")
    assert len(bomb) < 12 << 20  # ~10 MB on the wire for 10 GiB inflated
    started = time.monotonic()
    with pytest.raises(InflateCapExceeded, match=r"cap of 8388608 bytes \(max_inflated_bytes\)"):
        inflate_capped([bomb], cap=8 << 20, keep=1 << 16)
    assert time.monotonic() - started < 2.0  # it stopped at 8 MiB, it did not inflate 10 GiB


def test_the_bomb_inflates_exactly_when_under_the_cap():
    head, total = inflate_capped([deflate_bomb(3, prefix=b"abc")], cap=4 << 20, keep=5)
    assert (head, total) == (b"abc\x00\x00", 3 + (3 << 20))


def test_corrupt_deflate_data_raises_zlib_error():
    with pytest.raises(zlib.error):
        inflate_capped([b"\xff\xff\xff\xff not deflate"], cap=1 << 20, keep=10)


def test_pixel_ceiling():
    assert pixel_count_problem(512, 512, 300, 1, 1 << 31) is None
    problem = pixel_count_problem(65535, 65535, 1000, 1, 1 << 31)
    assert problem and "4294836225000 pixels" in problem and "validation.max_pixels" in problem


def test_a_pixel_bomb_is_a_validation_finding_before_any_decode():
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ds.Rows, ds.Columns, ds.NumberOfFrames = 65535, 65535, 1000  # declared; Pixel Data stays small
    started = time.monotonic()
    issues = Validator(ValidationPolicy(max_pixels=1 << 31)).check_instance(ds, "1.2.840.10008.1.2.1")
    assert time.monotonic() - started < 1.0
    assert [i.code for i in issues] == [str(ReasonCode.INVALID_VALUE)]
    assert "validation.max_pixels" in issues[0].message
    ds.Rows, ds.Columns, ds.NumberOfFrames = 128, 128, 1  # the same instance under the ceiling
    assert str(ReasonCode.INVALID_VALUE) not in {i.code for i in Validator().check_instance(ds)}


def test_quota_counts_files_and_bytes():
    quota = Quota(max_bytes=1000, max_files=3, used_bytes=900, used_files=1)
    assert not quota.take(101)
    assert quota.take(100) and quota.describe() == "2/3 files, 1000/1000 bytes"
    assert quota.take(0) and not quota.take(0)  # the third file fits, a fourth does not
    assert not Quota(0, 0).take(0)


def test_peer_slots_cap_each_peer_and_the_total():
    slots = PeerSlots(per_peer=2, total=3)
    assert [slots.acquire(p) for p in ("a", "a", "a", "b", "c")] == [True, True, False, True, False]
    slots.release("a")
    slots.release("zzz")  # never held: no effect
    assert slots.acquire("c") and slots.open == 3


def test_spill_buffer_memory_then_file_then_dropped(tmp_path):
    buffer = SpillBuffer(tmp_path, spill_bytes=100, max_bytes=250)
    buffer.write(b"a" * 60)
    assert buffer.path is None and buffer.getvalue() == b"a" * 60
    buffer.write(b"b" * 60)  # past spill_bytes: everything so far moves to a file
    assert buffer.path is not None and buffer.getvalue() == b""
    buffer.write(b"c" * 10)
    path = buffer.finish()
    assert path is not None and path.read_bytes() == b"a" * 60 + b"b" * 60 + b"c" * 10
    buffer.write(b"d" * 200)  # past max_bytes: the file is removed, the rest dropped
    assert buffer.oversized and buffer.size == 330 and not path.exists() and buffer.path is None
    buffer.write(b"e")
    assert list(tmp_path.iterdir()) == []


def test_framer_tracks_an_open_frame():
    framer = MllpFramer(1024)
    assert not framer.in_frame
    framer.feed(b"\x0bMSH|partial")
    assert framer.in_frame and framer.opened == 1
    assert [f.payload for f in framer.feed(b" end\x1c\x0d" + frame(b"MSH|2")[:3])] == [b"MSH|partial end"]
    assert framer.in_frame and framer.opened == 2
