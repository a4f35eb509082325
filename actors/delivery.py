"""Delivery actor: stores outbox objects to the PACS; ``delivered`` only after PACS success."""

from __future__ import annotations

import time

import ray
from pydicom import dcmread

from actors.adapters.dimse import DimsePacsClient
from actors.adapters.ledger import SqliteLedger
from actors.stage import StageRuntime, StageShell
from core.audit import AuditEvent
from core.config import PacsConfig
from core.errors import DependencyUnavailable, TransientIOError
from core.types import AuditEventType, Job, JobState

__all__ = ["DeliveryActor", "DeliveryWork"]


class DeliveryWork:
    """Delivers the pending outbox items of one written job."""

    def __init__(self, ledger: SqliteLedger, pacs: DimsePacsClient | None, actor: str) -> None:
        self._ledger = ledger
        self._pacs = pacs
        self._actor = actor

    def __call__(self, job: Job) -> None:
        """Send what is pending; move the job to ``delivered`` once everything is.

        Raises:
            DependencyUnavailable: No PACS is configured or it cannot be reached (job waits).
            TransientIOError: The PACS refused an object (spends the retry budget).
        """
        pending = self._ledger.outbox_items(job.job_id, "pending")
        if pending:
            if self._pacs is None:
                raise DependencyUnavailable("pacs", "no PACS is configured (config key 'pacs')")
            datasets = [dcmread(item["path"]) for item in pending]
            outcomes = self._pacs.store(datasets)
            refused = []
            for item, outcome in zip(pending, outcomes, strict=True):
                if outcome.ok:
                    event = AuditEvent(
                        AuditEventType.SR_DELIVERED, self._actor, job.study_instance_uid,
                        item["sop_instance_uid"], job.job_id,
                        {"status": f"0x{outcome.status:04X}", "kind": item["kind"], "family": item["family"]},
                    )
                    self._ledger.mark_delivered(item["item_id"], time.time(), event)
                else:
                    error = f"PACS answered 0x{outcome.status:04X} for {item['sop_instance_uid']}"
                    self._ledger.note_delivery_failure(item["item_id"], error)
                    refused.append(error)
            if refused:
                raise TransientIOError("; ".join(refused))
        self._ledger.transition(job, JobState.DELIVERED, time.time(), reason="")


@ray.remote
class DeliveryActor(StageShell):
    """Ray shell around ``DeliveryWork``."""

    name = "delivery"
    state = JobState.WRITTEN

    def __init__(self, runtime: StageRuntime, pacs: PacsConfig | None) -> None:
        ledger = self._open_ledger(runtime)
        client = DimsePacsClient(pacs) if pacs is not None else None
        self._start(runtime, DeliveryWork(ledger, client, "stage:delivery"))
