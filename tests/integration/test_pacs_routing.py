"""Issue 18, the routing table: Orthanc as the PACS routes to the bridge by Lua, senders pace
slices and split series across associations, and every study gets one SR per model.

As a PACS administrator sets it up: the modality stores to Orthanc, and Orthanc forwards to the
bridge either each instance as it stores it (``OnStoredInstance``, the most common rule) or
the whole study once it is stable (``OnStableStudy``). The bridge runs on ``pacs_counts`` with
the default settle window, so a PACS that holds what we hold after every slice must not
complete the study again and again. Orthanc forwards our own SRs back, as such rules do.

Head CTs of 24 slices (the table used 60; the count per study does not change the rule being
tested, and 24 keep the module's wall time near a minute and a half). The rows of one test run
at once, each its own study, so the test takes as long as its slowest row.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread

from actors.pipeline import wait_until
from demo.dcmtk import storescu
from demo.modality import send_paced
from demo.orthanc import FORWARD_EACH_INSTANCE, FORWARD_STABLE_STUDY, OrthancProcess, free_port
from synthetic.procedure_steps import split_series
from synthetic.synthetic_dicom import save_study
from synthetic.synthetic_studies import head_ct_study
from tests.integration.conftest import ledger_of, needs_peers, wait_for_states

pytestmark = [pytest.mark.integration, needs_peers]

SLICES = 24
FAMILY = "head_ct_haemorrhage"


def _study(seed: int, n: int = SLICES) -> list:
    return head_ct_study(seed, n_slices=n, patient_id=f"RT{seed}", accession=f"RT{seed}").datasets


def _at_once(pacs: OrthancProcess, root: Path, study: list) -> None:
    assert storescu(save_study(study, root), "127.0.0.1", pacs.dicom_port, pacs.aet, "CT1").returncode == 0


def _paced(pacs: OrthancProcess, root: Path, study: list) -> None:
    statuses = send_paced(save_study(study, root), pacs.dicom_port, pacs.aet, "CT1", every_s=0.1)
    assert statuses == [0] * len(study)


def _series_apart(*pauses: float) -> Callable[[OrthancProcess, Path, list], None]:
    def send(pacs: OrthancProcess, root: Path, study: list) -> None:
        for n, series in enumerate(split_series(study, len(pauses) + 1)):
            if n:
                time.sleep(pauses[n - 1])
            _at_once(pacs, root / f"series{n}", series)

    return send


ROWS = {
    "all slices at once, one association": (1801, _at_once),
    "one slice every 0.1 s, one association": (1802, _paced),
    "2 series in 2 associations, 2 s apart": (1803, _series_apart(2.0)),
    "3 series in 3 associations, 1 s and 3 s apart": (1804, _series_apart(1.0, 3.0)),
}


def _pacs(tmp_path: Path, lua: str, **kw) -> tuple[OrthancProcess, int]:
    port = free_port()
    pacs = OrthancProcess(
        tmp_path / "pacs",
        modalities={"pacsai": ("PACSAI", "127.0.0.1", port)},
        lua=(lua.format(modality="pacsai"),),
        **kw,
    ).start()
    return pacs, port


def _srs(pacs: OrthancProcess, study_uid: str) -> list:
    return [dcmread(BytesIO(pacs.file(m["ID"]))) for m in pacs.instances_of_study(study_uid, modality="SR")]


def _send_rows(tmp_path: Path, pacs: OrthancProcess, rows: dict) -> dict[str, str]:
    """Send every row's study to the PACS at once; return row -> Study Instance UID."""
    studies = {row: _study(seed) for row, (seed, _) in rows.items()}
    with ThreadPoolExecutor(len(rows)) as pool:
        futures = [pool.submit(send, pacs, tmp_path / f"row{seed}", studies[row]) for row, (seed, send) in rows.items()]
        for f in futures:
            f.result()
    return {row: str(study[0].StudyInstanceUID) for row, study in studies.items()}


def _one_report_per_study(ledger, pacs, uids: dict[str, str], rules: tuple[str, ...] = ("pacs_counts",)) -> None:
    assert wait_for_states(ledger, list(uids.values()), {"delivered"}, timeout_s=180), ledger.status.report(time.time())
    time.sleep(1.0)  # our SRs come back from the PACS now: a wrongly opened version would show
    for row, uid in uids.items():
        jobs = ledger.jobs.for_study(uid)
        completions = [e.detail for e in ledger.audit.events(uid) if e.type == "study_complete"]
        srs = _srs(pacs, uid)
        assert [(j.version, j.state.value) for j in jobs] == [(1, "delivered")], row
        assert len(completions) == 1 and completions[0]["rule"] in rules, (row, completions)
        assert completions[0]["received"] == SLICES, row  # complete means complete
        assert len(srs) == 1 and "PredecessorDocumentsSequence" not in srs[0], row
        assert [v.state.value for v in ledger.results.versions(uid, FAMILY)] == ["delivered"], row


def test_forwarding_each_instance_gives_one_report_per_study_and_one_more_only_for_a_late_instance(
    tmp_path, make_pipeline
):
    pacs, port = _pacs(tmp_path, FORWARD_EACH_INSTANCE)
    try:
        pipeline, _ = make_pipeline(
            pacs, listener={"port": port}, assembly={"completion": "pacs_counts", "max_settle_s": 8.0}
        )
        ledger = ledger_of(pipeline)
        uids = _send_rows(tmp_path, pacs, ROWS)
        _one_report_per_study(ledger, pacs, uids)
        echoed = [
            e
            for uid in uids.values()
            for e in ledger.audit.events(uid)
            if e.type == "instance_duplicate" and e.detail.get("origin") == "own_result"
        ]
        assert echoed  # the PACS forwarded our SRs back; none opened a study version
        _one_more_for_a_late_instance(tmp_path, ledger, pacs, uids["all slices at once, one association"])
    finally:
        pacs.discard()


def _one_more_for_a_late_instance(tmp_path: Path, ledger, pacs: OrthancProcess, uid: str) -> None:
    late = _study(1801, SLICES + 1)[-1:]  # the scanner sends one more slice after the report
    _at_once(pacs, tmp_path / "late", late)

    def second_delivered() -> bool:
        jobs = ledger.jobs.for_study(uid)
        return len(jobs) == 2 and jobs[-1].state.value == "delivered"

    assert wait_until(second_delivered, 120, 0.2), ledger.status.report(time.time())
    assert [(j.version, j.state.value) for j in ledger.jobs.for_study(uid)] == [(1, "delivered"), (2, "delivered")]
    first, second = sorted(
        _srs(pacs, uid),
        key=lambda d: len(
            d.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence
        ),
    )
    [pred] = second.PredecessorDocumentsSequence
    assert pred.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == first.SOPInstanceUID
    versions = ledger.results.versions(uid, FAMILY)
    assert [(v.job_version, v.state.value) for v in versions] == [(1, "delivered"), (2, "delivered")]
    assert versions[1].predecessor_uid == versions[0].sop_instance_uid
    # Ten seconds after a counts completion: the PACS's counts matched early; its rule tightens.
    [tightened] = [e.detail for e in ledger.audit.events(uid) if e.type == "sender_tightened"]
    assert (tightened["calling_ae"], tightened["strictness"]) == ("ORTHANC", 1)
    assert ledger.status.report(time.time()).senders_tightened == {"ORTHANC": 1}


def test_forwarding_the_stable_study_gives_one_report_per_study(tmp_path, make_pipeline):
    pacs, port = _pacs(tmp_path, FORWARD_STABLE_STUDY, stable_age=3)
    try:
        pipeline, _ = make_pipeline(pacs, listener={"port": port}, assembly={"completion": "pacs_counts"})
        rows = {k: v for k, v in ROWS.items() if k.startswith(("one slice", "3 series"))}
        uids = _send_rows(tmp_path, pacs, rows)
        # Orthanc forwards a stable study whole, in one association: the quiet period after it
        # may end before the PACS answers our count query on a loaded machine (its C-FIND then
        # times out); both rules see every slice, and one report per study is what counts.
        _one_report_per_study(ledger_of(pipeline), pacs, uids, rules=("pacs_counts", "quiet_period"))
    finally:
        pacs.discard()
