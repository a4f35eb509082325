"""Issue #5 ledger facts against a real SQLite file (no Ray): receiving counts, retrieved priors,
SR versions, review flags, and validation while a study is still receiving."""

from __future__ import annotations

import time

import pytest

from actors.adapters.dimse import Listener
from actors.adapters.ledger import SqliteLedger
from actors.adapters.study_records import StudyRecords, review_flag_statement
from actors.prevalidation import PreValidator, VerdictCache
from actors.validator import ValidationWork
from core.config import ListenerConfig
from core.types import InstanceMeta, JobState
from core.validation import Validator
from synthetic.synthetic_dicom import make_cxr_study, save_study


def meta(uid, study="1.2.3", series="1.2.3.1", t=100.0, ae="PACSFWD"):
    return InstanceMeta(uid, "1.2.840.10008.5.1.4.1.1.2", study, series, "CT", "1.2.840.10008.1.2.1",
                        f"/spool/{uid}.dcm", "aa", 10, t, ae, "CHEST", "", "k")


@pytest.fixture
def ledger(tmp_path):
    led = SqliteLedger(tmp_path / "ledger.sqlite")
    yield led
    led.close()


def test_receiving_studies_count_per_series_and_name_the_latest_sender(ledger):
    records = StudyRecords(ledger)
    ledger.record_instance(meta("1"), 100.0, 102.0, "t")
    ledger.record_instance(meta("2", series="1.2.3.2", t=101.0, ae="OTHER"), 101.0, 103.0, "t")
    ledger.record_instance(meta("3", series="1.2.3.2", t=101.5, ae="OTHER"), 101.5, 103.5, "t")
    [study] = records.receiving_studies(now=102.0)
    assert study.received == {"1.2.3.1": 1, "1.2.3.2": 2}
    assert (study.calling_ae, study.last_instance_at) == ("OTHER", 101.5)
    job = ledger.lease_job(study.job_id, JobState.RECEIVING, "w", 10.0, now=102.0)
    assert job is not None and records.receiving_studies(now=102.0) == []  # leased: not offered
    assert ledger.lease_job(study.job_id, JobState.RECEIVING, "w2", 10.0, now=102.0) is None
    ledger.postpone(job, 500.0)
    assert ledger.lease(JobState.RECEIVING, "w", 5, 10.0, now=499.0) == []
    assert [j.job_id for j in ledger.lease(JobState.RECEIVING, "w", 5, 10.0, now=500.0)] == [job.job_id]


def test_a_retrieved_prior_is_kept_set_aside_and_starts_no_job(ledger):
    records = StudyRecords(ledger)
    records.expect_prior_series("9.9.1", "9.9", "1.2.3", 1, 100.0)
    ledger.record_instance(meta("p1", study="9.9", series="9.9.1"), 100.0, 102.0, "t")
    assert ledger.jobs_for_study("9.9") == [] and ledger.instance_states("9.9") == {"p1": "skipped"}
    [event] = ledger.audit_events("9.9")
    assert event["detail"]["origin"] == "prior_retrieval" and event["job_id"] is None
    assert [i.sop_instance_uid for i in records.series_instances("9.9.1")] == ["p1"]
    assert records.receiving_studies(now=200.0) == []
    # A real new instance of that old study later: the whole study is processed then.
    ledger.record_instance(meta("new", study="9.9", series="9.9.2", t=300.0), 300.0, 302.0, "t")
    [job] = ledger.lease(JobState.RECEIVING, "w", 1, 10.0, now=302.0)
    ledger.complete_study(job, 302.0, [])
    assert set(ledger.instance_states("9.9").values()) == {"pending"}


def test_sr_versions_and_review_flags(ledger):
    records = StudyRecords(ledger)
    ledger.record_instance(meta("1"), 100.0, 100.0, "t")
    job = ledger.lease(JobState.RECEIVING, "w", 1, 10.0, now=101.0)[0]
    for state in (JobState.COMPLETE, JobState.VALIDATED, JobState.ROUTED, JobState.LINKED, JobState.INFERRED):
        ledger.transition(job, state, 101.0)
        job = ledger.lease(state, "w", 1, 10.0, now=101.0)[0]
    flag = review_flag_statement("prior_identity_conflict", "1.2.3", "7.7", job.job_id, {"differing": ["PatientName"]}, 101.0)
    ledger.transition(job, JobState.WRITTEN, 101.0, extra=[flag, flag])  # at most once per pair
    job = ledger.lease(JobState.WRITTEN, "w", 1, 10.0, now=101.0)[0]
    ledger.transition(job, JobState.DELIVERED, 101.0)
    result = {"sop_instance_uid": "2.25.1", "sop_class_uid": "1.2.840.10008.5.1.4.1.1.88.34",
              "series_instance_uid": "2.25.9", "family": "chest_xray", "model_name": "m",
              "model_version": "1", "prediction": {"source_uids": ["1"]}}
    ledger.record_instance(meta("2", t=200.0), 200.0, 200.0, "t")  # late: version 2
    late = ledger.lease(JobState.RECEIVING, "w", 1, 10.0, now=201.0)[0]
    for state in (JobState.COMPLETE, JobState.VALIDATED, JobState.ROUTED, JobState.LINKED, JobState.INFERRED):
        ledger.transition(late, state, 201.0)
        late = ledger.lease(state, "w", 1, 10.0, now=201.0)[0]
    heatmap = {"sop_instance_uid": "2.25.2", "sop_class_uid": "1.2.840.10008.5.1.4.1.1.30",
               "series_instance_uid": "2.25.10", "kind": "pm", "family": "chest_xray", "path": "/o/2.dcm"}
    ledger.written(late, [result | {"kind": "sr", "path": "/o/1.dcm"}, heatmap], 201.0, [],
                   results=[result | {"predecessor_uid": ""}])
    # The Parametric Map series is ours too: PACS counts must not wait for it (issue #3).
    assert records.own_series("1.2.3") == {"2.25.9", "2.25.10"}
    assert records.latest_result("1.2.3", "chest_xray")["prediction"] == {"source_uids": ["1"]}
    assert records.latest_result("1.2.3", "chest_xray", before_version=2) is None
    [flagged] = records.review_flags()
    assert (flagged["other_study_uid"], flagged["detail"]) == ("7.7", {"differing": ["PatientName"]})


def test_instances_are_validated_while_the_study_is_receiving(ledger, tmp_path):
    listener = Listener(ListenerConfig(port=0, min_free_bytes=0), tmp_path / "spool", tmp_path / "rej", ledger, 60.0)
    good, bad = make_cxr_study(seed=401, n_images=2, patient_id="PV1", size=64)
    bad.PixelData = bad.PixelData[: len(bad.PixelData) // 2]
    for ds, path in zip((good, bad), save_study([good, bad], tmp_path / "in"), strict=True):
        listener.ingest_file(path.read_bytes(), "PACSFWD")
    cache = VerdictCache()
    work = ValidationWork(ledger, Validator(), "stage:validator", cache)
    pre = PreValidator(StudyRecords(ledger), work.check, cache, 0.05)
    assert pre.run_once() == 2 and pre.run_once() == 0  # each instance is read once
    [job] = ledger.lease(JobState.RECEIVING, "w", 1, 10.0, now=time.time() + 61)
    ledger.complete_study(job, time.time(), [])
    [job] = ledger.lease(JobState.COMPLETE, "w", 1, 10.0, now=time.time())
    work(job)
    assert cache.hits == 2  # nothing re-read at completion
    states = ledger.instance_states(str(good.StudyInstanceUID))
    assert states == {str(good.SOPInstanceUID): "pending", str(bad.SOPInstanceUID): "quarantined"}
    listener.stop()
