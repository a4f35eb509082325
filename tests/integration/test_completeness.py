"""Issue #5, completeness: a study sent in two bursts 10 s apart, quiet period 2 s.

The realistic flow: the modality stores to the PACS, the PACS forwards to us. So Orthanc holds
the whole study first; then the bursts reach our listener from the forwarding AE title.
"""

from __future__ import annotations

import time
from io import BytesIO

import highdicom as hd
import pytest
from pydicom import dcmread

from demo.dcmtk import storescu
from demo.orthanc import OrthancProcess, free_port
from synthetic.synthetic_dicom import make_cxr_study, save_study
from tests.integration.conftest import ledger_of, needs_peers, wait_for_states

pytestmark = [pytest.mark.integration, needs_peers]

FORWARDER = "PACSFWD"
GAP_S = 10.0


def _refs(sr):
    return {
        sop.ReferencedSOPInstanceUID
        for st in sr.CurrentRequestedProcedureEvidenceSequence
        for se in st.ReferencedSeriesSequence
        for sop in se.ReferencedSOPSequence
    }


def _tracking(sr):
    groups = hd.sr.Comprehensive3DSR.from_dataset(sr).content.get_image_measurement_groups()
    return {g.tracking_identifier: g.tracking_uid for g in groups}


@pytest.mark.parametrize("completion", ["pacs_counts", "quiet_period"])
def test_two_bursts_ten_seconds_apart(tmp_path, make_pipeline, completion):
    port = free_port()
    pacs = OrthancProcess(tmp_path / "pacs", modalities={"pacsai": ("PACSAI", "127.0.0.1", port)}).start()
    try:
        _two_bursts(tmp_path, make_pipeline, pacs, port, completion)
    finally:
        pacs.discard()


def _two_bursts(tmp_path, make_pipeline, pacs, port, completion):
    study = make_cxr_study(seed=301, findings=frozenset({"nodule"}), n_images=4, patient_id="BURST1")
    files = save_study(study, tmp_path / "study")
    assert storescu(files, "127.0.0.1", pacs.dicom_port, pacs.aet, "MODALITY").returncode == 0
    pipeline, cfg = make_pipeline(
        pacs,
        listener={"port": port},
        assembly={"quiet_period_s": 2.0, "sources": {FORWARDER: {"completion": completion}}},
    )
    ledger, uid = ledger_of(pipeline), str(study[0].StudyInstanceUID)
    first_sent = time.monotonic()
    assert storescu(files[:2], "127.0.0.1", pipeline.listener_port(), "PACSAI", FORWARDER).returncode == 0
    time.sleep(max(0.0, GAP_S - (time.monotonic() - first_sent)))
    assert storescu(files[2:], "127.0.0.1", pipeline.listener_port(), "PACSAI", FORWARDER).returncode == 0
    assert time.monotonic() - first_sent >= GAP_S
    expected_jobs = 1 if completion == "pacs_counts" else 2

    def settled():
        jobs = ledger.jobs.for_study(uid)
        return len(jobs) == expected_jobs and all(j.state.value == "delivered" for j in jobs)

    assert wait_for_states(ledger, [uid], {"delivered"}, timeout_s=90)
    time.sleep(1.0)  # a wrongly opened second version would show up now
    assert settled(), [(j.version, j.state) for j in ledger.jobs.for_study(uid)]
    events = ledger.audit.events(uid)
    completions = [e.detail for e in events if e.type == "study_complete"]
    inferred = [e for e in events if e.type == "inferred"]
    srs = [dcmread(BytesIO(pacs.file(m["ID"]))) for m in pacs.instances_of_study(uid, modality="SR")]
    all_uids = {str(d.SOPInstanceUID) for d in study}
    if completion == "pacs_counts":
        assert [c["rule"] for c in completions] == ["pacs_counts"]
        assert completions[0]["received"] == 4 and completions[0]["pacs_study_count"] == 4
        assert len(inferred) == 1 and len(srs) == 1 and _refs(srs[0]) == all_uids
        assert "PredecessorDocumentsSequence" not in srs[0]
        return
    assert [c["rule"] for c in completions] == ["quiet_period", "quiet_period"]
    assert len(inferred) == 2 and len(srs) == 2
    first, second = sorted(srs, key=lambda d: len(_refs(d)))
    assert _refs(first) == {str(d.SOPInstanceUID) for d in study[:2]} and _refs(second) == all_uids
    [pred] = second.PredecessorDocumentsSequence
    assert pred.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == first.SOPInstanceUID
    assert _tracking(first) == _tracking(second)
    versions = ledger.results.versions(uid, "chest_xray")
    assert [r.job_version for r in versions] == [1, 2]
    assert versions[1].predecessor_uid == versions[0].sop_instance_uid == first.SOPInstanceUID
