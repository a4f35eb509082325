"""EHR delivery actor: a FHIR DiagnosticReport for every SR the PACS accepted (issue #6).

Two steps per round, both durable:

1. Queue: SRs delivered to the PACS and not yet queued (ledger ``outbox.ehr_queued``) become a
   transaction Bundle (``core.fhir``) in the EHR outbox; then the ledger marks them queued.
   A crash between the two queues again, which the outbox ignores (one row per SR).
2. Send: due Bundles go to the FHIR endpoint, highest priority first. An endpoint that is down
   leaves them waiting without spending the retry budget; a refusal spends it.

The patient is named by the identifier the HL7 context gives (read from the context store and
audited), else by the SR's Patient ID.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import ray

from actors.adapters.fhir_http import FhirClient
from actors.adapters.metrics import recorder
from actors.polling import Loop, SystemClock
from actors.stage import ActorShell
from core.audit import AuditEvent
from core.config import EhrConfig, RetryConfig, StorageConfig
from core.context import StudyContext
from core.errors import DependencyUnavailable, RejectedInput
from core.fhir import ResultSubject, build_result_bundle
from core.ledger import RetryPolicy
from core.ports import Clock
from core.results import OutboxEntry
from core.types import AuditEventType
from state.context_store import ContextReader, open_context
from state.ehr_outbox import EhrOutbox, EhrReport
from state.layout import VarLayout
from state.ledger import Ledger, open_database
from state.sealed_files import dcmread_plain

__all__ = ["EhrDeliveryActor", "EhrDeliveryWork"]

logger = logging.getLogger(__name__)


def _instant(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


class EhrDeliveryWork:
    """Queues and sends the FHIR reports; each call of ``run_once`` is one round."""

    def __init__(
        self,
        ledger: Ledger,
        outbox: EhrOutbox,
        context: ContextReader | None,
        client: FhirClient,
        cfg: EhrConfig,
        policy: RetryPolicy,
        manufacturer: str,
        clock: Clock | None = None,
    ) -> None:
        self._ledger, self._outbox, self._context = ledger, outbox, context
        self._client, self._cfg, self._policy = client, cfg, policy
        self._manufacturer = manufacturer
        self._clock = clock or SystemClock()
        self._actor = "stage:ehr_delivery"
        self._since = outbox.enabled_since(self._clock.now())
        self.sent = 0
        self.failures = 0
        self.last_error = ""

    def run_once(self) -> int:
        """Queue what is new, send what is due; return how much was done."""
        return self.enqueue_round() + self.send_round()

    # -------------------------------------------------------------- queue
    def enqueue_round(self) -> int:
        """Turn newly delivered SRs into queued report Bundles."""
        entries = self._ledger.outbox.for_ehr(self._since, self._cfg.batch)
        for entry in entries:
            events = self._enqueue(entry)
            self._ledger.outbox.mark_ehr_queued([entry.item_id])
            self._ledger.audit.append(events, self._clock.now())
        return len(entries)

    def _enqueue(self, entry: OutboxEntry) -> list[AuditEvent]:
        job = self._ledger.jobs.get(entry.job_id)
        inference = job.record.inference if job is not None else None
        prediction = next(
            (p for p in (inference.predictions if inference else ()) if p.family == entry.item.family), None
        )
        if job is None or prediction is None:
            logger.error("SR %s: no prediction in job %s; no EHR report", entry.item.sop_instance_uid, entry.job_id)
            return []
        context = job.record.context
        subject, reads = self._subject(entry, job.job_id, context)
        bundle = build_result_bundle(prediction, subject, self._cfg.fhir.base_url, self._manufacturer)
        new = self._outbox.enqueue(
            subject.sr_uid,
            job.job_id,
            job.study_instance_uid,
            job.priority,
            bundle,
            self._clock.now(),
        )
        detail = {
            "sr_uid": subject.sr_uid,
            "family": entry.item.family,
            "model": prediction.model_name,
            "version": prediction.model_version,
            "with_context": context is not None,
            "new": new,
        }
        queued = AuditEvent(
            AuditEventType.EHR_REPORT_QUEUED, self._actor, job.study_instance_uid, job_id=job.job_id, detail=detail
        )
        return [*reads, queued]

    def _subject(
        self, entry: OutboxEntry, job_id: int, context: StudyContext | None
    ) -> tuple[ResultSubject, list[AuditEvent]]:
        sr = dcmread_plain(entry.item.path, self._ledger.keyring, stop_before_pixels=True)
        patient_id = str(sr.get("PatientID", "") or "")
        accession = str(sr.get("AccessionNumber", "") or "")
        identifier: dict[str, Any] | None = None
        accession_system, reads = None, []
        if context is not None and self._context is not None:
            identifier, accession_system, reads = self._from_context(
                context, patient_id, str(sr.StudyInstanceUID), job_id
            )
        if identifier is None and patient_id:
            identifier = {"value": patient_id}
            if self._cfg.fhir.patient_identifier_system:
                identifier["system"] = self._cfg.fhir.patient_identifier_system
        study_date = str(sr.get("StudyDate", "") or "")
        effective = f"{study_date[:4]}-{study_date[4:6]}-{study_date[6:8]}" if len(study_date) == 8 else ""
        return ResultSubject(
            study_uid=str(sr.StudyInstanceUID),
            sr_uid=str(sr.SOPInstanceUID),
            patient=identifier,
            accession=accession,
            accession_system=accession_system,
            issued=_instant(self._clock.now()),
            effective=effective,
        ), reads

    def _from_context(
        self, context: StudyContext, patient_id: str, study_uid: str, job_id: int
    ) -> tuple[dict[str, Any] | None, str | None, list[AuditEvent]]:
        """The patient identifier and accession system from the stored resources (audited)."""
        assert self._context is not None

        def typed(ident: dict[str, Any], code: str) -> bool:
            return any(c.get("code") == code for c in ident.get("type", {}).get("coding", []))

        pid = context.patient.split("/", 1)[-1]
        patient = self._context.resource("Patient", pid) if pid else None
        request = self._context.resource("ServiceRequest", context.service_request.split("/", 1)[-1])
        ids = (patient or {}).get("identifier", [])
        mr = [i for i in ids if typed(i, "MR")]
        chosen = next((i for i in ids if i.get("value") == patient_id), None)
        chosen = chosen or (mr or ids or [None])[0]
        acsn = next((i for i in (request or {}).get("identifier", []) if typed(i, "ACSN")), {})
        event = AuditEvent(
            AuditEventType.CONTEXT_READ,
            self._actor,
            study_uid,
            job_id=job_id,
            detail={
                "purpose": "ehr report: patient identifier and order",
                "match": context.match,
                "resources": [r for r in (context.patient, context.service_request) if r],
            },
        )
        identifier = {k: v for k, v in chosen.items() if k in ("system", "value", "type")} if chosen else None
        return identifier, acsn.get("system"), [event]

    # --------------------------------------------------------------- send
    def send_round(self) -> int:
        """Send due reports; return how many were delivered or refused.

        The round stops at the first report the endpoint cannot take now: the others wait
        for the next round instead of each waiting out a timeout.
        """
        done = 0
        for row in self._outbox.due(self._clock.now(), self._cfg.batch):
            if not self._send(row):
                break
            done += 1
        return done

    def _send(self, row: EhrReport) -> bool:
        """Send one report; ``False`` when the endpoint is unavailable."""
        now = self._clock.now()
        try:
            self._client.transaction(row.bundle, row.sr_uid)
        except DependencyUnavailable as exc:
            waits = row.waits + 1
            delay = self._policy.unavailable_delay(waits)
            self._outbox.defer(row.item_id, now + delay, str(exc), spent=False)
            if waits == 1:  # one audit line per outage, not one per poll
                self._failed(row, str(exc), attempts=row.attempts, dead=False, unavailable=True)
            return False
        except RejectedInput as exc:
            attempts = row.attempts + 1
            dead = self._policy.is_exhausted(attempts)
            delay = self._policy.delay_after(attempts)
            self._outbox.defer(row.item_id, now + delay, exc.reason, spent=True, dead=dead)
            self.failures += 1
            self._failed(row, exc.reason.split(":")[0], attempts=attempts, dead=dead, unavailable=False)
            return True
        self._outbox.delivered(row.item_id, now)
        self.sent += 1
        event = AuditEvent(
            AuditEventType.EHR_REPORT_DELIVERED,
            self._actor,
            row.study_uid,
            job_id=row.job_id,
            detail={"sr_uid": row.sr_uid, "waits": row.waits},
        )
        self._ledger.audit.append([event], now)
        return True

    def _failed(self, row: EhrReport, error: str, *, attempts: int, dead: bool, unavailable: bool) -> None:
        self.last_error = error[:300]
        event = AuditEvent(
            AuditEventType.EHR_REPORT_FAILED,
            self._actor,
            row.study_uid,
            job_id=row.job_id,
            detail={
                "sr_uid": row.sr_uid,
                "error": error[:200],
                "attempts": attempts,
                "dead": dead,
                "unavailable": unavailable,
            },
        )
        self._ledger.audit.append([event], self._clock.now())


METRICS_PERIOD_S = 5.0
"""How often the EHR backlog gauge is published."""


@ray.remote
class EhrDeliveryActor(ActorShell):
    """Ray shell: runs ``EhrDeliveryWork`` rounds in its loop until stopped."""

    name = "ehr_delivery"

    def __init__(
        self,
        cfg: EhrConfig,
        storage: StorageConfig,
        retry: RetryConfig,
        manufacturer: str,
        hl7_context: bool = False,
        log_level: str = "INFO",
    ) -> None:
        """Args:
        cfg: The ``ehr`` config slice.
        storage: Where the ledger, the EHR outbox and the context store are.
        retry: Retry policy of refused reports.
        manufacturer: Our name in the reports.
        hl7_context: Name the patient as the HL7 context does (the bridge is configured).
        log_level: This process's log level.
        """
        ledger = self._open_ledger(storage, log_level)
        outbox = EhrOutbox(open_database(storage.ledger, VarLayout.at(storage.var_dir), "ehr"), storage.cell)
        self._work = EhrDeliveryWork(
            ledger,
            outbox,
            ContextReader(open_context(storage)) if hl7_context else None,
            FhirClient(cfg.fhir),
            cfg,
            RetryPolicy.from_config(retry),
            manufacturer,
            self._clock,
        )
        self._add_loop(Loop("ehr-delivery", self._work.run_once, cfg.poll_interval_s, eager=True, clock=self._clock))
        self._outbox = outbox
        self._add_loop(Loop("ehr-metrics", self._publish, METRICS_PERIOD_S, eager=True, clock=self._clock))
        self._start_heartbeat()

    def _publish(self) -> int:
        """Publish the EHR backlog (``pacsai_ehr_backlog``; the outbox is site-wide)."""
        recorder.set("pacsai_ehr_backlog", self._outbox.counts()["pending"])
        return 0

    def _counters(self) -> tuple[int, int, int, str]:
        return self._work.sent, self._work.failures, 0, self._work.last_error
