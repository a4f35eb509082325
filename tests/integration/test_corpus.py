"""pydicom's whole test-file corpus through the listener: every file is accounted for.

Each file under pydicom's ``data/test_files``, ``data/charset_files`` and ``data/palettes``
(everything ``get_testdata_files()`` returns locally, and more; nothing is downloaded) is sent
to a real listener with dcmtk ``storescu``, proposing the file's own transfer syntax. Then the
assembler, validator and router run on the ledger (in this process; ``test_end_to_end`` and
``test_compliance_e2e`` cover the Ray pipeline). For every file one of these holds:

- it was stored, and ends **processed** (routed to a model, or skipped by routing with the
  reason recorded) or **quarantined** with reason codes; and the spooled data set is byte for
  byte what storescu put on the wire (captured by a recording relay, ``wire.py``);
- storescu **refuses to send it** (``STORESCU_REFUSES``, each with why). Those that are DICOM
  with File Meta are then sent raw with a pynetdicom SCU (the file's bytes unchanged) and end
  stored-and-quarantined or refused with 0xC000 and kept aside (audited);
- it is **not DICOM at all** (``NOT_DICOM``): storescu refuses it.

The spooled bytes are compared with the wire, not with the file, because storescu re-encodes
what it sends (``wire.py`` lists how); the raw pynetdicom sends prove spool == file where the
sender does not re-encode. The listener never dies: it answers C-ECHO and stores a file after
everything. Files that share a SOP Instance UID or a Study Instance UID go to different
listeners (one ledger each), so duplicates and unrelated "studies" do not mix.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pydicom
import pytest
from pydicom import config, dcmread

from demo.dcmtk import PROPOSAL_OPTIONS
from state.sealed_files import read_plain
from tests.integration.bridge import Bridge, dataset_bytes, query, send_raw
from tests.integration.wire import RecordingRelay

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("storescu") is None, reason="dcmtk is not installed"),
]

DATA = Path(pydicom.__file__).parent / "data"
CORPUS = sorted(p for d in ("test_files", "charset_files", "palettes") for p in (DATA / d).rglob("*") if p.is_file())

NOT_DICOM = {
    "test_files/README.txt",
    "test_files/dicomdirtests/README.txt",
    "test_files/dicomdirtests/TINY_ALPHA/README",
    "test_files/test1.json",
    "test_files/test_PN.json",
    "test_files/zipMR.gz",
    "test_files/crayons.icc",
    "test_files/rtplan.dump",
    "test_files/rtstruct.dump",
    "charset_files/FileInfo.txt",
    "palettes/README.md",
}
"""Text, JSON, gzip, ICC profile and dcmdump listings that ship beside the DICOM files."""

_DICOMDIR = "a DICOMDIR (Media Storage Directory) is a media file, not a network object: no SOP Instance UID"
_NO_UIDS = "no SOP Class / SOP Instance UID in the data set (pydicom fixture of a partial data set)"
STORESCU_REFUSES = {
    **{
        f"test_files/dicomdirtests/{n}": _DICOMDIR
        for n in (
            "DICOMDIR",
            "DICOMDIR-bigEnd",
            "DICOMDIR-empty.dcm",
            "DICOMDIR-implicit",
            "DICOMDIR-nooffset",
            "DICOMDIR-nopatient",
            "DICOMDIR-reordered",
            "TINY_ALPHA/DICOMDIR",
        )
    },
    "test_files/UN_sequence.dcm": _NO_UIDS,
    "test_files/empty_charset_LEI.dcm": _NO_UIDS,
    "test_files/nested_priv_SQ.dcm": _NO_UIDS,
    "test_files/priv_SQ.dcm": _NO_UIDS,
    "test_files/no_meta_group_length.dcm": _NO_UIDS,
    "charset_files/chrSQEncoding.dcm": _NO_UIDS,
    "charset_files/chrSQEncoding1.dcm": _NO_UIDS,
    "test_files/meta_missing_tsyntax.dcm": "File Meta without Transfer Syntax UID, data set of UN elements only",
    "test_files/no_meta.dcm": "no File Meta and an encoding dcmtk cannot guess (parse error, no UIDs)",
    "test_files/MR_truncated.dcm": "Pixel Data truncated: dcmtk cannot read the file to the end",
    "test_files/rtplan_truncated.dcm": "truncated inside a sequence: dcmtk cannot read the file",
    "test_files/rtdose_rle.dcm": "odd-length encapsulated Pixel Data (OW): dcmtk cannot read it",
    "test_files/rtdose_rle_1frame.dcm": "odd-length encapsulated Pixel Data (OW): dcmtk cannot read it",
    "test_files/SC_rgb_jpeg.dcm": "deliberately corrupt File Meta (fixture of pydicom's own tests)",
}
"""Files storescu will not send, and why (dcmtk 3.6.7 checks SOP UIDs and parses the file)."""

PROCESSED, QUARANTINED, SKIPPED = "processed", "quarantined", "skipped"
REFUSED_AT_ASSOCIATION = "refused at association"
PIXEL_CODES = {
    "pixel_data_undecodable",
    "pixel_length_mismatch",
    "pixel_data_missing",
    "unsupported_transfer_syntax",
    "frame_count_mismatch",
}
DECODE_FINE = {
    "test_files/MR_small_implicit.dcm",
    "test_files/MR_small.dcm",
    "test_files/MR_small_bigendian.dcm",
    "test_files/image_dfl.dcm",
    "test_files/MR_small_RLE.dcm",
    "test_files/SC_rgb_jpeg_dcmtk.dcm",
    "test_files/JPGExtended.dcm",
    "test_files/MR_small_jpeg_ls_lossless.dcm",
    "test_files/MR_small_jp2klossless.dcm",
    "test_files/JPEG2000.dcm",
    "test_files/SC_rgb_rle_2frame.dcm",
    "test_files/liver_1frame.dcm",
}
"""standards.md 5.2 / ts_matrix.py: these decode with the installed plugins."""
EXPECTED_CODES = {
    "test_files/JPEG-lossy.dcm": "pixel_data_undecodable",  # broken stream (pydicom's README)
    "test_files/J2K_pixelrep_mismatch.dcm": "pixel_attributes_inconsistent",
    "test_files/MR_small_padded.dcm": "pixel_length_mismatch",
    "test_files/badVR.dcm": "invalid_vr",
    "test_files/MR_truncated.dcm": "truncated",  # sent raw
    "test_files/rtplan_truncated.dcm": "truncated",  # sent raw
}


def _name(path: Path) -> str:
    return str(path.relative_to(DATA))


def _keys(path: Path) -> set[str]:
    """The UIDs that must not meet another file's in one ledger (SOP Instance, Study)."""
    try:
        with config.disable_value_validation():
            ds = dcmread(path, stop_before_pixels=True, force=True)
            keys = {str(ds.get(k, "") or "") for k in ("SOPInstanceUID", "StudyInstanceUID")}
            meta = getattr(ds, "file_meta", None)
            if meta is not None:
                keys.add(str(meta.get("MediaStorageSOPInstanceUID", "") or ""))
            return keys - {""}
    except Exception:  # noqa: BLE001 - not parseable: no UIDs to keep apart
        return set()


def _rounds() -> list[list[list[Path]]]:
    """Units (a file, or one directory of a DICOMDIR tree: a real series) placed in rounds so
    that no round holds two units sharing a SOP Instance or Study Instance UID."""
    units: dict[str, list[Path]] = defaultdict(list)
    for path in CORPUS:
        key = str(path.parent) if "dicomdirtests" in path.parts and "DICOMDIR" not in path.name else str(path)
        units[key].append(path)
    rounds: list[tuple[set[str], list[list[Path]]]] = []
    for files in units.values():
        keys = set().union(*(_keys(f) for f in files))
        for used, members in rounds:
            if not used & keys:
                used |= keys
                members.append(files)
                break
        else:
            rounds.append((set(keys), [files]))
    return [members for _, members in rounds]


class Outcome:
    """What happened to one corpus file."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sent_by = ""
        self.state = ""
        self.codes: list[str] = []
        self.reason = ""
        self.note = ""

    def __repr__(self) -> str:
        return f"{self.name}: {self.sent_by} {self.state} {self.codes or self.reason}"[:240]


def _send_round(
    bridge: Bridge, relay: RecordingRelay, units: list[list[Path]], outcomes: dict[str, Outcome]
) -> list[Path]:
    """storescu every file of the round through the relay; return the files it refused."""
    refused = []
    for files in units:
        for path in files:
            before = len(relay.datasets)
            res = _storescu(path, relay.port)
            assert relay.wait_idle()
            out = outcomes.setdefault(_name(path), Outcome(_name(path)))
            if res.returncode != 0:
                refused.append(path)
                out.note = next((ln for ln in res.stderr.splitlines() if ln.startswith(("E:", "F:"))), "")
                continue
            out.sent_by = "storescu"
            [wire] = relay.datasets[before:]
            _check_spooled_equals_wire(bridge, path, wire)
            _check_syntax_kept(bridge, path)
    return refused


def _storescu(path: Path, port: int) -> subprocess.CompletedProcess[str]:
    from demo.dcmtk import storescu

    return storescu([path], "127.0.0.1", port, "PACSAI", propose_own_syntax=True, timeout_s=60)


def _spooled(bridge: Bridge, path: Path) -> Path:
    [row] = query(bridge.ledger, "SELECT path, sha256 FROM instances WHERE sop_instance_uid IN (?, ?)", _uids_of(path))
    spooled = Path(row["path"])
    assert row["sha256"] == hashlib.sha256(read_plain(spooled, bridge.ledger.keyring)).hexdigest()  # at receipt
    return spooled


def _check_syntax_kept(bridge: Bridge, path: Path) -> None:
    """A file in a syntax storescu can propose travels and is stored in it: not transcoded."""
    syntax = str(
        getattr(dcmread(path, stop_before_pixels=True, force=True), "file_meta", {}).get("TransferSyntaxUID", "") or ""
    )
    if syntax in PROPOSAL_OPTIONS:
        [row] = query(
            bridge.ledger, "SELECT transfer_syntax FROM instances WHERE sop_instance_uid IN (?, ?)", _uids_of(path)
        )
        assert row["transfer_syntax"] == syntax, _name(path)


def _check_spooled_equals_wire(bridge: Bridge, path: Path, wire: bytes) -> None:
    assert dataset_bytes(_spooled(bridge, path), bridge.ledger.keyring) == wire, f"{_name(path)}: spool != wire"


def _settle(bridge: Bridge, outcomes: dict[str, Outcome], by_uid: dict[str, str]) -> None:
    bridge.drain()
    for row in query(
        bridge.ledger,
        "SELECT i.sop_instance_uid, i.override, i.reason, j.state, j.reason AS job_reason"
        " FROM instances i JOIN jobs j ON j.job_id = i.job_id",
    ):
        name = by_uid.get(row["sop_instance_uid"])
        if name is None:
            continue
        out = outcomes[name]
        if row["override"] == "quarantined" or row["state"] == "quarantined":
            out.state = QUARANTINED
            out.codes = sorted({r["code"] for r in json.loads(row["reason"] or "[]")})
        elif row["override"] == "skipped" or row["state"] == "skipped":
            out.state, out.reason = SKIPPED, row["job_reason"] or row["reason"]
        elif row["state"] == "routed":
            out.state = PROCESSED
        else:
            out.state = f"unexpected job state {row['state']}"


def _uids_of(path: Path) -> tuple[str, str]:
    """The SOP Instance UID of the data set (storescu's C-STORE request names it) and of the
    File Meta (pynetdicom's raw send names that); some fixtures disagree."""
    with config.disable_value_validation():
        ds = dcmread(path, stop_before_pixels=True, force=True)
        meta = getattr(ds, "file_meta", None)
        in_meta = meta.get("MediaStorageSOPInstanceUID") if meta is not None else None
        in_data = ds.get("SOPInstanceUID", "")
        return str(in_data or in_meta or ""), str(in_meta or in_data or "")


@pytest.fixture(scope="module")
def corpus_outcomes(tmp_path_factory):
    """Send the corpus once; every test below reads the outcomes."""
    outcomes: dict[str, Outcome] = {}
    bridges = []
    rounds = _rounds()
    try:
        for index, units in enumerate(rounds):
            bridge = Bridge(tmp_path_factory.mktemp(f"round{index}"))
            relay = RecordingRelay(bridge.port)
            bridges.append((bridge, relay))
            refused = _send_round(bridge, relay, units, outcomes)
            raw = [p for p in refused if _name(p) not in NOT_DICOM and _sendable_raw(p)]
            for path, status in zip(raw, send_raw(raw, bridge.port), strict=True):
                out = outcomes[_name(path)]
                out.sent_by = "pynetdicom-raw"
                if status == -1:  # no presentation context: not a storage SOP class
                    out.state = REFUSED_AT_ASSOCIATION
                elif status == 0xC000:
                    out.state, out.codes = QUARANTINED, ["unreadable (refused 0xC000, kept aside)"]
                else:
                    assert status == 0x0000, (out.name, hex(status))
                    _check_spooled_equals_file(bridge, path)
            by_uid = {u: _name(p) for files in units for p in files if outcomes[_name(p)].sent_by for u in _uids_of(p)}
            _settle(bridge, outcomes, by_uid)
        yield outcomes, bridges
    finally:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda br: (br[1].close(), br[0].stop()), bridges))


def _sendable_raw(path: Path) -> bool:
    try:
        meta = dcmread(path, stop_before_pixels=True).file_meta
        return all(meta.get(k) for k in ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID", "TransferSyntaxUID"))
    except Exception:  # noqa: BLE001 - no readable File Meta: not sendable as a Part 10 file
        return False


def _check_spooled_equals_file(bridge: Bridge, path: Path) -> None:
    assert dataset_bytes(_spooled(bridge, path), bridge.ledger.keyring) == dataset_bytes(path), _name(path)


def test_every_corpus_file_is_accounted_for(corpus_outcomes):
    outcomes, _ = corpus_outcomes
    if os.environ.get("CORPUS_REPORT"):
        print("\n".join(map(repr, sorted(outcomes.values(), key=lambda o: o.name))))
    names = {_name(p) for p in CORPUS}
    assert set(outcomes) == names and len(names) > 200
    refused = {n for n, o in outcomes.items() if o.sent_by != "storescu"}
    assert refused == NOT_DICOM | set(STORESCU_REFUSES), sorted(refused ^ (NOT_DICOM | set(STORESCU_REFUSES)))
    refused_at_association = {n for n, o in outcomes.items() if o.state == REFUSED_AT_ASSOCIATION}
    assert refused_at_association == {n for n, why in STORESCU_REFUSES.items() if why == _DICOMDIR}
    for out in outcomes.values():
        if out.sent_by and out.state != REFUSED_AT_ASSOCIATION:
            assert out.state in (PROCESSED, QUARANTINED, SKIPPED), out
            assert out.codes if out.state == QUARANTINED else True, out
            assert out.reason if out.state == SKIPPED else True, out


def test_valid_encodings_decode_and_broken_ones_are_quarantined_for_the_right_reason(corpus_outcomes):
    outcomes, _ = corpus_outcomes
    for name in DECODE_FINE:
        assert not PIXEL_CODES & set(outcomes[name].codes), outcomes[name]
    for name, code in EXPECTED_CODES.items():
        assert outcomes[name].state == QUARANTINED and code in outcomes[name].codes, outcomes[name]


def test_the_listener_keeps_serving_after_the_corpus(corpus_outcomes):
    _, bridges = corpus_outcomes
    env = dict(os.environ, TCP_NODELAY="1")
    for bridge, _ in bridges[:: max(1, len(bridges) // 5)]:
        echo = subprocess.run(
            ["echoscu", "-aec", "PACSAI", "127.0.0.1", str(bridge.port)], env=env, capture_output=True, timeout=30
        )
        assert echo.returncode == 0
    bridge = bridges[-1][0]
    assert send_raw([Path(pydicom.data.get_testdata_file("CT_small.dcm"))], bridge.port) == [0]
