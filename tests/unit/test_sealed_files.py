"""PHI-bearing files at rest: sealed on write, opened on read, private modes, key rotation."""

from __future__ import annotations

import hashlib
import os
import stat
from io import BytesIO
from pathlib import Path

import pytest

from actors._cli_keys import keys_rotate
from core.config import AppConfig, EncryptionConfig, StorageConfig
from core.envelope import SEGMENT, Keyring, Scratch, is_sealed
from core.records import BlobRef
from state.blobs import BlobStore
from state.data_keys import load_keyring, parse_keyring, rotated
from state.files import publish
from state.layout import VarLayout
from state.ledger import open_ledger
from state.sealed_files import (
    EnvelopeError,
    copy_sealed,
    count_not_current,
    dcmread_plain,
    open_plain,
    read_plain,
    reseal_tree,
    sealed_roots,
    sealed_under,
    write_sealed,
    write_sealed_final,
)
from state.spool import SpoolIntake
from synthetic.synthetic_dicom import make_cxr_study

NAME, PID = b"SEALTEST^PATIENT", b"SEAL0042"


@pytest.fixture
def ring() -> Keyring:
    return rotated(None, "k1")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_sealed_file_is_private_opaque_and_reads_back_while_clear_files_still_read(
    tmp_path: Path, ring: Keyring
) -> None:
    final = tmp_path / "spool" / "1.2" / "3.dcm"
    publish(write_sealed(final.parent, final.name, [b"head|", b"PATIENT " + NAME], ring), final)
    raw = final.read_bytes()
    assert is_sealed(raw) and NAME not in raw and sealed_under(final, ring)
    assert read_plain(final, ring) == b"head|PATIENT " + NAME
    with open_plain(final, ring) as f:
        assert f.read() == b"head|PATIENT " + NAME
    assert _mode(final) == 0o600 and _mode(final.parent) == 0o700 and _mode(final.parent.parent) == 0o700
    with pytest.raises(EnvelopeError, match="encryption is off"):
        read_plain(final, None)
    other = rotated(None, "k1")  # same id, another key: refused, not garbage
    with pytest.raises(EnvelopeError, match="authentication"):
        read_plain(final, other)
    legacy = tmp_path / "legacy.dcm"
    write_sealed_final(legacy, b"clear " + NAME, None)  # encryption off: in clear, still private
    assert legacy.read_bytes() == b"clear " + NAME and _mode(legacy) == 0o600
    assert read_plain(legacy, ring) == b"clear " + NAME and not sealed_under(legacy, ring)


def test_a_large_file_received_to_disk_is_sealed_streamed_in_segments(tmp_path: Path, ring: Keyring) -> None:
    src = tmp_path / "received"
    body = bytes(range(256)) * (5 * 4096 + 7)  # ~5 MiB: several segments, the last partial
    src.write_bytes(body)
    tmp = copy_sealed(tmp_path / "incoming", "x", b"HEADER", src, ring)
    raw = tmp.read_bytes()
    assert is_sealed(raw) and body[:4096] not in raw
    assert read_plain(tmp, ring) == b"HEADER" + body
    assert copy_sealed(tmp_path / "incoming", "y", b"H", src, None).read_bytes() == b"H" + body


def test_the_spool_rejected_files_and_blobs_are_sealed_and_read_through_the_ledger_keyring(tmp_path: Path) -> None:
    ledger = open_ledger(StorageConfig(var_dir=str(tmp_path)))
    layout = VarLayout.at(tmp_path)
    ring = ledger.keyring
    assert ring is not None and ledger.keyring is ring
    intake = SpoolIntake(layout.spool, layout.rejected, ledger, 1.0, _Clock(), b"k", actor="t", min_free_bytes=0)
    try:
        [ds] = make_cxr_study(seed=3, patient_id=PID.decode(), patient_name=NAME.decode(), size=64)
        buf = BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        got = intake.ingest_file(buf.getvalue(), "MODALITY")
        with pytest.raises(Exception, match="parsed"):
            intake.ingest(
                "1.2.3.4", "1.2.840.10008.5.1.4.1.1.7", b"\x08\x00\x05\x00junk" + NAME, "1.2.840.10008.1.2.1", "M"
            )
    finally:
        intake.close()
    spooled = Path(got.meta.path)
    [rejected] = layout.rejected.iterdir()
    for path in (spooled, rejected):
        raw = path.read_bytes()
        assert is_sealed(raw) and NAME not in raw and PID not in raw and _mode(path) == 0o600
    assert hashlib.sha256(read_plain(spooled, ring)).hexdigest() == got.meta.sha256
    assert dcmread_plain(spooled, ring, stop_before_pixels=True).PatientName == NAME.decode()
    blob = BlobStore(layout.blobs, ring).put(b'{"heatmap": "' + NAME + b'"}')
    assert NAME not in BlobStore(layout.blobs, ring).path(blob.sha256).read_bytes()
    assert BlobStore(layout.blobs, ring).get(blob) == b'{"heatmap": "' + NAME + b'"}'
    with pytest.raises(Exception, match="cannot be opened"):
        BlobStore(layout.blobs, None).get(BlobRef(blob.sha256, blob.size, blob.media_type))
    ledger.close()


class _Clock:
    def now(self) -> float:
        return 1_700_000_000.0


def test_rotation_reseals_every_file_under_the_new_key_and_the_old_key_can_go(tmp_path: Path, ring: Keyring) -> None:
    layout = VarLayout.at(tmp_path)
    files = [layout.spool / "s" / "a.dcm", layout.outbox / "b.dcm", layout.blobs / "ab" / "c", layout.rejected / "d"]
    for k, path in enumerate(files):
        write_sealed_final(path, b"%d " % k + NAME, ring)
    write_sealed_final(layout.spool / "s" / "legacy.dcm", b"clear " + NAME, None)  # before encryption was on
    roots = sealed_roots(layout)
    assert count_not_current(roots, ring) == 1
    new = rotated(ring)
    assert new.current == "k2" and set(new.keys) == {"k1", "k2"}
    assert reseal_tree(roots, new) == 5 and reseal_tree(roots, new) == 0  # idempotent
    assert count_not_current(roots, new) == 0
    only_new = Keyring({"k2": new.keys["k2"]}, "k2")
    for k, path in enumerate(files):
        assert new.key_id_of(path.read_bytes()) == "k2" and read_plain(path, only_new) == b"%d " % k + NAME
    assert read_plain(layout.spool / "s" / "legacy.dcm", only_new) == b"clear " + NAME


def test_keys_rotate_rewrites_the_key_file_reseals_and_drops_the_old_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key_file = tmp_path / "keys.json"
    var = tmp_path / "var"
    cfg = AppConfig(storage=StorageConfig(var_dir=str(var), encryption=EncryptionConfig(key_file=str(key_file))))
    from state.data_keys import write_key_file

    write_key_file(key_file, rotated(None, "k1"))
    first = load_keyring(cfg.storage.encryption, var)
    assert first is not None
    write_sealed_final(VarLayout.at(var).outbox / "sr.dcm", b"SR " + NAME, first)
    assert keys_rotate(cfg, None, drop_old=False) == 0
    after = parse_keyring(key_file.read_text())
    assert after.current == "k2" and set(after.keys) == {"k1", "k2"} and _mode(key_file) == 0o600
    assert sealed_under(VarLayout.at(var).outbox / "sr.dcm", after)
    assert keys_rotate(cfg, None, drop_old=True) == 0
    final = parse_keyring(key_file.read_text())
    assert set(final.keys) == {"k2"}
    assert read_plain(VarLayout.at(var).outbox / "sr.dcm", final) == b"SR " + NAME
    assert "1 files" in capsys.readouterr().out
    from state.ledger import open_ledger

    ledger = open_ledger(cfg.storage)
    try:  # both steps are audited with key ids only
        events = [e for e in ledger.audit.events() if e.type == "data_keys_rotated"]
    finally:
        ledger.close()
    assert [e.detail.get("current") for e in events] == ["k2", "k2"] and events[1].detail["dropped"] == ["k1"]


@pytest.mark.parametrize("size", [0, 1, SEGMENT - 7, SEGMENT, SEGMENT + 1, 2 * SEGMENT + 300])
@pytest.mark.parametrize("chunk", [1000, 300_000, SEGMENT])
def test_sealing_into_scratch_buffers_matches_sealing_whole(ring: Keyring, size: int, chunk: int) -> None:
    data = os.urandom(size)
    chunks = [b"PART10-HEADER"] + [data[k : k + chunk] for k in range(0, size, chunk)]
    sealed = b"".join(bytes(c) for c in ring.seal_stream(chunks, scratch=Scratch()))  # each copied before the next
    assert ring.open(sealed) == b"PART10-HEADER" + data
    assert len(sealed) == len(ring.seal(b"PART10-HEADER" + data))


def test_every_temporary_writer_makes_owner_only_files_whatever_the_umask(tmp_path: Path, ring: Keyring) -> None:
    from state.spill import copy_temp

    src = tmp_path / "spilled.bin"
    src.write_bytes(b"DATASET" * 1000)
    old = os.umask(0o022)  # a process that never set the private umask
    try:
        made = [
            copy_temp(tmp_path / "a", "x.dcm", b"HEADER", src),
            copy_sealed(tmp_path / "b", "x.dcm", b"HEADER", src, ring),
            write_sealed(tmp_path / "c", "x.dcm", [b"HEADER", b"DATA"], ring),
        ]
    finally:
        os.umask(old)
    for path in made:
        assert _mode(path) == 0o600 and _mode(path.parent) == 0o700, path
    assert made[0].read_bytes() == b"HEADER" + b"DATASET" * 1000
    assert read_plain(made[1], ring) == b"HEADER" + b"DATASET" * 1000


def _big_sealed_instance(tmp_path: Path, ring: Keyring) -> tuple[Path, bytes]:
    """A sealed instance of 3.1 MiB: four segments, its header in the first."""
    ds = make_cxr_study(seed=77, n_images=1)[0]
    ds.Rows = ds.Columns = 1280
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelData = os.urandom(1280 * 1280 * 2)
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    final = tmp_path / "spool" / "big.dcm"
    publish(write_sealed(final.parent, final.name, [buf.getvalue()], ring), final)
    return final, buf.getvalue()


def test_a_header_read_of_a_sealed_file_decrypts_only_the_segments_it_reaches(tmp_path: Path, ring: Keyring) -> None:
    """Until stop 31 a header read (``stop_before_pixels``) decrypted the whole file: 2 GB for
    a 2 GB multi-frame. The proof it no longer does: a segment past the header is altered,
    and the header still reads (the same as from the clear bytes) while a whole read refuses."""
    final, plain = _big_sealed_instance(tmp_path, ring)
    sealed = bytearray(final.read_bytes())
    segments = ring.segments(bytes(sealed[:300]), len(sealed))
    assert segments.count == 4 and segments.size == len(plain)
    offset, _ = segments.span(2)
    sealed[offset + 100] ^= 0xFF
    final.write_bytes(bytes(sealed))
    header = dcmread_plain(final, ring, stop_before_pixels=True)
    expected = dcmread_plain_clear(plain)
    assert header.SOPInstanceUID == expected.SOPInstanceUID and header.Rows == 1280 and "PixelData" not in header
    assert dcmread_plain(final, ring, specific_tags=["StudyDate"]).StudyDate == expected.StudyDate
    with pytest.raises(EnvelopeError, match="segment 2 fails authentication"):
        dcmread_plain(final, ring)
    with open_plain(final, ring) as f, pytest.raises(EnvelopeError, match="segment 2"):
        f.read()


def dcmread_plain_clear(plain: bytes):
    from pydicom import dcmread

    return dcmread(BytesIO(plain), stop_before_pixels=True)


@pytest.mark.parametrize("chunk", [4095, SEGMENT - 1, SEGMENT + 3, 3 * SEGMENT])
def test_a_sealed_file_reads_and_seeks_across_segments_like_its_plaintext(
    tmp_path: Path, ring: Keyring, chunk: int
) -> None:
    final, plain = _big_sealed_instance(tmp_path, ring)
    with open_plain(final, ring) as f:
        got = bytearray()
        while piece := f.read(chunk):
            got += piece
        assert bytes(got) == plain and f.read(10) == b""
        for at in (0, SEGMENT - 2, SEGMENT, 2 * SEGMENT + 5, len(plain) - 3):
            assert f.seek(at) == at and f.read(7) == plain[at : at + 7] and f.tell() == min(at + 7, len(plain))
        assert f.seek(-4, os.SEEK_END) == len(plain) - 4 and f.read() == plain[-4:]


def test_a_sealed_file_cut_short_is_refused_as_it_opens(tmp_path: Path, ring: Keyring) -> None:
    final, _ = _big_sealed_instance(tmp_path, ring)
    sealed = final.read_bytes()
    segments = ring.segments(sealed[:300], len(sealed))
    final.write_bytes(sealed[: segments.span(2)[0]])  # cut at a segment boundary: the last is not final
    with open_plain(final, ring) as f, pytest.raises(EnvelopeError, match="segment 1 fails authentication"):
        f.seek(SEGMENT + 10)
        f.read(1)
    final.write_bytes(sealed[: segments.span(2)[0] + 10])  # inside a segment's tag: not an envelope's size
    with pytest.raises(EnvelopeError, match="truncated"):
        open_plain(final, ring)
