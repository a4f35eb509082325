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
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import ray
from pydicom import dcmread

from actors.adapters.context_store import ContextReader
from actors.adapters.ehr_outbox import EhrOutbox
from actors.adapters.fhir_http import FhirClient
from actors.adapters.ledger import SqliteLedger
from actors.adapters.paths import VarLayout
from actors.stage import configure_logging
from core.audit import AuditEvent
from core.config import EhrConfig, RetryConfig
from core.context import StudyContext
from core.errors import DependencyUnavailable, RejectedInput
from core.fhir import ResultSubject, build_result_bundle
from core.ledger import RetryPolicy
from core.types import AuditEventType, Prediction

__all__ = ["EhrDeliveryActor", "EhrDeliveryWork"]

logger = logging.getLogger(__name__)


def _instant(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


class EhrDeliveryWork:
    """Queues and sends the FHIR reports; each call of ``run_once`` is one round."""

    def __init__(
        self,
        ledger: SqliteLedger,
        outbox: EhrOutbox,
        context: ContextReader | None,
        client: FhirClient,
        cfg: EhrConfig,
        policy: RetryPolicy,
        manufacturer: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._ledger, self._outbox, self._context = ledger, outbox, context
        self._client, self._cfg, self._policy = client, cfg, policy
        self._manufacturer = manufacturer
        self._clock = clock
        self._actor = "stage:ehr_delivery"
        self._since = outbox.enabled_since(clock())
        self.sent = 0
        self.failures = 0
        self.last_error = ""

    def run_once(self) -> int:
        """Queue what is new, send what is due; return how much was done."""
        return self.enqueue_round() + self.send_round()

    # -------------------------------------------------------------- queue
    def enqueue_round(self) -> int:
        """Turn newly delivered SRs into queued report Bundles."""
        items = self._ledger.results_for_ehr(self._since, self._cfg.batch)
        for item in items:
            events = self._enqueue(item)
            self._ledger.mark_ehr_queued([item["item_id"]])
            self._ledger.audit(events, self._clock())
        return len(items)

    def _enqueue(self, item: dict[str, Any]) -> list[AuditEvent]:
        job = self._ledger.get_job(int(item["job_id"]))
        raw = (job.data.get("predictions", {}) if job else {}).get(item["family"])
        if job is None or raw is None:
            logger.error(
                "SR %s: no prediction in job %s; no EHR report",
                item["sop_instance_uid"], item["job_id"],
            )
            return []
        prediction = Prediction.from_json(raw)
        context = StudyContext.from_json(job.data["context"]) if job.data.get("context") else None
        subject, reads = self._subject(item, job.job_id, context)
        bundle = build_result_bundle(
            prediction, subject, self._cfg.fhir.base_url, self._manufacturer
        )
        new = self._outbox.enqueue(
            subject.sr_uid, job.job_id, job.study_instance_uid, job.priority, bundle, self._clock()
        )
        detail = {
            "sr_uid": subject.sr_uid, "family": item["family"], "model": prediction.model_name,
            "version": prediction.model_version, "with_context": context is not None, "new": new,
        }
        queued = AuditEvent(AuditEventType.EHR_REPORT_QUEUED, self._actor,
                            job.study_instance_uid, job_id=job.job_id, detail=detail)
        return [*reads, queued]

    def _subject(
        self, item: dict[str, Any], job_id: int, context: StudyContext | None
    ) -> tuple[ResultSubject, list[AuditEvent]]:
        sr = dcmread(item["path"], stop_before_pixels=True)
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
        effective = (
            f"{study_date[:4]}-{study_date[4:6]}-{study_date[6:8]}" if len(study_date) == 8 else ""
        )
        return ResultSubject(
            study_uid=str(sr.StudyInstanceUID), sr_uid=str(sr.SOPInstanceUID), patient=identifier,
            accession=accession, accession_system=accession_system,
            issued=_instant(self._clock()), effective=effective,
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
        request = self._context.resource(
            "ServiceRequest", context.service_request.split("/", 1)[-1]
        )
        ids = (patient or {}).get("identifier", [])
        mr = [i for i in ids if typed(i, "MR")]
        chosen = next((i for i in ids if i.get("value") == patient_id), None)
        chosen = chosen or (mr or ids or [None])[0]
        acsn = next((i for i in (request or {}).get("identifier", []) if typed(i, "ACSN")), {})
        event = AuditEvent(
            AuditEventType.CONTEXT_READ, self._actor, study_uid, job_id=job_id,
            detail={"purpose": "ehr report: patient identifier and order",
                    "match": context.match,
                    "resources": [r for r in (context.patient, context.service_request) if r]},
        )
        identifier = (
            {k: v for k, v in chosen.items() if k in ("system", "value", "type")}
            if chosen else None
        )
        return identifier, acsn.get("system"), [event]

    # --------------------------------------------------------------- send
    def send_round(self) -> int:
        """Send due reports; return how many were delivered or refused.

        The round stops at the first report the endpoint cannot take now: the others wait
        for the next round instead of each waiting out a timeout.
        """
        done = 0
        for row in self._outbox.due(self._clock(), self._cfg.batch):
            if not self._send(row):
                break
            done += 1
        return done

    def _send(self, row: dict[str, Any]) -> bool:
        """Send one report; ``False`` when the endpoint is unavailable."""
        now = self._clock()
        try:
            self._client.transaction(row["bundle"], row["sr_uid"])
        except DependencyUnavailable as exc:
            waits = int(row["waits"]) + 1
            delay = self._policy.unavailable_delay(waits)
            self._outbox.defer(row["item_id"], now + delay, str(exc), spent=False)
            if waits == 1:  # one audit line per outage, not one per poll
                self._failed(row, str(exc), attempts=int(row["attempts"]), dead=False,
                             unavailable=True)
            return False
        except RejectedInput as exc:
            attempts = int(row["attempts"]) + 1
            dead = self._policy.is_exhausted(attempts)
            delay = self._policy.delay_after(attempts)
            self._outbox.defer(row["item_id"], now + delay, exc.reason, spent=True, dead=dead)
            self.failures += 1
            self._failed(row, exc.reason.split(":")[0], attempts=attempts, dead=dead,
                         unavailable=False)
            return True
        self._outbox.delivered(row["item_id"], now)
        self.sent += 1
        event = AuditEvent(
            AuditEventType.EHR_REPORT_DELIVERED, self._actor, row["study_uid"],
            job_id=row["job_id"], detail={"sr_uid": row["sr_uid"], "waits": row["waits"]},
        )
        self._ledger.audit([event], now)
        return True

    def _failed(
        self, row: dict[str, Any], error: str, *, attempts: int, dead: bool, unavailable: bool
    ) -> None:
        self.last_error = error[:300]
        event = AuditEvent(
            AuditEventType.EHR_REPORT_FAILED, self._actor, row["study_uid"], job_id=row["job_id"],
            detail={"sr_uid": row["sr_uid"], "error": error[:200], "attempts": attempts,
                    "dead": dead, "unavailable": unavailable},
        )
        self._ledger.audit([event], self._clock())


@ray.remote
class EhrDeliveryActor:
    """Ray shell: runs ``EhrDeliveryWork`` rounds on a thread until stopped."""

    def __init__(
        self, cfg: EhrConfig, layout: VarLayout, retry: RetryConfig, manufacturer: str,
        context_db: Path | None = None, log_level: str = "INFO",
    ) -> None:
        configure_logging(log_level)
        self._ledger = SqliteLedger(layout.ledger)
        self._work = EhrDeliveryWork(
            self._ledger, EhrOutbox(layout.ehr_outbox),
            ContextReader(context_db) if context_db else None, FhirClient(cfg.fhir), cfg,
            RetryPolicy.from_config(retry), manufacturer,
        )
        self._poll = cfg.poll_interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="ehr-delivery", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self._work.run_once()
            except Exception as exc:  # the loop must survive a bad round (ledger busy, bad file)
                logger.exception("EHR delivery round failed")
                self._work.last_error = f"{type(exc).__name__}: {exc}"[:300]
                busy = 0
            if not busy:
                self._stop.wait(self._poll)

    def health(self) -> dict[str, Any]:
        """Return counters for the supervisor."""
        return {
            "stage": "ehr_delivery", "alive": self._thread.is_alive(),
            "processed": self._work.sent, "failures": self._work.failures, "in_flight": 0,
            "last_error": self._work.last_error,
        }

    def stop(self) -> None:
        """Stop the loop; queued reports stay in the outbox."""
        self._stop.set()
        self._thread.join(10)
