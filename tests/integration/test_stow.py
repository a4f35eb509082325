"""STOW-RS keeps the C-STORE contract: the same files give the same outcomes by either door.

Each test runs the API in process (FastAPI's TestClient over the real ledger and spool) beside
a ``Bridge`` (a real C-STORE listener and the assembler, validator and router working its
ledger), so what STOW-RS stored is completed, validated and routed exactly as C-STORE data is.
The corruption catalogue and pydicom's test-file corpus go through both doors and must end the
same; malformed bodies get a 4xx, nothing is half-stored, and the service keeps serving.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import config, dcmread

from core.config import StorageConfig
from core.stow_rs import CANNOT_UNDERSTAND, OUT_OF_RESOURCES, STUDY_MISMATCH, UNSUPPORTED_SOP_CLASS
from core.types import AuditEventType
from state.sealed_files import dcmread_plain, read_plain
from synthetic.synthetic_dicom import make_cxr_study
from tests.corruptions import CORRUPTIONS, write
from tests.integration.api_harness import ApiHarness, make_harness
from tests.integration.bridge import Bridge, query, send_raw

pytestmark = pytest.mark.integration

QUIET = {"quiet_period_s": 0.0, "quiet_period_by_modality": {}}
"""Studies complete as soon as the bridge's assembler looks (as in ``Bridge``)."""
FAILED_SOP = "00081198"
REFERENCED_SOP = "00081199"
FAILURE_REASON = "00081197"
SOP_INSTANCE = "00081155"


def multipart(parts: list[bytes], boundary: str = "", content_type: str = "application/dicom") -> tuple[bytes, str]:
    """A multipart/related body and its Content-Type."""
    boundary = boundary or uuid.uuid4().hex
    body = (
        b"".join(f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode() + p + b"\r\n" for p in parts)
        + f"--{boundary}--\r\n".encode()
    )
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def stow(h: ApiHarness, parts: list[bytes], study: str | None = None, **kw):
    body, ctype = multipart(parts, **kw)
    path = "/dicomweb/studies" + (f"/{study}" if study else "")
    return h.client.post(path, content=body, headers={**h.headers("ingest"), "Content-Type": ctype})


def failures(response) -> dict[str, int]:
    """SOP Instance UID -> Failure Reason from a STOW-RS response."""
    items = response.json().get(FAILED_SOP, {}).get("Value", [])
    return {i.get(SOP_INSTANCE, {}).get("Value", [""])[0]: i[FAILURE_REASON]["Value"][0] for i in items}


def stored(response) -> list[str]:
    items = response.json().get(REFERENCED_SOP, {}).get("Value", [])
    return [i[SOP_INSTANCE]["Value"][0] for i in items]


def to_bytes(ds) -> bytes:
    buf = BytesIO()
    write(ds, buf)
    return buf.getvalue()


@pytest.fixture
def door(tmp_path):
    """A bridge (C-STORE listener + stages) and the STOW-RS API on the same ledger and spool."""
    bridge = Bridge(tmp_path / "bridge")
    h = make_harness(tmp_path, StorageConfig(var_dir=str(bridge.root)), assembly=QUIET)
    yield bridge, h
    h.close()
    bridge.stop()


def test_a_study_is_stored_durably_once_and_a_resend_is_not_processed_twice(door):
    bridge, h = door
    datasets = make_cxr_study(seed=5, n_images=2, patient_id="ZQ5Z", accession="A5")
    parts = [to_bytes(d) for d in datasets]
    study = str(datasets[0].StudyInstanceUID)
    r = stow(h, parts, study)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/dicom+json")
    assert sorted(stored(r)) == sorted(str(d.SOPInstanceUID) for d in datasets)
    assert r.json()["00081190"]["Value"][0].endswith(f"/dicomweb/studies/{study}")
    for d, raw in zip(datasets, parts, strict=True):  # spooled byte for byte (Part 10 as sent)
        [row] = query(bridge.ledger, "SELECT path FROM instances WHERE sop_instance_uid = ?", [str(d.SOPInstanceUID)])
        assert dcmread_plain(row["path"], bridge.ledger.keyring).PixelData == d.PixelData
        assert read_plain(row["path"], bridge.ledger.keyring)[-len(d.PixelData) :] == raw[-len(d.PixelData) :]
    again = stow(h, parts, study)
    assert again.status_code == 200 and sorted(stored(again)) == sorted(stored(r))
    bridge.drain()
    assert [j.state.value for j in bridge.ledger.jobs.for_study(study)] == ["routed"]
    events = Counter(e.type for e in bridge.ledger.audit.events(study))
    assert events[AuditEventType.INSTANCE_RECEIVED] == 2 and events[AuditEventType.INSTANCE_DUPLICATE] == 2
    received = [e for e in bridge.ledger.audit.events(study) if e.type is AuditEventType.INSTANCE_RECEIVED]
    assert all(e.actor == "stow-rs:token:t-ingest" for e in received)  # who sent it, never the token


def test_instances_of_another_study_fail_with_0xa900_and_nothing_is_stored(door):
    bridge, h = door
    [a] = make_cxr_study(seed=6, n_images=1, patient_id="ZQ6Z", accession="A6")
    [b] = make_cxr_study(seed=7, n_images=1, patient_id="ZQ7Z", accession="A7")
    r = stow(h, [to_bytes(a), to_bytes(b)], str(a.StudyInstanceUID))
    assert r.status_code == 202, r.text
    assert stored(r) == [str(a.SOPInstanceUID)]
    assert failures(r) == {str(b.SOPInstanceUID): STUDY_MISMATCH}
    assert not bridge.ledger.intake.has_instance(str(b.SOPInstanceUID))
    assert not [p for p in (bridge.root / "spool").rglob("*") if p.is_file() and str(b.SOPInstanceUID) in p.name]


def test_below_the_disk_floor_every_instance_fails_with_0xa700(tmp_path):
    bridge = Bridge(tmp_path / "bridge")
    h = make_harness(tmp_path, StorageConfig(var_dir=str(bridge.root)), listener={"min_free_bytes": 1 << 60})
    try:
        datasets = make_cxr_study(seed=8, n_images=2, patient_id="ZQ8Z", accession="A8")
        r = stow(h, [to_bytes(d) for d in datasets])
        assert r.status_code == 409, r.text
        assert set(failures(r).values()) == {OUT_OF_RESOURCES}
        assert not any(bridge.ledger.intake.has_instance(str(d.SOPInstanceUID)) for d in datasets)
    finally:
        h.close()
        bridge.stop()


def test_malformed_truncated_and_oversized_bodies_get_4xx_and_nothing_half_stored(door):
    bridge, h = door
    datasets = make_cxr_study(seed=9, n_images=2, patient_id="ZQ9Z", accession="A9")
    whole, half = to_bytes(datasets[0]), to_bytes(datasets[1])
    ingest = h.headers("ingest")
    ctype = 'multipart/related; type="application/dicom"; boundary=b0'
    cases = {
        "garbage": (b"this is not multipart at all", ctype, 400),
        "no closing boundary": (multipart([whole], boundary="b0")[0].rsplit(b"--b0--", 1)[0], ctype, 400),
        "truncated inside the second part": (
            multipart([whole, half], boundary="b0")[0][: len(whole) + len(half) // 2 + 80],
            ctype,
            400,
        ),
        "not multipart": (whole, "application/dicom", 415),
        "another part type": (multipart([whole])[0], 'multipart/related; type="application/json"; boundary=x', 415),
        "no boundary": (multipart([whole])[0], 'multipart/related; type="application/dicom"', 400),
    }
    for name, (body, content_type, status) in cases.items():
        r = h.client.post("/dicomweb/studies", content=body, headers={**ingest, "Content-Type": content_type})
        assert r.status_code == status, (name, r.status_code, r.text)
        assert r.headers["content-type"] == "application/problem+json", name
        problem = r.json()
        assert problem["status"] == status and problem["detail"], name
        if name == "truncated inside the second part":  # the whole first part is durable and named
            assert problem["stored"] == [str(datasets[0].SOPInstanceUID)]
    assert not bridge.ledger.intake.has_instance(str(datasets[1].SOPInstanceUID))  # never half-stored
    big = make_harness(
        bridge.root.parent / "small", StorageConfig(var_dir=str(bridge.root)), api={"max_request_bytes": 1 << 20}
    )
    try:
        r = stow(big, [b"\0" * (1 << 20)])
        assert r.status_code == 413 and r.json()["type"].endswith("too-large")
    finally:
        big.close()
    r = stow(h, [to_bytes(d) for d in datasets])  # the service still takes a good request
    assert r.status_code == 200 and len(stored(r)) == 2


def test_parts_that_are_not_dicom_fail_with_0xc000_and_are_kept_aside(door):
    bridge, h = door
    [good] = make_cxr_study(seed=10, n_images=1, patient_id="ZQ10Z", accession="A10")
    body, ctype = multipart([to_bytes(good)])
    junk = b"--x\r\nContent-Type: application/dicom\r\n\r\nDICM? no\r\n--x\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
    body = junk + body.replace(body.split(b"\r\n", 1)[0], b"--x").replace(body.rsplit(b"\r\n", 2)[-2], b"--x--")
    r = h.client.post(
        "/dicomweb/studies",
        content=body,
        headers={**h.headers("ingest"), "Content-Type": 'multipart/related; type="application/dicom"; boundary=x'},
    )
    assert r.status_code == 202, r.text
    assert stored(r) == [str(good.SOPInstanceUID)]
    reasons = [i[FAILURE_REASON]["Value"][0] for i in r.json()[FAILED_SOP]["Value"]]
    assert reasons == [CANNOT_UNDERSTAND, CANNOT_UNDERSTAND]  # unreadable, and not application/dicom


def _by_cstore_and_stow(tmp_path: Path, name: str, files: list[bytes]) -> tuple[dict, dict]:
    """Send the same Part 10 files by C-STORE (pynetdicom, bytes unchanged) to one bridge and by
    STOW-RS to another; drain both; per SOP Instance UID: the answer and the final state/codes."""
    outcomes = []
    for door_name in ("cstore", "stow"):
        bridge = Bridge(tmp_path / f"{name}-{door_name}")
        try:
            answers: dict[str, str] = {}
            if door_name == "cstore":
                paths = []
                for i, raw in enumerate(files):
                    paths.append(tmp_path / f"{name}-{i}.dcm")
                    paths[-1].write_bytes(raw)
                for path, status in zip(paths, send_raw(paths, bridge.port), strict=True):
                    answers[_uid_of(path.read_bytes())] = {0: "stored", 0xC000: "cannot understand", -1: "refused"}.get(
                        status, hex(status)
                    )
            else:
                h = make_harness(tmp_path / f"{name}-api", StorageConfig(var_dir=str(bridge.root)), assembly=QUIET)
                try:
                    r = stow(h, files)
                    assert r.status_code in (200, 202, 409), r.text
                    answers.update(dict.fromkeys(stored(r), "stored"))
                    names = {CANNOT_UNDERSTAND: "cannot understand", UNSUPPORTED_SOP_CLASS: "refused"}
                    for uid, reason in failures(r).items():
                        answers[uid] = names.get(reason, hex(reason))
                finally:
                    h.close()
            bridge.drain()
            final = {}
            for row in query(
                bridge.ledger,
                "SELECT i.sop_instance_uid, i.override, i.reason, j.state FROM instances i JOIN jobs j ON j.job_id = i.job_id",
            ):
                codes = sorted({r["code"] for r in json.loads(row["reason"] or "[]")})
                final[row["sop_instance_uid"]] = (row["override"] or row["state"], codes)
            outcomes.append((answers, final))
        finally:
            bridge.stop()
    return outcomes[0], outcomes[1]


def _uid_of(raw: bytes) -> str:
    with config.disable_value_validation():
        return str(dcmread(BytesIO(raw), stop_before_pixels=True, force=True).file_meta.MediaStorageSOPInstanceUID)


def test_every_corruption_ends_as_it_does_through_cstore(tmp_path):
    """The whole corruption catalogue at once (each kind its own studies): by STOW-RS and by
    raw C-STORE, every instance gets the same answer and ends in the same state with the same
    reason codes; the catalogue's own code is among them."""
    files, by_kind = [], {}
    for seed, corruption in enumerate(c for c in CORRUPTIONS if c.round_trips):
        built = [to_bytes(ds) for ds in corruption.build(200 + seed)]
        by_kind[corruption.name] = (corruption.code, [_uid_of(raw) for raw in built])
        files += built
    cstore, by_stow = _by_cstore_and_stow(tmp_path, "corruptions", files)
    assert by_stow == cstore
    answers, final = by_stow
    for name, (code, uids) in by_kind.items():
        codes = {c for uid in uids for c in final.get(uid, ("", []))[1]}
        refused = {answers.get(uid) for uid in uids} - {"stored"}
        assert code in codes or refused, (name, codes, refused)
    assert len(by_kind) >= 20


def test_pydicoms_corpus_ends_as_it_does_through_cstore(tmp_path):
    """Every file of pydicom's test corpus that has a File Meta header (STOW-RS carries Part 10
    files) is answered and ends by STOW-RS as by a raw C-STORE of the same bytes; the others
    fail with 0xC000 and nothing of them is stored."""
    from tests.integration.test_corpus import _rounds, _sendable_raw

    compared, refused = 0, 0
    for index, units in enumerate(_rounds()):
        files = [p for unit in units for p in unit]
        sendable = [p for p in files if _sendable_raw(p)]
        cstore, by_stow = _by_cstore_and_stow(tmp_path, f"round{index}", [p.read_bytes() for p in sendable])
        assert by_stow == cstore, f"round {index}"
        compared += len(sendable)
        others = [p.read_bytes() for p in files if p not in sendable]
        if others:
            bridge = Bridge(tmp_path / f"round{index}-others")
            h = make_harness(tmp_path / f"round{index}-api", StorageConfig(var_dir=str(bridge.root)))
            try:
                r = stow(h, others)
                reasons = [i[FAILURE_REASON]["Value"][0] for i in r.json().get(FAILED_SOP, {}).get("Value", [])]
                assert r.status_code == 409 and reasons == [CANNOT_UNDERSTAND] * len(others), r.text
                assert not query(bridge.ledger, "SELECT 1 FROM instances")
                refused += len(others)
            finally:
                h.close()
                bridge.stop()
    assert compared > 150 and refused > 10, (compared, refused)
