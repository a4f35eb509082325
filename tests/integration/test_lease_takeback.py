"""Leases of dead holders are taken back at start, not after they expire (issue 14), on both
ledger backends: a new run takes back another run's leases, a stage actor restarted by Ray
takes back its earlier process's, and the jobs that wait out a model outage are made due when
the models come up. No Ray: stage runners in this process stand for the actors."""

from __future__ import annotations

import threading
import time

import pytest

from actors.pipeline import wait_until
from actors.stage import StageRunner, StageRuntime
from core.config import RetryConfig, StageConfig
from core.job import Job
from core.leases import LeaseOwner, stale_owners
from core.ledger import RetryPolicy
from core.types import InstanceMeta, JobState
from state.ledger import open_ledger

LEASE_S = 600.0
"""Far longer than any wait below: a job that moves on was taken back, not expired."""


def meta(uid: str, study: str) -> InstanceMeta:
    return InstanceMeta(
        uid,
        "1.2.840.10008.5.1.4.1.1.2",
        study,
        study + ".1",
        "CT",
        "1.2.840.10008.1.2.1",
        f"/s/{uid}.dcm",
        "aa",
        1,
        1.0,
    )


@pytest.fixture
def storage(backend, storage_for):
    return storage_for(backend)


@pytest.fixture
def ledger(storage):
    led = open_ledger(storage)
    yield led
    led.close()


def receive(ledger, *studies: str, now: float = 100.0) -> None:
    for i, study in enumerate(studies):
        ledger.intake.record(meta(f"{study}.1.{i}", study), now, now, "test")


def test_a_new_run_takes_back_a_dead_runs_leases_at_once_and_audits_each(ledger):
    receive(ledger, "1.1", "1.2", "1.3")
    dead, live = LeaseOwner("old", "assembler", "7.a"), LeaseOwner("new", "assembler", "8.b")
    [a] = ledger.jobs.lease(JobState.RECEIVING, str(dead), 1, LEASE_S, now=101.0)
    [b] = ledger.jobs.lease(JobState.RECEIVING, "assembler-evidence:7f", 1, LEASE_S, now=101.0)  # no run: foreign
    [c] = ledger.jobs.lease(JobState.RECEIVING, str(live), 1, LEASE_S, now=101.0)
    owners = ledger.jobs.lease_owners(102.0)
    assert owners == {str(dead): 1, "assembler-evidence:7f": 1, str(live): 1}
    stale = stale_owners(owners, "new")
    assert ledger.jobs.take_back(stale, "run:new", 102.0) == 2
    assert ledger.jobs.take_back(stale, "run:new", 102.5) == 0  # nothing left to take
    retaken = ledger.jobs.lease(JobState.RECEIVING, "new|assembler|9.c", 5, LEASE_S, now=103.0)
    assert sorted(j.job_id for j in retaken) == sorted([a.job_id, b.job_id])  # not the live run's job
    assert ledger.jobs.get(c.job_id).lease_owner == str(live)
    [event] = [e for e in ledger.audit.events("1.1") if e.type == "lease_taken_back"]
    assert event.actor == "run:new" and event.job_id == a.job_id
    assert event.detail == {"owner": str(dead), "state": "receiving", "expires_in_s": pytest.approx(LEASE_S - 1.0)}
    assert ledger.jobs.lease_owners(103.0 + LEASE_S + 1) == {}  # expired leases are nobody's


def test_a_restarted_stage_actor_takes_back_its_earlier_process_leases_before_leasing(ledger, storage):
    receive(ledger, "2.1", "2.2")
    runtime = StageRuntime(storage, StageConfig(concurrency=1), LEASE_S, 0.05, RetryConfig(), run_id="run1")
    release = threading.Event()
    first = StageRunner("validator", JobState.RECEIVING, runtime, ledger, lambda job: release.wait(30))
    other = LeaseOwner("run1", "router", "5.x")  # another actor of this run: none of the restart's business
    again: StageRunner | None = None
    try:
        assert first.run_once() >= 1  # leases both (running one, backlog one); the process then dies
        [held] = [j for j in ledger.jobs.for_study("2.1") if j.lease_owner]
        assert held.lease_owner == str(first.owner)

        def done(job: Job) -> None:
            ledger.jobs.transition(job, JobState.COMPLETE, time.time())

        again = StageRunner("validator", JobState.RECEIVING, runtime, ledger, done)  # Ray's restart
        assert again.owner.incarnation != first.owner.incarnation
        again.start()  # its lease loop: the first round takes back, then leases
        assert wait_until(
            lambda: all(ledger.jobs.for_study(s)[0].state is JobState.COMPLETE for s in ("2.1", "2.2")), 20
        )
        taken = [e for s in ("2.1", "2.2") for e in ledger.audit.events(s) if e.type == "lease_taken_back"]
        assert {e.detail["owner"] for e in taken} == {str(first.owner)} and len(taken) == 2
        assert {e.actor for e in taken} == {"stage:validator"}
        again.stop()
        now = time.time()
        receive(ledger, "2.3", now=now)
        [job] = ledger.jobs.lease(JobState.RECEIVING, str(other), 1, LEASE_S, now=now)
        StageRunner("validator", JobState.RECEIVING, runtime, ledger, done).run_once()  # restarted once more
        assert ledger.jobs.get(job.job_id).lease_owner == str(other)
    finally:
        release.set()
        first.stop()
        if again is not None:
            again.stop()  # a second stop is harmless


def test_jobs_waiting_out_an_outage_are_made_due_when_the_peer_is_back(ledger):
    receive(ledger, "3.1", "3.2")
    policy = RetryPolicy.from_config(RetryConfig(unavailable_delay_s=300.0, base_delay_s=300.0))
    waiting, failed = ledger.jobs.lease(JobState.RECEIVING, "w", 2, LEASE_S, now=101.0)
    ledger.jobs.defer(waiting, 101.0, policy, "model:x unavailable", unavailable=True, actor="stage:t")
    ledger.jobs.defer(failed, 101.0, policy, "ModelError: bad input", unavailable=False, actor="stage:t")
    assert ledger.jobs.lease(JobState.RECEIVING, "w", 2, LEASE_S, now=102.0) == []
    assert ledger.jobs.wake_waiting(JobState.RECEIVING, 102.0) == 1
    [due] = ledger.jobs.lease(JobState.RECEIVING, "w", 2, LEASE_S, now=102.0)
    assert due.job_id == waiting.job_id and due.attempts == 0  # the outage spent no retry


def test_the_audit_chain_is_verified_a_page_at_a_time_across_pages(ledger, monkeypatch):
    """The auditor verifies every 30 s; reading the whole trail at once held memory at its size
    (bench_soak). A break in a later page is still found, and a gap between pages too."""
    from core.audit import AuditEvent
    from core.types import AuditEventType
    from state.ledger import audit
    from tests.integration.test_ledger_contract import drop_audit_guards, raw_execute

    monkeypatch.setattr(audit, "_VERIFY_PAGE", 10)
    ledger.audit.append([AuditEvent(AuditEventType.JOB_RETRY, "w", f"1.{i}") for i in range(35)], 100.0)
    assert ledger.audit.verify() is None
    drop_audit_guards(ledger)  # the trail is append-only: an attacker who owns the database first
    raw_execute(ledger, "UPDATE audit SET canonical = replace(canonical, '1.27', '1.72') WHERE seq = 28")
    assert ledger.audit.verify().seq == 28
    raw_execute(ledger, "DELETE FROM audit WHERE seq = 21")  # the first row of the third page
    broken = ledger.audit.verify()
    assert broken.seq == 22 and "jumps from 20 to 22" in broken.reason
