"""The ledger's contract, run against both backends: SQLite (a real file) and PostgreSQL (a real
server started by the session fixture). Durability rules, leases, retries, records, effects,
the audit chain, quarantine, health and wake-ups must behave the same on both."""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import replace

import pytest

from actors.adapters.dimse import Listener
from actors.prevalidation import PreValidator, VerdictCache
from actors.validator import ValidationWork
from core.audit import AuditEvent, ChainBreak
from core.clinical import FindingDecision, ReviewRequest
from core.config import ListenerConfig, RetryConfig
from core.errors import AccessDenied, DimseRefused, LeaseLost, RecordError, RejectedInput
from core.health import ActorHealth, HealthStatus, LoopHealth
from core.ian import notice_from_n_create
from core.job import JobRecord
from core.ledger import (
    CoverStudy,
    HoldInQuarantine,
    Override,
    QueueOutbox,
    RaiseReviewFlag,
    RecordResult,
    RecordSrVersions,
    RetryPolicy,
    SetAside,
    WithdrawOutbox,
)
from core.mpps import StepStatus, create_step, set_step
from core.quarantine import QuarantineState
from core.records import ModelTask, Prediction, Route
from core.results import DeliveryState, OutboxItem, OutputKind, SrVersion
from core.review import FlagKind, FlagState, Resolution, Reviewer, ReviewRole, released_versions
from core.review_submissions import verified_series_uid
from core.sources import ArrivalKind, CompletionRule, LateArrival, SenderStanding, SenderTightened
from core.types import AuditEventType, InstanceMeta, JobState, ValidationIssue
from core.validation import Validator
from core.versions import DeliveryAction, VersionState, plan_delivery
from state.blobs import BlobStore
from state.column_seal import TEXT_MARK
from state.ledger import Ledger, open_ledger
from state.ledger.intake import Arrival
from state.ledger.reviews import apply_flag
from state.migrate import pending
from synthetic.procedure_steps import ian_notice, mpps_n_create, mpps_n_set, mpps_uid
from synthetic.synthetic_dicom import make_cxr_study, save_study


def meta(uid, study="1.2.3", series=None, t=100.0, ae="SCU", sha="aa"):
    return InstanceMeta(
        uid,
        "1.2.840.10008.5.1.4.1.1.2",
        study,
        series or study + ".1",
        "CT",
        "1.2.840.10008.1.2.1",
        f"/spool/{uid}.dcm",
        sha,
        10,
        t,
        ae,
        "CHEST",
        "",
        "k",
    )


@pytest.fixture
def ledger(backend, storage_for):
    led = open_ledger(storage_for(backend))
    yield led
    led.close()


def raw_execute(ledger: Ledger, sql: str) -> None:
    """Change the database behind the ledger's back (tampering, legacy rows)."""
    if ledger.backend == "sqlite":
        con = sqlite3.connect(ledger.db.path)  # type: ignore[attr-defined]
        try:  # a statement the database refuses must not leave the file locked
            con.execute(sql)
            con.commit()
        finally:
            con.close()
    else:
        ledger.db.run(lambda tx: tx.execute(sql))


def drop_audit_guards(ledger: Ledger) -> None:
    """What an attacker with the database owner's rights can do: remove the triggers that make
    the audit trail append-only (migration 0011), to tamper with it."""
    if ledger.backend == "sqlite":
        raw_execute(ledger, "DROP TRIGGER audit_no_update")
        raw_execute(ledger, "DROP TRIGGER audit_no_delete")
    else:
        raw_execute(ledger, "DROP TRIGGER audit_append_only ON audit")


def advance(ledger: Ledger, job, states, now):
    """Move a job through ``states`` (leasing each time), returning it leased in the last."""
    for state in states:
        ledger.jobs.transition(job, state, now)
        [job] = ledger.jobs.lease(state, "w", 1, 10.0, now=now)
    return job


# ------------------------------------------------------------------------ intake and jobs
def test_sqlite_pragmas_make_commits_durable(backend, storage_for):
    if backend != "sqlite":
        pytest.skip("SQLite only")
    led = open_ledger(storage_for(backend))
    con = sqlite3.connect(led.db.path)  # type: ignore[attr-defined]
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with led.db.read() as tx:
        assert tx.one("PRAGMA synchronous")["synchronous"] == 2  # FULL


def test_instances_of_a_study_share_one_receiving_job(ledger):
    assert ledger.intake.record(meta("1"), 100.0, 102.0, "t") is RecordResult.NEW
    assert ledger.intake.record(meta("2", t=101.0), 101.0, 103.0, "t") is RecordResult.NEW
    jobs = ledger.jobs.for_study("1.2.3")
    assert len(jobs) == 1 and jobs[0].state is JobState.RECEIVING
    assert jobs[0].not_before == 103.0  # the quiet period restarts with each instance


def test_resent_instance_is_a_duplicate_and_audited(ledger):
    ledger.intake.record(meta("1"), 100.0, 102.0, "t")
    assert ledger.intake.record(meta("1", sha="bb"), 100.5, 102.5, "t") is RecordResult.DUPLICATE
    events = ledger.audit.events("1.2.3")
    assert [e.type for e in events] == ["instance_received", "instance_duplicate"]
    assert events[1].detail["same_bytes"] is False


def test_a_group_of_arrivals_commits_at_once_and_each_is_recorded_as_it_would_be_alone(ledger):
    """``record_many`` (the listener's group commit): duplicates held before or earlier in the
    same group, a prior series set aside, one job per study whose last arrival sets its timer."""
    ledger.intake.record(meta("held"), 99.0, 101.0, "t")
    ledger.intake.expect_prior_series("9.9.1", "9.9", "1.2.3", 1, 99.0)
    arrivals = [
        Arrival(meta("a", t=100.0), 100.0, 102.0, "t"),
        Arrival(meta("b", study="4.5.6", t=100.1), 100.1, 102.1, "t"),
        Arrival(meta("a", sha="bb", t=100.2), 100.2, 102.2, "t"),  # sent twice in one group
        Arrival(meta("held", t=100.3), 100.3, 102.3, "t"),
        Arrival(meta("c", t=100.4), 100.4, 105.0, "t"),
        Arrival(meta("p", study="9.9", series="9.9.1", t=100.5), 100.5, 102.5, "t"),
    ]
    new, dup = RecordResult.NEW, RecordResult.DUPLICATE
    assert ledger.intake.record_many(arrivals) == [new, new, dup, dup, new, new]
    assert ledger.intake.record_many([]) == []
    [job] = ledger.jobs.for_study("1.2.3")
    assert job.not_before == 105.0 and len(ledger.jobs.for_study("4.5.6")) == 1
    assert ledger.jobs.for_study("9.9") == [] and ledger.intake.states("9.9") == {"p": "skipped"}
    events = [(e.type, e.sop_instance_uid, e.detail.get("same_bytes")) for e in ledger.audit.events("1.2.3")]
    assert events == [
        ("instance_received", "held", None),
        ("instance_received", "a", None),
        ("instance_duplicate", "a", False),
        ("instance_duplicate", "held", True),
        ("instance_received", "c", None),
    ]
    assert {u for u in ("a", "held", "p", "nope") if ledger.intake.has_instance(u)} == {"a", "held", "p"}
    assert ledger.audit.verify() is None


def test_a_group_learns_what_is_held_inside_its_own_transaction_and_leaves_out_what_it_could_not_place(ledger):
    """``record_many(place=...)`` (the listener's group commit, issue 14): the held check is the
    transaction's first read, handed to ``place`` (where the listener moves files); what
    ``place`` could not place is not recorded, the rest is as without it."""
    ledger.intake.record(meta("held"), 99.0, 101.0, "t")
    asked: list[set[str]] = []

    def place(held: set[str]) -> set[str]:
        asked.append(held)
        return {"lost"}  # its file could not be renamed into the spool

    arrivals = [
        Arrival(meta("held", t=100.0), 100.0, 102.0, "t"),
        Arrival(meta("lost", t=100.1), 100.1, 102.1, "t"),
        Arrival(meta("new", t=100.2), 100.2, 102.2, "t"),
    ]
    results = ledger.intake.record_many(arrivals, place=place)
    assert results == [RecordResult.DUPLICATE, RecordResult.NEW]  # for "held" and "new"
    assert asked == [{"held"}]
    assert set(ledger.intake.states("1.2.3")) == {"held", "new"}
    assert not ledger.intake.has_instance("lost")
    events = [(e.type, e.sop_instance_uid) for e in ledger.audit.events("1.2.3")]
    assert events[1:] == [("instance_duplicate", "held"), ("instance_received", "new")]


def test_lease_respects_not_before_priority_and_expiry(ledger):
    ledger.intake.record(meta("1"), 100.0, 102.0, "t")
    assert ledger.jobs.lease(JobState.RECEIVING, "w1", 5, 10.0, now=101.0) == []
    [job] = ledger.jobs.lease(JobState.RECEIVING, "w1", 5, 10.0, now=102.0)
    assert ledger.jobs.lease(JobState.RECEIVING, "w2", 5, 10.0, now=103.0) == []  # leased by w1
    [again] = ledger.jobs.lease(JobState.RECEIVING, "w2", 5, 10.0, now=112.5)  # w1's lease expired
    assert again.job_id == job.job_id and again.lease_owner == "w2"
    with pytest.raises(LeaseLost):
        ledger.jobs.transition(job, JobState.COMPLETE, 113.0, effects=[CoverStudy()])  # w1 lost it
    ledger.jobs.transition(again, JobState.COMPLETE, 113.0, effects=[CoverStudy()])
    assert [i.sop_instance_uid for i in ledger.intake.job_instances(job.job_id)] == ["1"]


def test_metric_gauges_count_queues_and_their_oldest_wait(ledger):
    """What the auditor publishes (``core.metrics``): due, unleased jobs per working state."""
    ledger.intake.record(meta("1"), 100.0, 102.0, "t")
    ledger.intake.record(meta("2", study="4.5.6", t=104.0), 104.0, 106.0, "t")
    early = ledger.status.gauges(101.0)  # neither is due yet: nothing waits
    assert early.jobs["receiving"] == 2 and early.waiting["receiving"] == 0
    due = ledger.status.gauges(110.0)
    assert due.waiting["receiving"] == 2 and due.oldest_waiting_s["receiving"] > 0
    assert due.waiting["complete"] == 0 and due.oldest_waiting_s["complete"] == 0
    [job] = ledger.jobs.lease(JobState.RECEIVING, "w1", 1, 10.0, now=110.0)
    assert ledger.status.gauges(110.0).waiting["receiving"] == 1  # a leased job is not waiting
    ledger.jobs.transition(job, JobState.COMPLETE, 111.0, effects=[CoverStudy()])
    later = ledger.status.gauges(112.0)
    assert later.waiting["complete"] == 1 and later.oldest_waiting_s["complete"] == pytest.approx(1.0)
    assert later.outbox_pending == 0 and later.quarantine_held == {}
    assert set(later.waiting) == {s.value for s in JobState if not s.is_terminal}


def test_higher_priority_is_leased_first(ledger):
    ledger.intake.record(meta("1", study="1.1"), 100.0, 100.0, "t")
    ledger.intake.record(meta("2", study="1.2"), 100.0, 100.0, "t")
    for job in ledger.jobs.lease(JobState.RECEIVING, "w", 5, 10.0, now=101.0):
        ledger.jobs.transition(job, JobState.COMPLETE, 101.0, priority=5 if job.study_instance_uid == "1.2" else 0)
    assert [j.study_instance_uid for j in ledger.jobs.lease(JobState.COMPLETE, "w", 5, 10.0, now=102.0)] == [
        "1.2",
        "1.1",
    ]


def test_concurrent_workers_never_lease_the_same_job(ledger):
    for k in range(40):
        ledger.intake.record(meta(f"{k}", study=f"9.{k}"), 100.0, 100.0, "t")
    got: list[int] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        while True:
            jobs = ledger.jobs.lease(JobState.RECEIVING, name, 3, 60.0, now=101.0)
            if not jobs:
                return
            with lock:
                got.extend(j.job_id for j in jobs)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(got) == 40 and len(set(got)) == 40


def test_late_instance_opens_a_new_job_version_covering_the_whole_study(ledger):
    ledger.intake.record(meta("1"), 100.0, 102.0, "t")
    [job] = ledger.jobs.lease(JobState.RECEIVING, "w", 1, 10.0, now=103.0)
    ledger.jobs.transition(job, JobState.COMPLETE, 103.0, effects=[CoverStudy()])
    ledger.intake.record(meta("2", t=200.0), 200.0, 202.0, "t")
    jobs = ledger.jobs.for_study("1.2.3")
    assert [(j.version, j.state) for j in jobs] == [(1, JobState.COMPLETE), (2, JobState.RECEIVING)]
    [v2] = ledger.jobs.lease(JobState.RECEIVING, "w", 1, 10.0, now=203.0)
    ledger.jobs.transition(v2, JobState.COMPLETE, 203.0, effects=[CoverStudy()])
    assert {i.sop_instance_uid for i in ledger.intake.job_instances(v2.job_id)} == {"1", "2"}


def test_failures_back_off_then_die_and_replay(ledger):
    policy = RetryPolicy.from_config(RetryConfig(max_attempts=2, base_delay_s=5.0))
    ledger.intake.record(meta("1"), 100.0, 100.0, "t")
    [job] = ledger.jobs.lease(JobState.RECEIVING, "w", 1, 10.0, now=100.0)
    assert ledger.jobs.defer(job, 100.0, policy, "boom", unavailable=False, actor="stage:x") is JobState.RECEIVING
    assert ledger.jobs.lease(JobState.RECEIVING, "w", 1, 10.0, now=104.0) == []
    [job] = ledger.jobs.lease(JobState.RECEIVING, "w", 1, 10.0, now=105.0)
    assert ledger.jobs.defer(job, 105.0, policy, "boom", unavailable=False, actor="stage:x") is JobState.DEAD
    dead = ledger.jobs.get(job.job_id)
    assert dead.state is JobState.DEAD and dead.attempts == 2
    assert ledger.status.report(106.0).instances["dead"] == 1
    assert ledger.jobs.replay(job.job_id, "user:op", 107.0) is JobState.RECEIVING
    assert ledger.jobs.get(job.job_id).attempts == 0
    with pytest.raises(RejectedInput, match="expected a dead job"):
        ledger.jobs.replay(job.job_id, "user:op", 108.0)


def test_unavailable_peer_does_not_spend_the_retry_budget(ledger):
    policy = RetryPolicy.from_config(RetryConfig(max_attempts=1))
    ledger.intake.record(meta("1"), 100.0, 100.0, "t")
    now = 100.0
    for _ in range(5):
        [job] = ledger.jobs.lease(JobState.RECEIVING, "w", 1, 10.0, now=now)
        ledger.jobs.defer(job, now, policy, "pacs down", unavailable=True, actor="stage:x")
        now += 1000.0
    job = ledger.jobs.get(job.job_id)
    assert job.state is JobState.RECEIVING and job.attempts == 0
    retries = [e for e in ledger.audit.events() if e.type == "job_retry"]
    assert len(retries) == 1  # one audit line per outage, not one per poll


def test_receiving_studies_count_per_series_and_name_the_latest_sender(ledger):
    ledger.intake.record(meta("1", series="1.2.3.1", ae="PACSFWD"), 100.0, 102.0, "t")
    ledger.intake.record(meta("2", series="1.2.3.2", t=101.0, ae="OTHER"), 101.0, 103.0, "t")
    ledger.intake.record(meta("3", series="1.2.3.2", t=101.5, ae="OTHER"), 101.5, 103.5, "t")
    [study] = ledger.intake.receiving_studies(now=102.0)
    assert study.received == {"1.2.3.1": 1, "1.2.3.2": 2}
    assert (study.calling_ae, study.last_instance_at) == ("OTHER", 101.5)
    job = ledger.jobs.lease_job(study.job_id, JobState.RECEIVING, "w", 10.0, now=102.0)
    assert job is not None and ledger.intake.receiving_studies(now=102.0) == []  # leased: not offered
    assert ledger.jobs.lease_job(study.job_id, JobState.RECEIVING, "w2", 10.0, now=102.0) is None
    ledger.jobs.postpone(job, 500.0)
    assert ledger.jobs.lease(JobState.RECEIVING, "w", 5, 10.0, now=499.0) == []
    assert [j.job_id for j in ledger.jobs.lease(JobState.RECEIVING, "w", 5, 10.0, now=500.0)] == [job.job_id]


def test_a_retrieved_prior_is_kept_set_aside_and_starts_no_job(ledger):
    ledger.intake.expect_prior_series("9.9.1", "9.9", "1.2.3", 1, 100.0)
    ledger.intake.record(meta("p1", study="9.9", series="9.9.1"), 100.0, 102.0, "t")
    assert ledger.jobs.for_study("9.9") == [] and ledger.intake.states("9.9") == {"p1": "skipped"}
    [event] = ledger.audit.events("9.9")
    assert event.detail["origin"] == "prior_retrieval" and event.job_id is None
    assert [i.sop_instance_uid for i in ledger.intake.series_instances("9.9.1")] == ["p1"]
    assert ledger.intake.receiving_studies(now=200.0) == []
    # A real new instance of that old study later: the whole study is processed then.
    ledger.intake.record(meta("new", study="9.9", series="9.9.2", t=300.0), 300.0, 302.0, "t")
    [job] = ledger.jobs.lease(JobState.RECEIVING, "w", 1, 10.0, now=302.0)
    ledger.jobs.transition(job, JobState.COMPLETE, 302.0, effects=[CoverStudy()])
    assert set(ledger.intake.states("9.9").values()) == {"pending"}


# ------------------------------------------------------------------ records and effects
def _prediction(uids, family="chest_xray") -> Prediction:
    return Prediction(family, "m", "1", (), tuple(uids))


def test_records_round_trip_and_big_sections_go_to_blobs(ledger):
    ledger.intake.record(meta("1"), 100.0, 100.0, "t")
    [job] = ledger.jobs.lease(JobState.RECEIVING, "w", 1, 10.0, now=101.0)
    uids = tuple(f"1.2.840.113619.2.55.3.604688119.868.{k}.99" for k in range(400))
    record = JobRecord(route=Route((ModelTask("head_ct", uids),), "routed to head_ct", 5))
    ledger.jobs.transition(job, JobState.COMPLETE, 101.0, record=record)
    stored = ledger.jobs.get(job.job_id)
    assert stored.record == record
    assert len(ledger.jobs.raw_record(job.job_id)) < 1000 and ledger.blobs.count() == 1
    with ledger.db.read() as tx:  # the row as the driver reads it: sealed at rest (state.column_seal)
        data = tx.one("SELECT data FROM jobs WHERE job_id = ?", (job.job_id,))["data"]
        blobs = [bytes(r["data"]) for r in tx.all("SELECT data FROM blobs")]  # PostgreSQL's blob store
    assert data.startswith(TEXT_MARK) and "head_ct" not in data and not any(b"head_ct" in b for b in blobs)


def _uid(*parts: int) -> str:
    """A 64-character UID, the longest DICOM allows (the worst case for row size)."""
    head = "1.2.826.0.1.3680043.8.498." + ".".join(str(p) for p in parts) + "."
    return head + "9" * (64 - len(head))


def _ct_400_record(study: str) -> JobRecord:
    """The record of a 400-slice head CT after inference: 7 findings, 7 heatmaps, a prior of
    400 slices compared image by image."""
    from core.interval import PriorResult
    from core.job import Inference, PriorLink, PriorStudy, RetrievedSeries
    from core.priors import InstanceRef, PriorStatus
    from core.records import (
        AxisScale,
        BlobRef,
        Finding,
        FrameRef,
        HeatmapRef,
        PlanarRegion,
        PlaneGeometry,
        PlaneGrid,
        QualityFlag,
    )
    from core.types import CodedTerm

    ct = "1.2.840.10008.5.1.4.1.1.2"
    uids = tuple(_uid(1, k) for k in range(400))
    prior = tuple(_uid(2, k) for k in range(400))
    frame = FrameRef(uids[200], ct)
    plane = PlaneGeometry((-120.0, -120.0, 35.5), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0), (0.4688, 0.4688), 1.25, _uid(3))
    findings = tuple(
        Finding(
            f"finding_{k}",
            CodedTerm("1386000", "SCT", "Intracranial hemorrhage"),
            0.93,
            0.5,
            True,
            None,
            frame,
            PlanarRegion(frame, ((10.5, 20.5), (90.5, 20.5), (90.5, 80.5), (10.5, 80.5), (10.5, 20.5)), (50.5, 50.5)),
        )
        for k in range(7)
    )
    heatmaps = tuple(
        HeatmapRef(
            f.key,
            PlaneGrid(frame, 512, 512, AxisScale(8.0, 3.5), AxisScale(8.0, 3.5), plane),
            (64, 64),
            BlobRef(f"{k:064x}", 8192),
        )
        for k, f in enumerate(findings)
    )
    prediction = Prediction(
        "head_ct",
        "pacsai-ich-densenet",
        "0.1.0",
        findings,
        uids,
        quality_flags=(QualityFlag("motion_artefact", _uid(4), 5.5, 4.0, "moved"),),
        heatmaps=heatmaps,
    )
    link = PriorLink(
        PriorStatus.FOUND,
        "prior study of 20240101 chosen of 3",
        PriorStudy(_uid(5), "20240101"),
        evidence=tuple(InstanceRef(_uid(5), _uid(6), ct, u) for u in prior),
        retrieved=RetrievedSeries(_uid(5), _uid(6), prior),
        results=(PriorResult.from_prediction(prediction, _uid(5), "20240101", "model"),),
    )
    return JobRecord(
        route=Route((ModelTask("head_ct", uids),), "routed to head_ct", 5),
        priors=link,
        inference=Inference((prediction,), (replace(prediction, source_uids=prior),), 1.0),
    )


def test_the_row_of_a_400_slice_ct_with_7_heatmaps_stays_under_64_kb(ledger):
    ledger.intake.record(meta(_uid(1, 0), study=_uid(0)), 100.0, 100.0, "t")
    [job] = ledger.jobs.lease(JobState.RECEIVING, "w", 1, 10.0, now=101.0)
    record = _ct_400_record(_uid(0))
    ledger.jobs.transition(job, JobState.COMPLETE, 101.0, record=record)
    row = ledger.jobs.raw_record(job.job_id)
    assert len(row.encode()) < 64 * 1024, len(row)
    assert ledger.jobs.get(job.job_id).record == record  # nothing lost on the way to blobs
    version = SrVersion(
        _uid(7),
        "1.2.840.10008.5.1.4.1.1.88.34",
        _uid(8),
        _uid(0),
        job.job_id,
        1,
        "head_ct",
        "m",
        "1",
        "",
        record.inference.predictions[0],
    )
    [job] = ledger.jobs.lease(JobState.COMPLETE, "w", 1, 10.0, now=102.0)
    ledger.jobs.transition(job, JobState.VALIDATED, 102.0, effects=[RecordSrVersions((version,))])
    with ledger.db.read() as tx:
        stored = tx.one("SELECT prediction FROM sr_results WHERE sop_instance_uid = ?", (_uid(7),))
    assert len(stored["prediction"].encode()) < 64 * 1024
    assert ledger.results.latest(_uid(0), "head_ct").prediction == version.prediction


def test_a_record_of_an_unknown_schema_version_is_a_clear_error(ledger):
    ledger.intake.record(meta("1"), 100.0, 100.0, "t")
    [job] = ledger.jobs.for_study("1.2.3")
    raw_execute(ledger, """UPDATE jobs SET data = '{"schema": 99, "type": "JobRecord", "sections": {}}'""")
    with pytest.raises(RecordError, match="got schema 99; expected 1"):
        ledger.jobs.get(job.job_id)


def test_effects_commit_with_the_transition_and_roll_back_with_it(ledger):
    ledger.intake.record(meta("1"), 100.0, 100.0, "t")
    ledger.intake.record(meta("2"), 100.0, 100.0, "t")
    [job] = ledger.jobs.lease(JobState.RECEIVING, "w", 1, 10.0, now=100.0)
    ledger.jobs.transition(job, JobState.COMPLETE, 100.0, effects=[CoverStudy()])
    [job] = ledger.jobs.lease(JobState.COMPLETE, "w", 1, 10.0, now=100.0)
    issue = ValidationIssue("pixel_data_length", "Pixel Data: too short", "2")
    stale = replace(job, lease_owner="someone-else")
    with pytest.raises(LeaseLost):  # nothing of it may commit
        ledger.jobs.transition(stale, JobState.VALIDATED, 101.0, effects=[HoldInQuarantine("2", (issue,))])
    assert ledger.quarantine.entries() == [] and ledger.intake.states()["2"] == "pending"
    ledger.jobs.transition(job, JobState.VALIDATED, 101.0, effects=[HoldInQuarantine("2", (issue,))])
    [held] = ledger.quarantine.entries()
    assert (held.sop_instance_uid, held.codes, held.reasons[0].message) == (
        "2",
        ("pixel_data_length",),
        "Pixel Data: too short",
    )
    assert ledger.intake.states() == {"1": "pending", "2": "quarantined"}
    [job] = ledger.jobs.lease(JobState.VALIDATED, "w", 1, 10.0, now=102.0)
    ledger.jobs.transition(
        job, JobState.ROUTED, 102.0, effects=[SetAside(Override.SKIPPED, (("1", "no rule matched"),))]
    )
    assert ledger.intake.states()["1"] == "skipped"


def test_sr_versions_outbox_and_review_flags(ledger):
    ledger.intake.record(meta("1"), 100.0, 100.0, "t")
    [job] = ledger.jobs.lease(JobState.RECEIVING, "w", 1, 10.0, now=101.0)
    job = advance(
        ledger, job, (JobState.COMPLETE, JobState.VALIDATED, JobState.ROUTED, JobState.LINKED, JobState.INFERRED), 101.0
    )
    flag = RaiseReviewFlag(FlagKind.PRIOR_IDENTITY_CONFLICT, "1.2.3", "7.7", {"differing": ["PatientName"]})
    ledger.jobs.transition(job, JobState.WRITTEN, 101.0, effects=[flag, flag])  # at most once per pair
    [job] = ledger.jobs.lease(JobState.WRITTEN, "w", 1, 10.0, now=101.0)
    ledger.jobs.transition(job, JobState.DELIVERED, 101.0)
    ledger.intake.record(meta("2", t=200.0), 200.0, 200.0, "t")  # late: version 2
    [late] = ledger.jobs.lease(JobState.RECEIVING, "w", 1, 10.0, now=201.0)
    late = advance(
        ledger,
        late,
        (JobState.COMPLETE, JobState.VALIDATED, JobState.ROUTED, JobState.LINKED, JobState.INFERRED),
        201.0,
    )
    sr = OutboxItem("2.25.1", "1.2.840.10008.5.1.4.1.1.88.34", "2.25.9", OutputKind.SR, "chest_xray", "/o/1.dcm")
    pm = OutboxItem("2.25.2", "1.2.840.10008.5.1.4.1.1.30", "2.25.10", OutputKind.PM, "chest_xray", "/o/2.dcm")
    version = SrVersion(
        "2.25.1",
        sr.sop_class_uid,
        "2.25.9",
        "1.2.3",
        late.job_id,
        late.version,
        "chest_xray",
        "m",
        "1",
        "",
        _prediction(["1"]),
    )
    ledger.jobs.transition(late, JobState.WRITTEN, 201.0, effects=[QueueOutbox((sr, pm)), RecordSrVersions((version,))])
    # The Parametric Map series is ours too: PACS counts must not wait for it (issue #3); so is
    # the series readers' verified SRs of that SR series go to (issue 12).
    from core.review_submissions import verified_series_uid

    assert ledger.results.own_series("1.2.3") == {"2.25.9", "2.25.10", verified_series_uid("2.25.9")}
    assert ledger.results.latest("1.2.3", "chest_xray").prediction == _prediction(["1"])
    assert ledger.results.latest("1.2.3", "chest_xray", before_version=2) is None
    [flagged] = ledger.reviews.flags()
    assert (flagged.other_study_uid, dict(flagged.detail)) == ("7.7", {"differing": ["PatientName"]})
    pending = ledger.outbox.items(late.job_id, DeliveryState.PENDING)
    assert [e.item for e in pending] == [sr, pm] and ledger.status.report(202.0).outbox_pending == 2
    event = AuditEvent(AuditEventType.SR_DELIVERED, "stage:delivery", "1.2.3", "2.25.1", late.job_id)
    ledger.outbox.mark_delivered(pending[0].item_id, 203.0, event)
    [for_ehr] = ledger.outbox.for_ehr(0.0)
    assert for_ehr.item == sr
    ledger.outbox.mark_ehr_queued([for_ehr.item_id])
    assert ledger.outbox.for_ehr(0.0) == []


# ------------------------------------------------------------------ quarantine, controls
def test_release_reopens_the_study_and_discard_marks_the_instance(ledger):
    ledger.intake.record(meta("1"), 100.0, 100.0, "t")
    ledger.intake.record(meta("2"), 100.0, 100.0, "t")
    [job] = ledger.jobs.lease(JobState.RECEIVING, "w", 1, 10.0, now=100.0)
    job = advance(ledger, job, (JobState.COMPLETE,), 100.0)
    issue = ValidationIssue("slice_gap", "series 1.2.3.1: gap", "1")
    ledger.jobs.transition(
        job, JobState.VALIDATED, 101.0, effects=[HoldInQuarantine("1", (issue,)), HoldInQuarantine("2", (issue,))]
    )
    with pytest.raises(RejectedInput, match="reason"):
        ledger.quarantine.release("Q1", "user:op", " ", 102.0)
    [released] = ledger.quarantine.release("1", "user:op", "gap is expected", 102.0)
    assert released.state is QuarantineState.RELEASED and released.accepted_codes == ("slice_gap",)
    assert ledger.quarantine.accepted_codes(["1", "2"]) == {"1": frozenset({"slice_gap"})}
    assert [j.state for j in ledger.jobs.for_study("1.2.3")] == [JobState.VALIDATED, JobState.RECEIVING]
    [discarded] = ledger.quarantine.discard("2", "user:op", "duplicate scan", 103.0)
    assert discarded.state is QuarantineState.DISCARDED and ledger.intake.states()["2"] == "discarded"
    with pytest.raises(RejectedInput, match="expected a held"):
        ledger.quarantine.discard("2", "user:op", "again", 104.0)
    kinds = [e.type for e in ledger.audit.events("1.2.3")]
    assert kinds.count("quarantine_released") == 1 and kinds.count("quarantine_discarded") == 1


def test_ai_switches_round_trip_and_are_audited(ledger):
    ledger.controls.set_ai_switch("modality", "cr", False, "downtime", "user:rad", 1.0)
    ledger.controls.set_ai_switch("study", "1.2.3", False, "patient request", "user:rad", 2.0)
    sw = ledger.controls.ai_switches()
    assert sw.modalities == {"CR": False} and sw.studies_off == frozenset({"1.2.3"})
    ledger.controls.set_ai_switch("study", "1.2.3", True, "", "user:rad", 3.0)
    assert ledger.controls.ai_switches().studies_off == frozenset()
    assert sum(e.type == "ai_switch_changed" for e in ledger.audit.events()) == 3
    with pytest.raises(ValueError, match="scope"):
        ledger.controls.set_ai_switch("site", "x", False, "", "u", 4.0)


def test_health_is_recorded_with_every_loop(ledger):
    loops = (LoopHealth("stage:router", True, 5, 1, 9.0, 8.0, ""), LoopHealth("heartbeat", False))
    ledger.controls.record_health(ActorHealth("router", 42, 5, 1, 0, "", loops), 10.0)
    [stage] = ledger.status.report(11.0).stages
    assert stage.health.loops == loops and stage.status is HealthStatus.DOWN  # a thread ended
    assert stage.health.last_work_at == 8.0 and stage.heartbeat_at == 10.0


# ------------------------------------------------------------------------- audit trail
def test_audit_chain_detects_tampering_in_the_database(ledger):
    ledger.intake.record(meta("1"), 100.0, 102.0, "t")
    ledger.audit.append([AuditEvent(AuditEventType.JOB_REPLAYED, "user:x", "1.2.3")], 101.0)
    assert ledger.audit.verify() is None
    drop_audit_guards(ledger)
    raw_execute(ledger, "UPDATE audit SET canonical = replace(canonical, 'user:x', 'user:y') WHERE seq = 2")
    broken = ledger.audit.verify()
    assert broken is not None and broken.seq == 2


def test_the_database_refuses_to_change_or_delete_audit_entries(ledger):
    """Migration 0011: UPDATE, DELETE (and TRUNCATE on PostgreSQL) of the trail are refused by
    the database itself, and so is moving the mark of where signing started."""
    ledger.audit.append([AuditEvent(AuditEventType.JOB_REPLAYED, "user:x", "1.2.3")], 101.0)
    ledger.audit.chain()  # PostgreSQL: seq 1 exists once chained
    refused = [
        "UPDATE audit SET actor = 'someone-else' WHERE seq = 1",
        "DELETE FROM audit WHERE seq = 1",
        "UPDATE audit_legacy SET until_seq = 99",
        "DELETE FROM audit_legacy",
        "INSERT INTO audit_legacy (until_seq) VALUES (99)",
    ]
    if ledger.backend == "postgresql":
        refused += ["TRUNCATE audit", "TRUNCATE audit_legacy"]
    for sql in refused:
        with pytest.raises(Exception, match="append-only"):
            raw_execute(ledger, sql)
    [entry] = ledger.audit.events()
    assert entry.actor == "user:x" and ledger.audit.legacy_until() == 0 and ledger.audit.verify() is None
    if ledger.backend == "postgresql":  # the chainer's UPDATE may place an entry, not change it
        ledger.audit.append([AuditEvent(AuditEventType.JOB_REPLAYED, "user:y", "1.2.3")], 102.0)
        for sql in (
            "UPDATE audit SET actor = 'z' WHERE seq IS NULL",
            "UPDATE audit SET seq = 9, actor = 'z' WHERE seq IS NULL",
        ):
            with pytest.raises(Exception, match="append-only"):
                raw_execute(ledger, sql)
        raw_execute(
            ledger, "UPDATE audit SET seq = 9, prev_hash = 'x', hash = 'y' WHERE seq IS NULL"
        )  # placing: allowed
        assert ledger.audit.verify() == ChainBreak(9, "sequence jumps from 1 to 9")


def test_a_changed_audit_column_is_neither_shown_nor_verified(ledger):
    """The reviewer's finding: ``UPDATE audit SET actor = ...`` used to verify and be shown."""
    ledger.audit.append([AuditEvent(AuditEventType.JOB_REPLAYED, f"user:{u}", "1.2.3") for u in "abc"], 101.0)
    ledger.audit.chain()
    drop_audit_guards(ledger)
    raw_execute(ledger, "UPDATE audit SET actor = 'someone-else' WHERE seq = 2")
    assert [e.actor for e in ledger.audit.events()] == ["user:a", "user:b", "user:c"]  # the signed JSON
    broken = ledger.audit.verify()
    assert (broken.seq, broken.reason) == (2, "column actor differs from the signed event")


def test_deleting_the_newest_audit_entries_is_found_against_the_exported_head(ledger):
    ledger.audit.append([AuditEvent(AuditEventType.JOB_RETRY, "w", f"1.{i}") for i in range(6)], 101.0)
    head = ledger.audit.export_head(102.0)
    assert head.seq == 6 and ledger.audit.seal.head_file.exists()
    drop_audit_guards(ledger)
    raw_execute(ledger, "DELETE FROM audit WHERE seq >= 5")
    broken = ledger.audit.verify()  # finds the exported head in its file
    assert broken.seq == 5 and "5 to 6 are missing" in broken.reason


def test_a_history_rewritten_and_resigned_without_the_key_is_found(ledger):
    """An attacker with the database (not the key) rewrites entry 2 and recomputes every later
    hash and signature with a key of their own."""
    from core.audit import chain_hash
    from core.audit_seal import AuditSigner

    ledger.audit.append([AuditEvent(AuditEventType.JOB_RETRY, "w", f"1.{i}") for i in range(4)], 101.0)
    drop_audit_guards(ledger)
    attacker = AuditSigner.generate()
    rows = [
        (e.seq, AuditEvent(AuditEventType.JOB_RETRY, "w", e.study_uid).canonical(e.at)) for e in ledger.audit.events()
    ]
    rows[1] = (2, rows[1][1].replace('"w"', '"intruder"'))
    with ledger.db.read() as tx:
        prev = tx.one("SELECT hash FROM audit WHERE seq = 1")["hash"]
    for seq, canonical in rows[1:]:
        digest = chain_hash(prev, canonical)
        sql = "UPDATE audit SET canonical = ?, actor = ?, prev_hash = ?, hash = ?, key_id = ?, sig = ? WHERE seq = ?"
        actor = "intruder" if seq == 2 else "w"
        args = (canonical, actor, prev, digest, attacker.key_id, attacker.sign(seq, digest), seq)
        ledger.db.run(lambda tx, sql=sql, args=args: tx.execute(sql, args))
        prev = digest
    broken = ledger.audit.verify()
    assert broken.seq == 2 and "not a trusted key" in broken.reason


def test_concurrent_appends_keep_one_unbroken_chain(ledger):
    def append(k: int) -> None:
        for i in range(10):
            ledger.audit.append([AuditEvent(AuditEventType.JOB_RETRY, f"w{k}", f"1.{i}")], 100.0 + i)

    threads = [threading.Thread(target=append, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(ledger.audit.events()) == 40 and ledger.audit.verify() is None


def test_a_trail_from_before_signing_verifies_as_legacy_up_to_where_signing_started(tmp_path, storage_for):
    """A ledger migrated up to 0010 holds an unsigned, hash-chained trail; 0011 marks its last
    entry, entries appended after it are signed, and stripping their signatures is found."""
    from yoyo import get_backend, read_migrations

    from core.audit import GENESIS, chain_hash
    from state.migrate import MIGRATIONS

    storage = storage_for("sqlite")
    path = tmp_path / "var" / "ledger.sqlite"
    path.parent.mkdir(parents=True)
    backend = get_backend(f"sqlite:///{path}")
    with backend.lock():
        todo = backend.to_apply(read_migrations(str(MIGRATIONS / "ledger" / "sqlite")))
        backend.apply_migrations(todo.filter(lambda m: m.id < "0011"))
    backend.connection.close()
    con, prev = sqlite3.connect(path), GENESIS
    for seq in (1, 2, 3):
        event = AuditEvent(AuditEventType.JOB_RETRY, "w", f"1.{seq}")
        canonical = event.canonical(100.0)
        digest = chain_hash(prev, canonical)
        con.execute(
            "INSERT INTO audit (seq, at, type, actor, study_uid, detail, canonical, prev_hash, hash)"
            " VALUES (?, 100.0, 'job_retry', 'w', ?, '{}', ?, ?, ?)",
            (seq, f"1.{seq}", canonical, prev, digest),
        )
        prev = digest
    con.commit()
    con.close()
    led = open_ledger(storage)  # applies 0011
    led.audit.append([AuditEvent(AuditEventType.JOB_REPLAYED, "user:x", "1.4")], 101.0)
    report = led.audit.check()
    assert led.audit.legacy_until() == 3 and report.broken is None and (report.entries, report.signed) == (4, 1)
    drop_audit_guards(led)
    raw_execute(led, "UPDATE audit SET key_id = NULL, sig = NULL WHERE seq = 4")
    assert led.audit.verify() == ChainBreak(4, "unsigned entry after signing started")
    led.close()


# ------------------------------------------------------------------------------ retention
def test_retention_pages_take_every_due_instance_once_oldest_first(ledger, tmp_path):
    """The purge round's pages (``state.ledger.retention``): delivered jobs by (delivery time,
    job id), ties across a page boundary included, each job's unpurged instances of this cell;
    quarantined instances by (hold time, UID). Both dialects take the row-value page keys."""
    from tests.unit.test_retention_purge import _study

    var = tmp_path / "var"
    for n in range(5):  # five studies delivered at the same time
        ledger.db.run(lambda tx, n=n: _study(tx, var, f"8.{n}", 2, 1000.0))
    ledger.db.run(lambda tx: _study(tx, var, "8.0old", 1, 900.0))
    ledger.db.run(lambda tx: _study(tx, var, "8.late", 1, 2000.0))  # after the cutoff
    ledger.db.run(lambda tx: _study(tx, var, "8.work", 1, 900.0, job_state="routed"))  # not delivered
    ledger.retention.mark_purged(["8.1.0"], [], 1500.0)  # purged already: not offered again
    seen, after = [], None
    while True:
        items, after = ledger.retention.delivered(1500.0, after, jobs=2)
        if after is None:
            break
        seen += [(i.sop_instance_uid, i.since) for i in items]
    uids = [u for u, _ in seen]
    expected = sorted(f"8.{n}.{k}" for n in range(5) for k in (0, 1) if (n, k) != (1, 0))
    assert uids[0] == "8.0old.0" and sorted(uids[1:]) == expected and len(set(uids)) == 10
    for uid, when in (("q.1", 50.0), ("q.2", 50.0), ("q.3", 60.0), ("q.4", 5000.0)):
        ledger.db.run(lambda tx, uid=uid, when=when: _study(tx, var, uid, 1, 1.0, job_state="routed"))
        ledger.db.run(
            lambda tx, uid=uid, when=when: tx.execute(
                "INSERT INTO quarantine (sop_instance_uid, study_uid, series_uid, state, created_at, updated_at)"
                " VALUES (?, ?, 's', 'held', ?, ?)",
                (f"{uid}.0", uid, when, when),
            )
        )
    held, after = [], None
    while True:
        items, after = ledger.retention.quarantined(1500.0, after, limit=1)
        if after is None:
            break
        held += [i.sop_instance_uid for i in items]
    assert held == ["q.1.0", "q.2.0", "q.3.0"]


# --------------------------------------------------------------- processes and schema
def test_a_second_process_connection_sees_committed_rows(ledger, backend, storage_for):
    ledger.intake.record(meta("1"), 100.0, 102.0, "t")
    other = Ledger(type(ledger.db)(**_same_database(ledger)), ledger.blobs)
    assert other.intake.has_instance("1")
    assert other.status.report(103.0).jobs["receiving"] == 1
    other.close()


def _same_database(ledger: Ledger) -> dict:
    if ledger.backend == "sqlite":
        return {"path": ledger.db.path}  # type: ignore[attr-defined]
    db = ledger.db
    return {"dsn": db._dsn, "schema": db.schema}  # type: ignore[attr-defined]


def test_migrations_are_applied_once_and_recorded(ledger, backend, storage_for):
    assert pending(ledger.db.url, "ledger", ledger.backend) == []
    var_dir = ledger.blobs.root.parent if isinstance(ledger.blobs, BlobStore) else None
    again = open_ledger(storage_for(backend, var_dir=var_dir))
    assert pending(again.db.url, "ledger", again.backend) == []
    again.close()


def test_a_ledger_written_before_migrations_is_adopted(backend, tmp_path, storage_for):
    if backend != "sqlite":
        pytest.skip("only SQLite ledgers predate migrations")
    from state.migrate import MIGRATIONS

    path = tmp_path / "var" / "ledger.sqlite"
    path.parent.mkdir(parents=True)
    con = sqlite3.connect(path)
    con.executescript((MIGRATIONS / "ledger" / "sqlite" / "0001_initial.sql").read_text())
    con.execute(
        "INSERT INTO jobs (study_uid, version, state, not_before, created_at, updated_at,"
        " last_instance_at) VALUES ('7.7', 1, 'receiving', 0, 0, 0, 0)"
    )
    con.commit()
    con.close()
    con = sqlite3.connect(path)  # what an issue-2 ledger held: quarantined, but no entry
    con.execute(
        "INSERT INTO instances (sop_instance_uid, sop_class_uid, study_uid, series_uid,"
        " path, sha256, size, received_at, override, reason, job_id) VALUES"
        " ('7.7.1.1', '1.2', '7.7', '7.7.1', '/x', 'aa', 1, 5.0, 'quarantined',"
        ' \'[{"code": "pixel_attributes_inconsistent", "message": "m"}]\', 1)'
    )
    con.commit()
    con.close()
    led = open_ledger(storage_for(backend, var_dir=tmp_path / "var"))
    assert [j.study_instance_uid for j in led.jobs.for_study("7.7")] == ["7.7"]
    assert pending(led.db.url, "ledger", "sqlite") == []
    [entry] = led.quarantine.entries()
    assert entry.codes == ("pixel_attributes_inconsistent",) and entry.study_uid == "7.7"


# -------------------------------------------------------------------------- wake-ups
def test_a_transition_wakes_the_next_stage_where_the_backend_can(ledger):
    ledger.intake.record(meta("1"), 100.0, 100.0, "t")
    [job] = ledger.jobs.lease(JobState.RECEIVING, "w", 1, 10.0, now=100.0)
    woken: list[float] = []

    def wait() -> None:
        started = time.monotonic()
        ledger.jobs.wait_for_work(JobState.COMPLETE, 5.0, 1e12)
        woken.append(time.monotonic() - started)

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.5)  # the waiter is listening
    ledger.jobs.transition(job, JobState.COMPLETE, 100.0, effects=[CoverStudy()])
    waiter.join(10)
    if ledger.db.notifies:
        assert woken[0] < 2.0  # NOTIFY, not the 5 s timeout
    else:
        assert woken[0] >= 5.0  # SQLite polls: nothing wakes it


def test_instances_are_validated_while_the_study_is_receiving(ledger, tmp_path):
    listener = Listener(ListenerConfig(port=0, min_free_bytes=0), tmp_path / "spool", tmp_path / "rej", ledger, 60.0)
    good, bad = make_cxr_study(seed=401, n_images=2, patient_id="PV1", size=64)
    bad.PixelData = bad.PixelData[: len(bad.PixelData) // 2]
    for _ds, path in zip((good, bad), save_study([good, bad], tmp_path / "in"), strict=True):
        listener.ingest_file(path.read_bytes(), "PACSFWD")
    cache = VerdictCache()
    work = ValidationWork(ledger, Validator(), "stage:validator", cache)
    pre = PreValidator(ledger, work.check, cache)
    assert pre.run_once() == 2 and pre.run_once() == 0  # each instance is read once
    [job] = ledger.jobs.lease(JobState.RECEIVING, "w", 1, 10.0, now=time.time() + 61)
    ledger.jobs.transition(job, JobState.COMPLETE, time.time(), effects=[CoverStudy()])
    [job] = ledger.jobs.lease(JobState.COMPLETE, "w", 1, 10.0, now=time.time())
    work(job)
    assert cache.hits == 2  # nothing re-read at completion
    held = ledger.intake.job_instances(job.job_id)
    assert len(held) == 2 and not any(i in cache for i in held)  # a validated study's verdicts are let go
    assert work.checked(held[0])[1] is not None  # read again if a later version asks
    states = ledger.intake.states(str(good.StudyInstanceUID))
    assert states == {str(good.SOPInstanceUID): "pending", str(bad.SOPInstanceUID): "quarantined"}
    listener.stop()


# ------------------------------------------------------- issue 18: completion evidence
def _step_uids(ds_list):
    return [str(d.SOPInstanceUID) for d in ds_list]


def test_mpps_steps_are_stored_whole_a_refusal_stores_nothing_and_a_step_wakes_its_study(ledger):
    study = make_cxr_study(seed=18, n_images=2, patient_id="MPPS1")
    uid, step_uid = str(study[0].StudyInstanceUID), mpps_uid(study)
    ledger.intake.record(meta("i1", study=uid, t=100.0), 100.0, 500.0, "t")  # due only at 500
    created = ledger.evidence.record_step(
        step_uid, lambda old: create_step(mpps_n_create(study), step_uid, "CT1", 101.0, old), "l", 101.0
    )
    assert created.status is StepStatus.IN_PROGRESS
    with pytest.raises(DimseRefused) as refused:  # a second N-CREATE: 0111H, nothing changes
        ledger.evidence.record_step(
            step_uid, lambda old: create_step(mpps_n_create(study), step_uid, "CT1", 102.0, old), "l", 102.0
        )
    assert refused.value.status == 0x0111
    ledger.evidence.record_step(step_uid, lambda old: set_step(old, mpps_n_set(study), step_uid, 103.0), "l", 103.0)
    [step] = ledger.evidence.steps_for([uid, "9.9"])[uid]
    assert step.status is StepStatus.COMPLETED and step.expected == frozenset(_step_uids(study))
    with pytest.raises(DimseRefused) as final:  # final: "may no longer be updated" (A710H)
        ledger.evidence.record_step(step_uid, lambda old: set_step(old, mpps_n_set(study), step_uid, 104.0), "l", 104.0)
    assert final.value.error_id == 0xA710
    [job] = ledger.jobs.lease(JobState.RECEIVING, "w", 1, 10.0, now=103.0)  # made due by the step
    assert job.study_instance_uid == uid
    events = [e for e in ledger.audit.events(uid) if e.type == "mpps_received"]
    assert [e.detail["status"] for e in events] == ["IN PROGRESS", "COMPLETED"]
    assert "MPPS1" not in str(events)  # no patient identity in the trail


def test_availability_notices_are_kept_once_each_per_study(ledger):
    study = make_cxr_study(seed=19, n_images=2, patient_id="IAN1")
    uid = str(study[0].StudyInstanceUID)
    notice = notice_from_n_create(ian_notice(study), "2.25.77", "PACS", 100.0)
    assert ledger.evidence.record_notice(notice, "l", 100.0) is True
    assert ledger.evidence.record_notice(notice, "l", 101.0) is False
    assert ledger.evidence.notices_for([uid]) == {uid: (notice,)}
    assert [e.type for e in ledger.audit.events(uid)] == ["ian_received"]


def test_a_late_arrival_is_judged_once_and_a_tightened_sender_is_audited_and_flagged(ledger):
    standing = SenderStanding("ORTHANC", 1, 0)
    tightened = SenderTightened("ORTHANC", "1.2.3", CompletionRule.PACS_COUNTS, 3.0, 1, 20.0, 40.0)
    verdict = LateArrival(ArrivalKind.EARLY, standing, tightened)
    assert ledger.evidence.arrival_judged(7) is False
    assert ledger.evidence.record_arrival(7, "1.2.3", verdict, "stage:assembler", 100.0) is True
    assert ledger.evidence.record_arrival(7, "1.2.3", verdict, "stage:assembler", 101.0) is False
    assert ledger.evidence.arrival_judged(7) and ledger.evidence.standings() == {"ORTHANC": standing}
    [event] = [e for e in ledger.audit.events("1.2.3") if e.type == "sender_tightened"]
    assert event.detail == tightened.audit_detail()
    [flag] = ledger.reviews.flags(kind=FlagKind.SENDER_TIGHTENED)
    assert flag.subject == "ORTHANC:1" and ledger.status.report(102.0).senders_tightened == {"ORTHANC": 1}


def test_receiving_studies_know_modalities_version_and_what_is_held(ledger):
    ledger.intake.record(meta("1", series="1.2.3.1"), 100.0, 102.0, "t")
    [study] = ledger.intake.receiving_studies(now=102.0)
    assert (study.modalities, study.version, study.opened_at) == (("CT",), 1, 100.0)
    assert ledger.intake.held_uids(["1.2.3", "4.4"]) == {"1.2.3": frozenset({"1"}), "4.4": frozenset()}


# ------------------------------------------------------------ issue 18: SR versions
def _written(ledger, uid, now, family="chest_xray"):
    """Take the receiving job of the study through to written with one SR version."""
    [job] = ledger.jobs.lease(JobState.RECEIVING, "w", 1, 10.0, now=now)
    job = advance(
        ledger, job, (JobState.COMPLETE, JobState.VALIDATED, JobState.ROUTED, JobState.LINKED, JobState.INFERRED), now
    )
    sop = f"2.25.{job.version}"
    sr = OutboxItem(sop, "1.2.840.10008.5.1.4.1.1.88.34", "2.25.9", OutputKind.SR, family, f"/o/{sop}.dcm")
    version = SrVersion(
        sop, sr.sop_class_uid, "2.25.9", uid, job.job_id, job.version, family, "m", "1", "", _prediction(["1"])
    )
    ledger.jobs.transition(job, JobState.WRITTEN, now, effects=[QueueOutbox((sr,)), RecordSrVersions((version,))])
    [job] = ledger.jobs.lease(JobState.WRITTEN, "w", 1, 10.0, now=now)
    return job


def _review(ledger, sr_uid, reader, now):
    """A reader's review of an AI SR version, as the review API records it."""
    request = ReviewRequest(f"{reader}^Dr", (FindingDecision("1", "agree", True, ""),), "", heatmap_viewed=False)
    return ledger.clinical.record_review(ledger.results.version(sr_uid), reader, request, {}, reader, now).submission_id


def test_verified_srs_are_published_once_built_while_pending_or_delivered(ledger):
    ledger.intake.record(meta("1"), 100.0, 100.0, "t")
    _written(ledger, "1.2.3", 100.0)  # AI SR 2.25.1, series 2.25.9
    listed = lambda **uids: [r.sop_instance_uid for r in ledger.clinical.published_verified(**uids)]  # noqa: E731
    rita, omar = _review(ledger, "2.25.1", "rita", 101.0), _review(ledger, "2.25.1", "omar", 102.0)
    assert listed() == []  # not built yet: nothing the PACS could hold
    ledger.clinical.mark_verified_built(rita, "2.25.71", "/o/2.25.71.dcm")
    ledger.clinical.mark_verified_built(omar, "2.25.72", "/o/2.25.72.dcm")
    [r] = ledger.clinical.published_verified(sop_instance_uid="2.25.71")
    assert (r.study_uid, r.series_uid, r.sop_class_uid, r.kind, r.path, r.created_at) == (
        "1.2.3", verified_series_uid("2.25.9"), "1.2.840.10008.5.1.4.1.1.88.34", OutputKind.SR, "/o/2.25.71.dcm", 101.0
    )  # fmt: skip
    assert listed() == listed(study_uid="1.2.3") == ["2.25.72", "2.25.71"]  # newest first
    assert listed(series_uid=verified_series_uid("2.25.9")) == ["2.25.72", "2.25.71"]
    assert listed(series_uid="2.25.9") == listed(study_uid="9.9") == [] and listed(limit=1) == ["2.25.72"]
    event = AuditEvent(AuditEventType.VERIFIED_SR_DELIVERED, "d", "1.2.3", "2.25.71")
    assert ledger.clinical.mark_verified_delivered(rita, 103.0, event)
    ledger.clinical.note_verified_failure(omar, "0xA700", dead=True)  # refused to the end
    assert listed() == ["2.25.71"]
    newer = _review(ledger, "2.25.1", "rita", 104.0)
    ledger.clinical.mark_verified_built(newer, "2.25.73", "/o/2.25.73.dcm")
    assert listed() == ["2.25.73", "2.25.71"]  # delivered stays listed; the newer is pending
    again = _review(ledger, "2.25.1", "rita", 105.0)
    assert [s.submission_id for s in ledger.clinical.pending_verified()] == [again]  # supersedes 2.25.73
    assert listed() == ["2.25.71"]  # superseded before it was sent: the PACS never gets it


def _plan(study_uid, cap=5):
    return lambda versions: plan_delivery(study_uid, "chest_xray", versions, cap)


def test_sr_versions_are_claimed_one_at_a_time_and_a_newer_one_supersedes_an_unsent_one(ledger):
    ledger.intake.record(meta("1"), 100.0, 100.0, "t")
    first = _written(ledger, "1.2.3", 100.0)
    ledger.intake.record(meta("2", t=101.0), 101.0, 101.0, "t")  # version 2 is on its way
    waiting = ledger.results.claim_delivery(first, "chest_xray", _plan("1.2.3"), "stage:delivery", 101.0)
    assert waiting.plan.action is DeliveryAction.WAIT and "on its way" in waiting.plan.reason
    assert waiting.own is VersionState.PENDING
    second = _written(ledger, "1.2.3", 102.0)
    sent = ledger.results.claim_delivery(second, "chest_xray", _plan("1.2.3"), "stage:delivery", 102.0)
    assert (sent.plan.action, sent.plan.version.version, sent.plan.supersede) == (DeliveryAction.SEND, 2, (1,))
    states = {v.job_version: v.state for v in ledger.results.versions("1.2.3")}
    assert states == {1: VersionState.SUPERSEDED, 2: VersionState.SENDING} and sent.own is VersionState.SENDING
    late = ledger.results.claim_delivery(first, "chest_xray", _plan("1.2.3"), "stage:delivery", 103.0)
    assert (late.plan.action, late.own) == (DeliveryAction.NOTHING, VersionState.SUPERSEDED)
    [item] = ledger.outbox.items(second.job_id)
    ledger.outbox.mark_delivered(item.item_id, 104.0, AuditEvent(AuditEventType.SR_DELIVERED, "d", "1.2.3"))
    assert ledger.results.version("2.25.2").state is VersionState.DELIVERED
    assert ledger.results.latest("1.2.3", "chest_xray").job_version == 2  # superseded: not a result
    ledger.jobs.transition(first, JobState.SKIPPED, 105.0, reason="superseded", effects=[WithdrawOutbox("chest_xray")])
    assert [i.state for i in ledger.outbox.items(first.job_id)] == [DeliveryState.SUPERSEDED]
    superseded = [e for e in ledger.audit.events("1.2.3") if e.type == "sr_version_superseded"]
    assert [(e.detail["version"], e.detail["superseded_by"]) for e in superseded] == [(1, 2)]


def test_the_version_cap_holds_with_a_warning_until_a_reviewer_releases_it(ledger):
    ledger.intake.record(meta("1"), 100.0, 100.0, "t")
    job = _written(ledger, "1.2.3", 100.0)
    ledger.results.claim_delivery(job, "chest_xray", _plan("1.2.3"), "d", 100.0)
    [item] = ledger.outbox.items(job.job_id)
    ledger.outbox.mark_delivered(item.item_id, 100.5, AuditEvent(AuditEventType.SR_DELIVERED, "d", "1.2.3"))
    ledger.jobs.transition(job, JobState.DELIVERED, 100.5)
    ledger.intake.record(meta("2", t=101.0), 101.0, 101.0, "t")
    second = _written(ledger, "1.2.3", 101.0)
    held = ledger.results.claim_delivery(second, "chest_xray", _plan("1.2.3", cap=1), "d", 101.0).plan
    assert held.action is DeliveryAction.HOLD and ledger.status.report(101.0).sr_versions_held == 1
    ledger.jobs.postpone(second, 10_000.0)
    ledger.db.run(
        lambda tx: apply_flag(
            tx,
            second.job_id,
            RaiseReviewFlag(  # as delivery raises it
                FlagKind.SR_VERSION_CAP, "1.2.3", "", held.cap.audit_detail(), "chest_xray:2"
            ),
            101.0,
        )
    )
    [flag] = ledger.reviews.flags(kind=FlagKind.SR_VERSION_CAP)
    ops = Reviewer("user:otto", frozenset({ReviewRole.OPERATOR}))
    with pytest.raises(AccessDenied):
        ledger.reviews.resolve(
            flag.flag_id,
            Reviewer("user:rita", frozenset({ReviewRole.RADIOLOGIST})),
            Resolution.RELEASED,
            "send it",
            102.0,
        )
    done = ledger.reviews.resolve(flag.flag_id, ops, Resolution.RELEASED, "the later slices matter", 103.0)
    assert (done.resolved_by, done.reason, done.state) == ("user:otto", "the later slices matter", FlagState.RESOLVED)
    assert released_versions(ledger.reviews.flags(None, "1.2.3"), "1.2.3", "chest_xray") == {2}
    [again] = ledger.jobs.lease(JobState.WRITTEN, "w", 1, 10.0, now=103.0)  # due again at once
    assert again.job_id == second.job_id
    [event] = [e for e in ledger.audit.events("1.2.3") if e.type == "review_flag_resolved"]
    assert (event.actor, event.detail["resolution"], event.detail["reason"]) == (
        "user:otto",
        "released",
        "the later slices matter",
    )
    with pytest.raises(RejectedInput, match="resolved by user:otto"):
        ledger.reviews.resolve(flag.flag_id, ops, Resolution.ACKNOWLEDGED, "again", 104.0)
    with pytest.raises(RejectedInput, match="review flag 999"):
        ledger.reviews.get(999)


def test_our_own_result_forwarded_back_by_the_pacs_is_a_duplicate_and_opens_no_job(ledger):
    ledger.intake.record(meta("1"), 100.0, 100.0, "t")
    job = _written(ledger, "1.2.3", 100.0)
    ledger.jobs.transition(job, JobState.DELIVERED, 101.0)
    assert ledger.intake.has_instance("2.25.1")  # the SR of version 1
    echo = replace(meta("2.25.1", series="2.25.9", t=102.0), sop_class_uid="1.2.840.10008.5.1.4.1.1.88.34")
    assert ledger.intake.record(echo, 102.0, 102.0, "t") is RecordResult.DUPLICATE
    assert [j.version for j in ledger.jobs.for_study("1.2.3")] == [1]
    [event] = [e for e in ledger.audit.events("1.2.3") if e.type == "instance_duplicate"]
    assert event.detail["origin"] == "own_result"


# ------------------------------------------------------------------------ ingress cells
def test_each_cell_leases_only_its_jobs_and_a_split_study_stays_one_job(backend, storage_for, tmp_path):
    base = storage_for(backend)
    cell_a = open_ledger(base.model_copy(update={"cell": "a"}))
    cell_b = Ledger(cell_a.db, cell_a.blobs, cell="b")  # the same shared database, another node
    try:
        cell_a.intake.record(meta("1", study="7.1"), 100.0, 102.0, "t")
        cell_b.intake.record(meta("2", study="7.1", t=100.5), 100.5, 102.5, "t")  # the same study
        cell_b.intake.record(meta("3", study="7.2"), 100.0, 102.0, "t")
        assert [s.study_uid for s in cell_a.intake.receiving_studies(200.0)] == ["7.1"]
        assert [s.study_uid for s in cell_b.intake.receiving_studies(200.0)] == ["7.2"]
        assert len(cell_a.jobs.for_study("7.1")) == 1  # one job although two cells received it
        [a_job] = cell_a.jobs.lease(JobState.RECEIVING, "wa", 5, 10.0, now=200.0)
        [b_job] = cell_b.jobs.lease(JobState.RECEIVING, "wb", 5, 10.0, now=200.0)
        assert (a_job.study_instance_uid, b_job.study_instance_uid) == ("7.1", "7.2")
        cell_a.jobs.transition(a_job, JobState.COMPLETE, 201.0, effects=[CoverStudy()])
        foreign = cell_a.intake.foreign_instances(a_job.job_id)
        assert {c: [i.sop_instance_uid for i in v] for c, v in foreign.items()} == {"b": ["2"]}
        cell_a.intake.rehome([("2", "/cells/a/spool/7.1/2.dcm")])
        assert cell_a.intake.foreign_instances(a_job.job_id) == {}
        [moved] = cell_a.intake.instances(["2"])
        assert moved.path == "/cells/a/spool/7.1/2.dcm"
        assert cell_b.jobs.lease(JobState.COMPLETE, "wb", 5, 10.0, now=202.0) == []  # not b's job
        [done] = cell_a.jobs.lease(JobState.COMPLETE, "wa", 5, 10.0, now=202.0)
        assert done.job_id == a_job.job_id
    finally:
        cell_a.close()


def test_one_machine_cell_sees_every_job(ledger):
    """The one-machine ledger (cell '') keeps its unfiltered behaviour."""
    ledger.intake.record(meta("1", study="8.1"), 100.0, 102.0, "t")
    assert [j.study_instance_uid for j in ledger.jobs.lease(JobState.RECEIVING, "w", 5, 10.0, now=103.0)] == ["8.1"]
