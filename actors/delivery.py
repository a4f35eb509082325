"""Delivery actor: stores outbox objects to the PACS; ``delivered`` only after PACS success.

By C-STORE (``pacs.deliver_by: dimse``, the default) or by STOW-RS to the PACS's DICOMweb
service (``dicomweb``, ``actors.adapters.dicomweb``); both clients answer one outcome per object.

SR versions (issue 18, ``core.versions.plan_delivery``), per study and model family: at most
one version is in flight; a newer version supersedes one not yet sent (it is withdrawn, never
sent) and an older one waits while a newer job version of the study is on its way; versions
reach the PACS in order, each naming the previous *delivered* one, chosen now (the SR is
rebuilt when it was built naming another, or must be marked partial); beyond
``sr.max_versions`` a version is held with a review flag and an audit event until an operator
releases it (``pacsai review resolve ID --resolution released``). The plan is made and applied
under a lock in the ledger (``results.claim_delivery``).

Key images and their KOS (issue 12, ``clinical.key_images``) are outbox items of the SR's
family: they go out with its version and are withdrawn with it. The actor also hosts the
verified-SR loop (``actors.verified_delivery``): readers' reviews back to the PACS, and the
paging webhooks' loop (``actors.alert_pusher``): critical findings to the roles' webhooks.
"""

from __future__ import annotations

import enum

import ray

from actors.adapters.dicomweb import DicomwebPacsClient
from actors.adapters.dimse import DimsePacsClient
from actors.adapters.metrics import recorder
from actors.alert_pusher import alert_pusher_loop
from actors.polling import SystemClock
from actors.sr_writer import SRWriteWork
from actors.stage import StageRuntime, StageShell
from actors.verified_delivery import verified_sr_loop
from core.audit import AuditEvent
from core.config import ClinicalConfig, PacsConfig, PriorsConfig, SRConfig
from core.errors import DependencyUnavailable, TransientIOError
from core.job import Job
from core.ledger import RaiseReviewFlag, WithdrawOutbox
from core.parametric_maps import ParametricMapBuilder
from core.ports import Clock
from core.results import DeliveryClaim, DeliveryState, OutboxEntry, OutputKind
from core.review import FlagKind, released_versions
from core.sr import SRBuilder, SRIdentity
from core.types import AuditEventType, JobState
from core.versions import DeliveryPlan, VersionState, plan_delivery
from state.layout import VarLayout
from state.ledger import Ledger
from state.sealed_files import dcmread_plain

__all__ = ["DeliveryActor", "DeliveryWork", "FamilyOutcome", "pacs_client"]


def pacs_client(cfg: PacsConfig | None) -> DimsePacsClient | DicomwebPacsClient | None:
    """The client ``pacs.deliver_by`` names (``None``: no PACS configured).

    Raises:
        ConfigError: The DICOMweb bearer token's environment variable is not set.
    """
    if cfg is None:
        return None
    if cfg.deliver_by == "dicomweb" and cfg.dicomweb is not None:
        return DicomwebPacsClient(cfg.dicomweb)
    return DimsePacsClient(cfg)


class FamilyOutcome(enum.StrEnum):
    """What happened to a job's result objects of one model family this round."""

    SENT = "sent"
    """The PACS accepted them."""
    WAITING = "waiting"
    """Another version is in flight, or a newer one is on its way: look again soon."""
    HELD = "held"
    """The version cap is reached: held until an operator releases it."""
    SUPERSEDED = "superseded"
    """A newer version replaced this one: withdrawn, never sent."""


class DeliveryWork:
    """Delivers the pending outbox items of one written job, one model family at a time."""

    def __init__(
        self,
        ledger: Ledger,
        pacs: DimsePacsClient | DicomwebPacsClient | None,
        actor: str,
        clock: Clock | None = None,
        writer: SRWriteWork | None = None,
        max_versions: int = 5,
        wait_s: float = 0.5,
        hold_s: float = 3600.0,
    ) -> None:
        """Args:
        ledger: This process's ledger.
        pacs: C-STORE SCU or STOW-RS client (``None``: no PACS configured; jobs wait).
        actor: Audit name.
        clock: Wall clock.
        writer: Rebuilds an SR version that must name another predecessor or be marked partial.
        max_versions: ``sr.max_versions``.
        wait_s: How soon a waiting version looks again.
        hold_s: How soon a held version looks again (a release makes it due at once).
        """
        self._ledger = ledger
        self._pacs = pacs
        self._actor = actor
        self._clock = clock or SystemClock()
        self._writer = writer
        self._max_versions = max_versions
        self._wait_s = wait_s
        self._hold_s = hold_s

    def __call__(self, job: Job) -> None:
        """Send what may be sent now; finish the job once nothing of it waits.

        Raises:
            DependencyUnavailable: No PACS is configured or it cannot be reached (job waits).
            TransientIOError: The PACS refused an object (spends the retry budget).
        """
        families: dict[str, list[OutboxEntry]] = {}
        for entry in self._ledger.outbox.items(job.job_id, DeliveryState.PENDING):
            families.setdefault(entry.item.family, []).append(entry)
        outcomes = {family: self._family(job, family, entries) for family, entries in sorted(families.items())}
        now = self._clock.now()
        waiting = FamilyOutcome.WAITING in outcomes.values()
        if waiting or FamilyOutcome.HELD in outcomes.values():
            self._ledger.jobs.postpone(job, now + (self._wait_s if waiting else self._hold_s))
            return
        withdrawn = [WithdrawOutbox(f) for f, o in outcomes.items() if o is FamilyOutcome.SUPERSEDED]
        if withdrawn and not self._ledger.outbox.items(job.job_id, DeliveryState.DELIVERED):
            self._ledger.jobs.transition(
                job,
                JobState.SKIPPED,
                now,
                effects=withdrawn,
                reason="superseded: a newer version of the study replaced its SRs",
            )
            return
        self._ledger.jobs.transition(job, JobState.DELIVERED, now, reason="", effects=withdrawn)

    def _family(self, job: Job, family: str, entries: list[OutboxEntry]) -> FamilyOutcome:
        """Plan, then send, hold, wait or withdraw one family's objects."""
        if not any(e.item.kind is OutputKind.SR for e in entries):
            self._send(job, entries)  # maps whose SR went out already
            return FamilyOutcome.SENT
        claim = self._claim(job, family)
        if claim.own is VersionState.SUPERSEDED:
            return FamilyOutcome.SUPERSEDED
        if claim.own is VersionState.HELD:
            self._hold(job, family, claim.plan)
            return FamilyOutcome.HELD
        if claim.own is not VersionState.SENDING:
            return FamilyOutcome.WAITING
        sr = next(e for e in entries if e.item.kind is OutputKind.SR)
        try:
            if claim.plan.rebuild:
                self._rebuild(job, family, sr, claim.plan)
            self._send(job, entries)
        except BaseException:
            self._ledger.results.release_send(sr.item.sop_instance_uid, self._clock.now())
            raise
        return FamilyOutcome.SENT

    def _claim(self, job: Job, family: str) -> DeliveryClaim:
        study = job.study_instance_uid
        released = released_versions(self._ledger.reviews.flags(None, study, FlagKind.SR_VERSION_CAP), study, family)
        return self._ledger.results.claim_delivery(
            job,
            family,
            lambda versions: plan_delivery(study, family, versions, self._max_versions, released),
            self._actor,
            self._clock.now(),
        )

    def _rebuild(self, job: Job, family: str, sr: OutboxEntry, plan: DeliveryPlan) -> None:
        """Rebuild the SR naming the last delivered version (and marked partial if it must be)."""
        inference = job.record.inference
        prediction = next((p for p in inference.predictions if p.family == family), None) if inference else None
        if self._writer is None or prediction is None:
            raise TransientIOError(f"job {job.job_id}: the {family} SR must be rebuilt, but cannot be")
        self._writer.write_one(job, prediction, plan.predecessor_uid, plan.incomplete)
        partial = plan.incomplete is not None or bool(job.record.completion and job.record.completion.partial)
        self._ledger.results.rebuilt(sr.item.sop_instance_uid, plan.predecessor_uid, partial, self._clock.now())

    def _hold(self, job: Job, family: str, plan: DeliveryPlan) -> None:
        """Warn the operator once per held version: a review flag and an audit event."""
        cap = plan.cap
        subject = f"{family}:{job.version}"
        study = job.study_instance_uid
        if cap is None or any(
            f.subject == subject for f in self._ledger.reviews.flags(None, study, FlagKind.SR_VERSION_CAP)
        ):
            return
        event = AuditEvent(
            AuditEventType.SR_VERSION_CAP_REACHED, self._actor, study, job_id=job.job_id, detail=cap.audit_detail()
        )
        self._ledger.reviews.raise_flag(
            job.job_id,
            RaiseReviewFlag(FlagKind.SR_VERSION_CAP, study, "", cap.audit_detail(), subject),
            event,
            self._clock.now(),
        )

    def _send(self, job: Job, entries: list[OutboxEntry]) -> None:
        """Store the objects (one association, or one STOW-RS request); record each success with its event.

        Raises:
            DependencyUnavailable: No PACS, or it cannot be reached.
            TransientIOError: The PACS refused an object.
        """
        if self._pacs is None:
            raise DependencyUnavailable("pacs", "no PACS is configured (config key 'pacs')")
        outbox = self._ledger.outbox
        outcomes = self._pacs.store([dcmread_plain(entry.item.path, self._ledger.keyring) for entry in entries])
        refused = []
        for entry, outcome in zip(entries, outcomes, strict=True):
            item = entry.item
            if outcome.ok:
                event = AuditEvent(
                    AuditEventType.SR_DELIVERED,
                    self._actor,
                    job.study_instance_uid,
                    item.sop_instance_uid,
                    job.job_id,
                    {
                        "status": f"0x{outcome.status:04X}",
                        "kind": item.kind.value,
                        "family": item.family,
                        "version": job.version,
                    },
                )
                now = self._clock.now()
                outbox.mark_delivered(entry.item_id, now, event)
                if item.kind is OutputKind.SR:
                    recorder.observe(
                        "pacsai_archive_to_sr_seconds",
                        max(0.0, now - job.last_instance_at),
                        family=item.family,
                        priority=str(job.priority),
                    )
            else:
                error = f"PACS answered 0x{outcome.status:04X} for {item.sop_instance_uid}"
                outbox.note_failure(entry.item_id, error)
                refused.append(error)
        if refused:
            raise TransientIOError("; ".join(refused))


@ray.remote
class DeliveryActor(StageShell):
    """Ray shell around ``DeliveryWork`` (with an SR writer for rebuilds)."""

    name = "delivery"
    state = JobState.WRITTEN

    def __init__(
        self,
        runtime: StageRuntime,
        pacs: PacsConfig | None,
        layout: VarLayout | None = None,
        sr: SRConfig | None = None,
        priors: PriorsConfig | None = None,
        clinical: ClinicalConfig | None = None,
        families: dict[str, list[str]] | None = None,
    ) -> None:
        ledger = self._open_ledger(runtime.storage, runtime.log_level)
        if clinical is not None:  # critical findings paged to the roles' webhooks (issue 12)
            pusher = alert_pusher_loop(ledger, clinical, self._clock, self.name, families)
            if pusher is not None:
                self._add_loop(pusher)
        client = pacs_client(pacs)
        sr = sr or SRConfig()
        writer = None
        if layout is not None:
            identity = SRIdentity(sr.manufacturer, sr.series_number, sr.institution_name, sr.group_source_images_max)
            writer = SRWriteWork(
                ledger,
                layout.outbox,
                SRBuilder(identity),
                "stage:delivery",
                priors,
                ParametricMapBuilder(identity),
                self._clock,
            )
        work = DeliveryWork(
            ledger,
            client,
            "stage:delivery",
            self._clock,
            writer,
            sr.max_versions,
            wait_s=max(runtime.poll_interval_s, 0.2),
        )
        self._start(runtime, work)
        if layout is not None:  # readers' reviews back to the PACS as verified SRs (issue 12)
            organization = sr.institution_name or "Unknown institution"
            self._add_loop(
                verified_sr_loop(
                    ledger, client, layout.outbox, organization, runtime.retry.max_attempts, self._clock, self.name
                )
            )
