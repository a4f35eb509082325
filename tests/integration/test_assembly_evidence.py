"""The assembler's evidence on a real ledger, without Ray: the RIS order status, and one decision
for the timer and the watcher. Time comes from a ``FakeClock``.

The order status comes from a real HL7 context store (``actors.assembler.order_source``, which
reads ``ContextReader.order_status``), written as the MLLP listener writes it: the RIS's ORM
is parsed, mapped and stored.
"""

from __future__ import annotations

import pytest

from actors.assembler import Assembly, AssemblyWork, Evidence, EvidenceWatcher, order_source
from core.completeness import CompletenessPolicy
from core.config import AssemblyConfig, StorageConfig
from core.hl7 import parse_message
from core.identifiers import hash_identifier
from core.types import InstanceMeta, JobState
from core.v2fhir import V2FhirMapper
from state.context_store import ContextWriter, InboxEntry, open_context
from state.ledger import open_ledger
from tests.fakes import FakeClock
from tests.hl7_messages import orm

RIS_SENDER = "CT_RIS"
STUDY = "1.2.826.0.1.3680043.10.9.1"
KEY = b"evidence-key"
ACCESSION = "ACC-EV1"


class Ris:
    """The RIS sending order updates over the HL7 bridge into the context store."""

    def __init__(self, storage: StorageConfig) -> None:
        self._db = open_context(storage, writer=True)
        self._mapper = V2FhirMapper(KEY, {"HOSP": "http://hosp.example/mrn"}, validate_resources=False)
        self._sent = 0

    def reports(self, status: str, at: float) -> None:
        """One ORM^O01 with ORC-5 ``status`` for the study's accession, received at ``at``."""
        self._sent += 1
        raw = orm(
            f"EV{self._sent}", accession=ACCESSION, control_code="XO" if self._sent > 1 else "NW", status=status
        ).encode()
        message = parse_message(raw)
        entry = InboxEntry(message.header, raw, "127.0.0.1:5000", at, self._mapper.map(message), None, message.digest)
        ContextWriter(self._db).receive(entry).result()

    def close(self) -> None:
        self._db.close()


@pytest.fixture
def assembly(tmp_path):
    storage = StorageConfig(var_dir=str(tmp_path))
    ledger = open_ledger(storage)
    clock, ris = FakeClock(1000.0), Ris(storage)
    orders = order_source(storage)
    assert orders is not None
    cfg = AssemblyConfig(order_settle_s=2.0, sources={RIS_SENDER: {"completion": "quiet_period", "quiet_period_s": 60}})
    built = Assembly(ledger, Evidence(CompletenessPolicy(cfg), None, ledger, orders), "stage:assembler", clock)
    ris.reports("SC", clock.now())
    yield built, clock, ris
    orders.close()
    ris.close()
    ledger.close()


def _receive(ledger, uid: str, at: float) -> None:
    meta = InstanceMeta(
        uid,
        "1.2.840.10008.5.1.4.1.1.2",
        STUDY,
        STUDY + ".1",
        "CT",
        "1.2.840.10008.1.2.1",
        f"/spool/{uid}.dcm",
        "aa",
        10,
        at,
        RIS_SENDER,
        "HEAD",
        "",
        "k",
        hash_identifier(ACCESSION, KEY),
    )
    ledger.intake.record(meta, at, at + 60.0, "t")


def test_the_ris_reporting_the_order_complete_completes_the_study_after_the_order_settle(assembly):
    built, clock, ris = assembly
    ledger = built.ledger
    watcher = EvidenceWatcher(built, "w", 30.0, clock)
    _receive(ledger, "1", clock.now())
    clock.advance(1.0)
    assert watcher.run_once() == 0  # nothing says complete; the sender's quiet period is 60 s
    ris.reports("CM", clock.now())
    clock.advance(1.0)
    assert watcher.run_once() == 0  # reported complete, but the order settle (2 s) is not over
    clock.advance(1.5)
    assert watcher.run_once() == 1
    [job] = ledger.jobs.for_study(STUDY)
    assert job.state is JobState.COMPLETE and job.record.completion.rule == "order_status"
    [event] = [e.detail for e in ledger.audit.events(STUDY) if e.type == "study_complete"]
    assert event["rule"] == "order_status" and "ServiceRequest.status=completed" in event["reason"]


def test_a_due_job_that_cannot_complete_is_postponed_to_when_the_decision_can_change(assembly):
    built, clock, ris = assembly
    ledger = built.ledger
    _receive(ledger, "1", clock.now())
    ris.reports("CM", clock.now())
    [job] = ledger.jobs.lease(JobState.RECEIVING, "w", 1, 30.0, clock.now() + 60.0)
    AssemblyWork(built, clock)(job)
    [waiting] = ledger.jobs.for_study(STUDY)
    assert waiting.state is JobState.RECEIVING and waiting.not_before == pytest.approx(clock.now() + 2.0)
    clock.advance(2.0)
    [job] = ledger.jobs.lease(JobState.RECEIVING, "w", 1, 30.0, clock.now())
    AssemblyWork(built, clock)(job)
    assert ledger.jobs.for_study(STUDY)[0].state is JobState.COMPLETE
