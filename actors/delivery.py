"""Delivery actor: stores outbox objects to the PACS; ``delivered`` only after PACS success."""

from __future__ import annotations

import ray
from pydicom import dcmread

from actors.adapters.dimse import DimsePacsClient
from actors.polling import SystemClock
from actors.stage import StageRuntime, StageShell
from core.audit import AuditEvent
from core.config import PacsConfig
from core.errors import DependencyUnavailable, TransientIOError
from core.job import Job
from core.ports import Clock
from core.results import DeliveryState
from core.types import AuditEventType, JobState
from state.ledger import Ledger

__all__ = ["DeliveryActor", "DeliveryWork"]


class DeliveryWork:
    """Delivers the pending outbox items of one written job."""

    def __init__(self, ledger: Ledger, pacs: DimsePacsClient | None, actor: str,
                 clock: Clock | None = None) -> None:
        self._ledger = ledger
        self._pacs = pacs
        self._actor = actor
        self._clock = clock or SystemClock()

    def __call__(self, job: Job) -> None:
        """Send what is pending; move the job to ``delivered`` once everything is.

        Raises:
            DependencyUnavailable: No PACS is configured or it cannot be reached (job waits).
            TransientIOError: The PACS refused an object (spends the retry budget).
        """
        outbox = self._ledger.outbox
        pending = outbox.items(job.job_id, DeliveryState.PENDING)
        if pending:
            if self._pacs is None:
                raise DependencyUnavailable("pacs", "no PACS is configured (config key 'pacs')")
            outcomes = self._pacs.store([dcmread(entry.item.path) for entry in pending])
            refused = []
            for entry, outcome in zip(pending, outcomes, strict=True):
                item = entry.item
                if outcome.ok:
                    event = AuditEvent(
                        AuditEventType.SR_DELIVERED, self._actor, job.study_instance_uid,
                        item.sop_instance_uid, job.job_id,
                        {"status": f"0x{outcome.status:04X}", "kind": item.kind.value,
                         "family": item.family},
                    )
                    outbox.mark_delivered(entry.item_id, self._clock.now(), event)
                else:
                    error = f"PACS answered 0x{outcome.status:04X} for {item.sop_instance_uid}"
                    outbox.note_failure(entry.item_id, error)
                    refused.append(error)
            if refused:
                raise TransientIOError("; ".join(refused))
        self._ledger.jobs.transition(job, JobState.DELIVERED, self._clock.now(), reason="")


@ray.remote
class DeliveryActor(StageShell):
    """Ray shell around ``DeliveryWork``."""

    name = "delivery"
    state = JobState.WRITTEN

    def __init__(self, runtime: StageRuntime, pacs: PacsConfig | None) -> None:
        ledger = self._open_ledger(runtime.storage, runtime.log_level)
        client = DimsePacsClient(pacs) if pacs is not None else None
        self._start(runtime, DeliveryWork(ledger, client, "stage:delivery", self._clock))
