"""Quarantine against real peers and a real ledger file: hold, show, release, discard.

storescu sends to the real listener; the assembler, validator and router work the ledger in
this process (``bridge.py``); operators act through the ``pacsai`` command.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import yaml

from actors.cli import main
from core.errors import RejectedInput
from core.quarantine import QuarantineState
from tests.corruptions import cxr, put, write
from tests.integration.bridge import Bridge, dataset_bytes

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("storescu") is None, reason="dcmtk is not installed"),
]


@pytest.fixture
def bridge(tmp_path):
    b = Bridge(tmp_path / "var")
    yield b
    b.stop()


def study_files(tmp_path: Path, seed: int, n: int, broken: dict[int, tuple[str, object]]) -> tuple[str, list[Path]]:
    """A DX study of ``n`` images (one series); image ``i`` gets ``broken[i]`` set."""
    first = cxr(seed)
    files = []
    for i in range(n):
        ds = cxr(seed) if i == 0 else _sibling(first, seed, i)
        if i in broken:
            put(ds, *broken[i])
        path = tmp_path / f"s{seed}-{i}.dcm"
        write(ds, path)
        files.append(path)
    return str(first.StudyInstanceUID), files


def _sibling(first, seed: int, i: int):
    from pydicom.uid import generate_uid

    ds = cxr(seed)
    uid = generate_uid(entropy_srcs=[str(seed), str(i)])
    put(ds, "SOPInstanceUID", uid)
    put(ds.file_meta, "MediaStorageSOPInstanceUID", uid)
    put(ds, "InstanceNumber", i + 1)
    return ds


def cli(cfg: Path, *args: str, capsys) -> tuple[int, str]:
    code = main([*args, "--config", str(cfg)])
    return code, capsys.readouterr().out


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "pacsai.yaml"
    path.write_text(yaml.safe_dump({"storage": {"var_dir": str(tmp_path / "var")}}))
    return path


def test_bad_instance_is_held_and_the_rest_of_the_study_goes_on(tmp_path, bridge, config_file, capsys):
    study, files = study_files(tmp_path, 1, 2, {1: ("HighBit", 15)})
    assert bridge.storescu(files) == 0
    bridge.drain()
    job = bridge.latest_job(study)
    assert job.state.value == "routed"
    [entry] = bridge.quarantine.entries()
    assert entry.codes == ("pixel_attributes_inconsistent",) and entry.state == "held"
    assert "HighBit (0028,0102): got 15; expected BitsStored - 1 (11" in entry.reasons[0].message
    assert dataset_bytes(Path(entry.path), bridge.ledger.keyring) == dataset_bytes(files[1])  # kept as sent
    [task] = job.record.route.tasks
    assert list(task.sop_instance_uids) == [bridge.ledger.intake.job_instances(job.job_id)[0].sop_instance_uid]
    code, out = cli(config_file, "quarantine", "list", capsys=capsys)
    assert code == 0 and entry.id in out and "pixel_attributes_inconsistent" in out
    code, out = cli(config_file, "status", capsys=capsys)
    assert "quarantine: held 1 (pixel_attributes_inconsistent 1)" in out
    code, out = cli(config_file, "quarantine", "show", entry.id, "--json", capsys=capsys)
    assert json.loads(out)[0]["sha256"] == entry.sha256


def test_release_reopens_the_study_and_processes_the_instance_with_its_accepted_issue(
    tmp_path, bridge, config_file, capsys
):
    study, files = study_files(tmp_path, 2, 2, {1: ("HighBit", 15)})
    assert bridge.storescu(files) == 0
    bridge.drain()
    [entry] = bridge.quarantine.entries()
    code, out = cli(
        config_file,
        "quarantine",
        "release",
        entry.sop_instance_uid,
        "--reason",
        "vendor writes HighBit 15 for 12-bit data; pixels verified",
        "--user",
        "alice",
        capsys=capsys,
    )
    assert code == 0 and "released by user:alice" in out
    bridge.drain()
    jobs = bridge.ledger.jobs.for_study(study)
    assert [j.version for j in jobs] == [1, 2] and jobs[-1].state.value == "routed"
    assert set(jobs[-1].record.route.tasks[0].sop_instance_uids) == {
        i.sop_instance_uid for i in bridge.ledger.intake.job_instances(jobs[-1].job_id)
    }
    [accepted] = [a for a in jobs[-1].record.accepted if a.sop_instance_uid == entry.sop_instance_uid]
    assert [a.code for a in accepted.issues] == ["pixel_attributes_inconsistent"]
    [released] = bridge.quarantine.entries(QuarantineState.RELEASED)
    assert released.decided_by == "user:alice" and released.accepted_codes == ("pixel_attributes_inconsistent",)
    events = [e for e in bridge.ledger.audit.events(study) if e.type == "quarantine_released"]
    assert events[0].actor == "user:alice" and "pixels verified" in events[0].detail["reason"]
    assert bridge.ledger.audit.verify() is None


def test_a_released_instance_with_a_new_problem_is_held_again(tmp_path, bridge):
    study, files = study_files(tmp_path, 3, 1, {0: ("HighBit", 15)})
    bridge.storescu(files)
    bridge.drain()
    [entry] = bridge.quarantine.entries()
    bridge.quarantine.release(entry.id, "user:bob", "accept the high bit", time.time())
    # Another instance of the study arrives that names another patient: a study-level issue.
    _, more = study_files(tmp_path, 3, 2, {1: ("PatientID", "SOMEONE-ELSE")})
    bridge.storescu(more[1:])
    bridge.drain()
    job = bridge.latest_job(study)
    assert job.state.value == "quarantined"
    again = {e.sop_instance_uid: e for e in bridge.quarantine.entries()}
    assert set(again[entry.sop_instance_uid].codes) == {"pixel_attributes_inconsistent", "patient_mismatch"}
    assert again[entry.sop_instance_uid].accepted_codes == ("pixel_attributes_inconsistent",)


def test_discard_needs_a_reason_and_the_instance_never_reaches_a_job_again(tmp_path, bridge, config_file, capsys):
    study, files = study_files(tmp_path, 4, 1, {0: ("PixelData", b"")})
    bridge.storescu(files)
    bridge.drain()
    assert bridge.latest_job(study).state.value == "quarantined"
    [entry] = bridge.quarantine.entries()
    with pytest.raises(SystemExit):  # argparse: --reason is required
        main(["quarantine", "discard", entry.id, "--config", str(config_file)])
    assert cli(config_file, "quarantine", "discard", entry.id, "--reason", " ", capsys=capsys)[0] == 1
    code, out = cli(
        config_file, "quarantine", "discard", entry.id, "--reason", "empty image from a test shot", capsys=capsys
    )
    assert code == 0 and "discarded" in out
    assert bridge.ledger.intake.states(study) == {entry.sop_instance_uid: "discarded"}
    _, late = study_files(tmp_path, 4, 2, {})
    bridge.storescu(late[1:])  # a late, valid instance: a new job version without the discarded one
    bridge.drain()
    job = bridge.latest_job(study)
    assert job.version == 2 and job.state.value == "routed"
    assert [i.sop_instance_uid for i in bridge.ledger.intake.job_instances(job.job_id)] == [
        i for i in bridge.ledger.intake.states(study) if i != entry.sop_instance_uid
    ]
    assert Path(entry.path).exists()  # kept for retention, marked in the ledger
    assert bridge.ledger.status.report(time.time()).instances["discarded"] == 1
    with pytest.raises(RejectedInput, match="got state discarded; expected a held"):
        bridge.quarantine.release(entry.id, "user:x", "changed my mind", time.time())


def test_operator_references_and_errors(tmp_path, bridge):
    study, files = study_files(tmp_path, 5, 3, {0: ("HighBit", 15), 2: ("BitsStored", 20)})
    bridge.storescu(files)
    bridge.drain()
    entries = bridge.quarantine.entries()
    series = entries[0].series_uid
    assert {e.id for e in bridge.quarantine.resolve(series)} == {e.id for e in entries}
    assert bridge.quarantine.resolve(entries[0].id.lower())[0].id == entries[0].id
    with pytest.raises(RejectedInput, match="quarantine ID: got 'Q999'"):
        bridge.quarantine.resolve("Q999")
    with pytest.raises(RejectedInput, match="reason: got nothing"):
        bridge.quarantine.release(series, "user:x", "", time.time())
    released = bridge.quarantine.release(series, "user:x", "both checked by physics", time.time())
    assert {e.state for e in released} == {"released"}
    assert len(bridge.ledger.jobs.for_study(study)) == 2  # one new version for the whole series
