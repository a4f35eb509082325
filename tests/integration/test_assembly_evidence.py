"""The assembler's evidence on a real ledger, without Ray: the RIS order status, and one decision
for the timer and the watcher. Time comes from a ``FakeClock``.

The order status comes through ``core.ports.OrderStatusSource``; the HL7 context store will
provide it (``ContextReader.order_status``), so its fake stands in for it here.
"""

from __future__ import annotations

import pytest

from actors.assembler import Assembly, AssemblyWork, Evidence, EvidenceWatcher
from core.completeness import CompletenessPolicy
from core.config import AssemblyConfig, StorageConfig
from core.order_status import from_service_request
from core.types import InstanceMeta, JobState
from state.ledger import open_ledger
from tests.fakes import FakeClock, FakeOrders

RIS_SENDER = "CT_RIS"
STUDY = "1.2.826.0.1.3680043.10.9.1"


@pytest.fixture
def assembly(tmp_path):
    ledger = open_ledger(StorageConfig(var_dir=str(tmp_path)))
    clock, orders = FakeClock(1000.0), FakeOrders()
    cfg = AssemblyConfig(order_settle_s=2.0, sources={RIS_SENDER: {"completion": "quiet_period", "quiet_period_s": 60}})
    built = Assembly(ledger, Evidence(CompletenessPolicy(cfg), None, ledger, orders), "stage:assembler", clock)
    yield built, clock, orders
    ledger.close()


def _receive(ledger, uid: str, at: float) -> None:
    meta = InstanceMeta(uid, "1.2.840.10008.5.1.4.1.1.2", STUDY, STUDY + ".1", "CT", "1.2.840.10008.1.2.1",
                        f"/spool/{uid}.dcm", "aa", 10, at, RIS_SENDER, "HEAD", "", "k", "acc")
    ledger.intake.record(meta, at, at + 60.0, "t")


def test_the_ris_reporting_the_order_complete_completes_the_study_after_the_order_settle(assembly):
    built, clock, orders = assembly
    ledger = built.ledger
    watcher = EvidenceWatcher(built, "w", 30.0, clock)
    _receive(ledger, "1", clock.now())
    clock.advance(1.0)
    assert watcher.run_once() == 0  # nothing says complete; the sender's quiet period is 60 s
    orders.status = from_service_request(STUDY, "acc", "completed", clock.now())
    clock.advance(1.0)
    assert watcher.run_once() == 0  # reported complete, but the order settle (2 s) is not over
    clock.advance(1.5)
    assert watcher.run_once() == 1
    [job] = ledger.jobs.for_study(STUDY)
    assert job.state is JobState.COMPLETE and job.record.completion.rule == "order_status"
    [event] = [e.detail for e in ledger.audit.events(STUDY) if e.type == "study_complete"]
    assert event["rule"] == "order_status" and "ServiceRequest.status=completed" in event["reason"]


def test_a_due_job_that_cannot_complete_is_postponed_to_when_the_decision_can_change(assembly):
    built, clock, orders = assembly
    ledger = built.ledger
    _receive(ledger, "1", clock.now())
    orders.status = from_service_request(STUDY, "acc", "completed", clock.now())
    [job] = ledger.jobs.lease(JobState.RECEIVING, "w", 1, 30.0, clock.now() + 60.0)
    AssemblyWork(built, clock)(job)
    [waiting] = ledger.jobs.for_study(STUDY)
    assert waiting.state is JobState.RECEIVING and waiting.not_before == pytest.approx(clock.now() + 2.0)
    clock.advance(2.0)
    [job] = ledger.jobs.lease(JobState.RECEIVING, "w", 1, 30.0, clock.now())
    AssemblyWork(built, clock)(job)
    assert ledger.jobs.for_study(STUDY)[0].state is JobState.COMPLETE
