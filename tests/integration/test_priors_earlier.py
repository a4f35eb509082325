"""Issue 18, priors that are truly earlier, and refusals a person can work; against real peers.

Each wrong case of the issue: a study that arrives late (or is re-processed) must never be
compared with a newer study of the patient; an unidentified emergency registration (empty
name and birth date) is not linked on the Patient ID alone; a PACS answer with another Issuer
of Patient ID is refused. The listener, assembler, validator and router run in this process
(``Bridge``); the prior linker's work object queries the PACS for real (Orthanc, or a scripted
PACS that ignores the issuer as a matching key).
"""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from actors.adapters.query_retrieve import DimseQueryRetrieve
from actors.prior_linker import PriorLinkWork
from core.config import PacsConfig, PriorsConfig
from core.job import Job
from core.priors import PriorStatus, RefusalKind
from core.review import FlagKind, Resolution, Reviewer, ReviewRole
from core.types import JobState
from demo.dcmtk import storescu
from demo.orthanc import OrthancProcess
from synthetic.synthetic_dicom import make_cxr_study, save_study, synthetic_uid
from tests.integration.bridge import Bridge
from tests.integration.conftest import needs_peers
from tests.integration.scripted_pacs import IssuerBlindPacs

pytestmark = [pytest.mark.integration, needs_peers]

BIRTH = "19580203"


def _day(days_ago: int) -> str:
    return (date.today() - timedelta(days=days_ago)).strftime("%Y%m%d")


def cxr(seed, patient_id, days_ago, time="101500", name="ROE^RICHARD", birth=BIRTH, issuer=None):
    datasets = make_cxr_study(seed=seed, n_images=1, patient_id=patient_id, patient_name=name, accession=f"E{seed}")
    for ds in datasets:
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = _day(days_ago)
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = time
        ds.PatientBirthDate = birth
        if issuer is not None:
            ds.IssuerOfPatientID = issuer
    return datasets


@pytest.fixture
def bridge(tmp_path):
    b = Bridge(tmp_path / "bridge")
    yield b
    b.stop()


@pytest.fixture
def orthanc(tmp_path):
    pacs = OrthancProcess(tmp_path / "pacs", modalities={"pacsai": ("PACSAI", "127.0.0.1", 1)}).start()
    yield pacs
    pacs.discard()


def _store(pacs, tmp_path, *studies):
    files = [f for i, s in enumerate(studies) for f in save_study(s, tmp_path / f"pacs{i}")]
    assert storescu(files, "127.0.0.1", pacs.dicom_port, pacs.aet, "MODALITY").returncode == 0


def _linker(bridge, port, ae="ORTHANC", **cfg):
    pacs = PacsConfig(ae_title=ae, host="127.0.0.1", port=port, calling_ae_title="PACSAI", timeout_s=5)
    priors = PriorsConfig(enabled=True, **cfg)
    return PriorLinkWork(bridge.ledger, "stage:prior_linker", priors, DimseQueryRetrieve(pacs, 5.0))


def _link(bridge, tmp_path, linker, study, name) -> Job:
    """Send the current study to the bridge, run it to ``routed``, link its priors."""
    assert bridge.storescu(save_study(study, tmp_path / name)) == 0
    bridge.drain()
    [job] = bridge.ledger.jobs.lease(JobState.ROUTED, "test", 10, 60.0, 10**10)
    linker(job)
    return bridge.latest_job(str(study[0].StudyInstanceUID))


def test_a_study_arriving_late_is_compared_only_with_studies_truly_earlier(bridge, orthanc, tmp_path):
    old, mid, new = (cxr(1810, "P-LATE", 400), cxr(1811, "P-LATE", 200), cxr(1812, "P-LATE", 10, "140000"))
    same_day_earlier = cxr(1813, "P-LATE", 10, "080000")
    _store(orthanc, tmp_path, old, mid, new, same_day_earlier)
    linker = _linker(bridge, orthanc.dicom_port)
    late = _link(bridge, tmp_path, linker, mid, "mid").record.priors  # re-processed 200 days on
    assert late.status is PriorStatus.FOUND and late.study.study_uid == str(old[0].StudyInstanceUID)
    oldest = _link(bridge, tmp_path, linker, old, "old").record.priors
    assert oldest.status is PriorStatus.NONE_FOUND and oldest.considered == 0  # every other is newer
    morning = _link(bridge, tmp_path, linker, same_day_earlier, "am").record.priors
    assert morning.study.study_uid == str(mid[0].StudyInstanceUID)  # not the 14:00 study of that day
    afternoon = _link(bridge, tmp_path, linker, new, "pm").record.priors
    assert afternoon.study.study_uid == str(same_day_earlier[0].StudyInstanceUID)  # the closest earlier


def test_an_unidentified_emergency_registration_is_not_linked_until_a_reviewer_confirms_it(bridge, orthanc, tmp_path):
    trauma = cxr(1820, "P-ER", 30, name="", birth="")  # registered before anyone knew who it was
    _store(orthanc, tmp_path, trauma)
    current = cxr(1821, "P-ER", 0)
    linker = _linker(bridge, orthanc.dicom_port)
    job = _link(bridge, tmp_path, linker, current, "now")
    link = job.record.priors
    assert link.status is PriorStatus.NONE_FOUND and link.study is None
    [refusal] = link.conflicts
    assert refusal.kind is RefusalKind.UNVERIFIED and set(refusal.differing) == {"PatientName", "PatientBirthDate"}
    ledger = bridge.ledger
    [flag] = ledger.reviews.flags(kind=FlagKind.PRIOR_UNVERIFIED)
    assert flag.other_study_uid == str(trauma[0].StudyInstanceUID)
    [event] = [e for e in ledger.audit.events(job.study_instance_uid) if e.type == "prior_unverified"]
    assert event.detail["candidate_study_uid"] == flag.other_study_uid and "ROE" not in str(event.detail)
    radiologist = Reviewer("user:rita", frozenset({ReviewRole.RADIOLOGIST}))
    ledger.reviews.resolve(flag.flag_id, radiologist, Resolution.SAME_PATIENT, "same implant on both films", 1e9)
    again = current[0].copy()  # the study is re-processed (a late image): the pair is now confirmed
    again.SOPInstanceUID = synthetic_uid(again.SOPInstanceUID, "late")
    again.file_meta.MediaStorageSOPInstanceUID = again.SOPInstanceUID
    relinked = _link(bridge, tmp_path, linker, [again], "again").record.priors
    assert relinked.status is PriorStatus.FOUND and relinked.study.study_uid == str(trauma[0].StudyInstanceUID)


def test_a_pacs_answer_with_another_issuer_is_refused_audited_and_flagged(bridge, tmp_path):
    other_site = cxr(1830, "P-ISS", 90, issuer="HOSP-B")  # same ID, same name: another authority
    pacs = IssuerBlindPacs([other_site])
    try:
        linker = _linker(bridge, pacs.port, pacs.ae_title)
        job = _link(bridge, tmp_path, linker, cxr(1831, "P-ISS", 0, issuer="HOSP-A"), "now")
    finally:
        pacs.stop()
    link = job.record.priors
    assert link.status is PriorStatus.NONE_FOUND and link.considered == 1
    [refusal] = link.conflicts
    assert (refusal.kind, refusal.differing) == (RefusalKind.ISSUER_MISMATCH, ("IssuerOfPatientID",))
    [flag] = bridge.ledger.reviews.flags(kind=FlagKind.PRIOR_ISSUER_MISMATCH)
    assert flag.other_study_uid == str(other_site[0].StudyInstanceUID)
    assert [
        e.type
        for e in bridge.ledger.audit.events(job.study_instance_uid)
        if e.type.startswith("prior_") and e.type != "prior_query"
    ] == ["prior_issuer_mismatch"]
