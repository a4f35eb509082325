"""The SQLite ledger against a real file: durability rules, leases, retries, audit chain."""

from __future__ import annotations

import sqlite3

import pytest

from actors.adapters.ledger import RecordResult, SqliteLedger
from core.audit import AuditEvent
from core.config import RetryConfig
from core.errors import LeaseLost, RejectedInput
from core.ledger import RetryPolicy
from core.types import AuditEventType, InstanceMeta, JobState


def meta(uid, study="1.2.3", t=100.0, sha="aa"):
    return InstanceMeta(uid, "1.2.840.10008.5.1.4.1.1.2", study, study + ".1", "CT", "1.2.840.10008.1.2.1",
                        f"/spool/{uid}.dcm", sha, 10, t, "SCU", "CHEST", "", "k")


@pytest.fixture
def ledger(tmp_path):
    led = SqliteLedger(tmp_path / "ledger.sqlite")
    yield led
    led.close()


def test_pragmas_make_commits_durable(ledger):
    con = sqlite3.connect(ledger.path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert ledger._con.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_instances_of_a_study_share_one_receiving_job(ledger):
    assert ledger.record_instance(meta("1"), 100.0, 102.0, "t") == RecordResult.NEW
    assert ledger.record_instance(meta("2", t=101.0), 101.0, 103.0, "t") == RecordResult.NEW
    jobs = ledger.jobs_for_study("1.2.3")
    assert len(jobs) == 1 and jobs[0].state is JobState.RECEIVING
    assert jobs[0].not_before == 103.0  # the quiet period restarts with each instance


def test_resent_instance_is_a_duplicate_and_audited(ledger):
    ledger.record_instance(meta("1"), 100.0, 102.0, "t")
    assert ledger.record_instance(meta("1", sha="bb"), 100.5, 102.5, "t") == RecordResult.DUPLICATE
    events = ledger.audit_events("1.2.3")
    assert [e["type"] for e in events] == ["instance_received", "instance_duplicate"]
    assert events[1]["detail"]["same_bytes"] is False


def test_lease_respects_not_before_priority_and_expiry(ledger):
    ledger.record_instance(meta("1"), 100.0, 102.0, "t")
    assert ledger.lease(JobState.RECEIVING, "w1", 5, 10.0, now=101.0) == []
    [job] = ledger.lease(JobState.RECEIVING, "w1", 5, 10.0, now=102.0)
    assert ledger.lease(JobState.RECEIVING, "w2", 5, 10.0, now=103.0) == []  # leased by w1
    [again] = ledger.lease(JobState.RECEIVING, "w2", 5, 10.0, now=112.5)  # w1's lease expired
    assert again.job_id == job.job_id and again.lease_owner == "w2"
    with pytest.raises(LeaseLost):
        ledger.complete_study(job, 113.0, [])  # w1 lost it
    ledger.complete_study(again, 113.0, [])
    assert [i.sop_instance_uid for i in ledger.job_instances(job.job_id)] == ["1"]


def test_late_instance_opens_a_new_job_version_covering_the_whole_study(ledger):
    ledger.record_instance(meta("1"), 100.0, 102.0, "t")
    [job] = ledger.lease(JobState.RECEIVING, "w", 1, 10.0, now=103.0)
    ledger.complete_study(job, 103.0, [])
    ledger.record_instance(meta("2", t=200.0), 200.0, 202.0, "t")
    jobs = ledger.jobs_for_study("1.2.3")
    assert [(j.version, j.state) for j in jobs] == [(1, JobState.COMPLETE), (2, JobState.RECEIVING)]
    [v2] = ledger.lease(JobState.RECEIVING, "w", 1, 10.0, now=203.0)
    ledger.complete_study(v2, 203.0, [])
    assert {i.sop_instance_uid for i in ledger.job_instances(v2.job_id)} == {"1", "2"}


def test_failures_back_off_then_die_and_replay(ledger):
    policy = RetryPolicy.from_config(RetryConfig(max_attempts=2, base_delay_s=5.0))
    ledger.record_instance(meta("1"), 100.0, 100.0, "t")
    [job] = ledger.lease(JobState.RECEIVING, "w", 1, 10.0, now=100.0)
    assert ledger.defer(job, 100.0, policy, "boom", unavailable=False, actor="stage:x") is JobState.RECEIVING
    assert ledger.lease(JobState.RECEIVING, "w", 1, 10.0, now=104.0) == []
    [job] = ledger.lease(JobState.RECEIVING, "w", 1, 10.0, now=105.0)
    assert ledger.defer(job, 105.0, policy, "boom", unavailable=False, actor="stage:x") is JobState.DEAD
    dead = ledger.get_job(job.job_id)
    assert dead.state is JobState.DEAD and dead.attempts == 2
    assert ledger.status(106.0)["instances"]["dead"] == 1
    assert ledger.replay(job.job_id, "user:op", 107.0) is JobState.RECEIVING
    assert ledger.get_job(job.job_id).attempts == 0
    with pytest.raises(RejectedInput, match="expected a dead job"):
        ledger.replay(job.job_id, "user:op", 108.0)


def test_unavailable_peer_does_not_spend_the_retry_budget(ledger):
    policy = RetryPolicy.from_config(RetryConfig(max_attempts=1))
    ledger.record_instance(meta("1"), 100.0, 100.0, "t")
    now = 100.0
    for _ in range(5):
        [job] = ledger.lease(JobState.RECEIVING, "w", 1, 10.0, now=now)
        ledger.defer(job, now, policy, "pacs down", unavailable=True, actor="stage:x")
        now += 1000.0
    job = ledger.get_job(job.job_id)
    assert job.state is JobState.RECEIVING and job.attempts == 0
    retries = [e for e in ledger.audit_events() if e["type"] == "job_retry"]
    assert len(retries) == 1  # one audit line per outage, not one per poll


def test_ai_switches_round_trip_and_are_audited(ledger):
    ledger.set_ai_switch("modality", "cr", False, "downtime", "user:rad", 1.0)
    ledger.set_ai_switch("study", "1.2.3", False, "patient request", "user:rad", 2.0)
    sw = ledger.ai_switches()
    assert sw.modalities == {"CR": False} and sw.studies_off == frozenset({"1.2.3"})
    ledger.set_ai_switch("study", "1.2.3", True, "", "user:rad", 3.0)
    assert ledger.ai_switches().studies_off == frozenset()
    assert sum(e["type"] == "ai_switch_changed" for e in ledger.audit_events()) == 3
    with pytest.raises(ValueError, match="scope"):
        ledger.set_ai_switch("site", "x", False, "", "u", 4.0)


def test_audit_chain_detects_tampering_in_the_file(ledger):
    ledger.record_instance(meta("1"), 100.0, 102.0, "t")
    ledger.audit([AuditEvent(AuditEventType.JOB_REPLAYED, "user:x", "1.2.3")], 101.0)
    assert ledger.verify_audit_chain() is None
    con = sqlite3.connect(ledger.path)
    con.execute("UPDATE audit SET canonical = replace(canonical, 'user:x', 'user:y') WHERE seq = 2")
    con.commit()
    broken = ledger.verify_audit_chain()
    assert broken is not None and broken.seq == 2


def test_a_second_process_connection_sees_committed_rows(ledger):
    ledger.record_instance(meta("1"), 100.0, 102.0, "t")
    other = SqliteLedger(ledger.path)
    assert other.has_instance("1")
    assert other.status(103.0)["jobs"]["receiving"] == 1
    other.close()
