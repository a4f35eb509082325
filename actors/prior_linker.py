"""Prior linker actor: finds the patient's prior study at the PACS, retrieves it where a model
family compares images, and finds the prior AI result to compare with (``core.priors``).

For each routed job:

1. C-FIND (STUDY level) for the patient's studies truly earlier than the current one (the
   look-back runs from its Study Date; same day: by Study Time). A study with the same Patient
   ID but another name or birth date, another issuer, or an identity that cannot be checked
   (an unidentified emergency registration) is not linked: a review flag and an audit event
   of its kind record it. A pair a reviewer confirmed (``pacsai review resolve``) is linked.
2. For the chosen prior, the earlier AI result per model family: our SR in the ledger first,
   else our SR series at the PACS (SERIES level, Modality SR, our series description),
   retrieved and read.
3. Families in ``priors.compare_images``: the prior series is retrieved (C-MOVE to our listener
   or C-GET) unless we hold it; its headers are checked against the patient again; the
   inference stage then runs the model on it too.
4. The job moves to ``linked`` with its record's ``priors`` (a ``PriorLink``) describing what
   was found, or why not.

The PACS being unreachable is waited out for ``priors.unavailable_wait_s`` per outage (jobs wait
without spending retries); after that jobs go on without priors and their SR says so.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import replace
from datetime import date
from typing import Any

import ray
from pydicom.dataset import Dataset

from actors.adapters.dimse import Listener
from actors.adapters.query_retrieve import DimseQueryRetrieve
from actors.polling import SystemClock
from actors.stage import StageRuntime, StageShell
from core.audit import AuditEvent
from core.config import ListenerConfig, ModelEntry, PacsConfig, PriorsConfig
from core.errors import DependencyUnavailable
from core.interval import PriorResult
from core.job import Job, PriorLink, RetrievedSeries
from core.ledger import RaiseReviewFlag
from core.ports import Clock
from core.priors import (
    Conflict,
    CurrentStudy,
    InstanceRef,
    PacsOutage,
    PatientIdentity,
    PriorFinder,
    PriorSearch,
    PriorStatus,
    RefusalKind,
    SeriesRecord,
)
from core.review import FlagKind, confirmed_priors
from core.sr import describes_our_sr
from core.types import AuditEventType, InstanceMeta, JobState
from state.layout import VarLayout
from state.ledger import Ledger
from state.sealed_files import dcmread_plain

__all__ = ["PriorLinkWork", "PriorLinkerActor"]

logger = logging.getLogger(__name__)

_REFUSAL_EVENTS = {
    RefusalKind.IDENTITY_CONFLICT: AuditEventType.PRIOR_IDENTITY_CONFLICT,
    RefusalKind.ISSUER_MISMATCH: AuditEventType.PRIOR_ISSUER_MISMATCH,
    RefusalKind.UNVERIFIED: AuditEventType.PRIOR_UNVERIFIED,
}
"""The audit event of each kind of refused prior (each also raises a review flag)."""


class PriorLinkWork:
    """Links the priors of one routed job."""

    def __init__(
        self,
        ledger: Ledger,
        actor: str,
        cfg: PriorsConfig | None = None,
        pacs: DimseQueryRetrieve | None = None,
        models: dict[str, ModelEntry] | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._ledger = ledger
        self._actor = actor
        self._cfg = cfg or PriorsConfig()
        self._pacs = pacs
        self._models = models or {}
        self._clock = clock or SystemClock()
        self._finder = PriorFinder(self._cfg, pacs) if pacs is not None else None
        self._outage = PacsOutage(self._cfg.unavailable_wait_s)
        self._outage_lock = threading.Lock()

    def __call__(self, job: Job) -> None:
        """Look up, retrieve and describe priors; move the job to ``linked``.

        Raises:
            DependencyUnavailable: The PACS is unreachable and the outage is still waited out.
        """
        if self._finder is None or not self._cfg.enabled:
            why = "priors.enabled is false" if not self._cfg.enabled else "no PACS is configured (config key 'pacs')"
            self._link(job, PriorLink(PriorStatus.DISABLED, why), [], [])
            return
        current, patient_key = self._current(job)
        now = self._clock.now()
        flags = self._ledger.reviews.flags(None, job.study_instance_uid, FlagKind.PRIOR_UNVERIFIED)
        try:
            search = self._finder.search(
                current, date.fromtimestamp(now), confirmed_priors(flags, job.study_instance_uid)
            )
        except DependencyUnavailable as exc:
            with self._outage_lock:
                if self._outage.keep_waiting(now):
                    raise
            link = PriorLink(PriorStatus.UNAVAILABLE, str(exc))
            self._link(job, link, [self._query_event(job, current, patient_key, None, str(exc))], [])
            return
        with self._outage_lock:
            self._outage.succeeded()
        self._linked(job, current, patient_key, search)

    def _linked(self, job: Job, current: CurrentStudy, patient_key: str, search: PriorSearch) -> None:
        events = [self._query_event(job, current, patient_key, search, "")]
        link = PriorLink.from_search(search)
        if search.status is PriorStatus.FOUND and search.study is not None:
            link, conflict = self._attach_prior(job, current, search, link, events)
            if conflict is not None:
                search = PriorSearch(
                    PriorStatus.NONE_FOUND,
                    None,
                    (),
                    search.conflicts + (conflict,),
                    search.considered,
                    "the retrieved prior's headers name another patient",
                )
                link = PriorLink.from_search(search)
        flags = []
        for c in search.conflicts:  # each refusal: an audit event and a review flag of its kind
            detail = {"differing": list(c.differing), "patient_key": patient_key, "study_date": c.study_date}
            events.append(
                AuditEvent(
                    _REFUSAL_EVENTS[c.kind],
                    self._actor,
                    job.study_instance_uid,
                    job_id=job.job_id,
                    detail={"candidate_study_uid": c.study_uid, **detail},
                )
            )
            flags.append(RaiseReviewFlag(FlagKind(str(c.kind)), job.study_instance_uid, c.study_uid, detail))
        self._link(job, link, events, flags)

    def _attach_prior(
        self,
        job: Job,
        current: CurrentStudy,
        search: PriorSearch,
        link: PriorLink,
        events: list[AuditEvent],
    ) -> tuple[PriorLink, Conflict | None]:
        """Add prior results and retrieved images to the link; or return a conflict."""
        assert search.study is not None
        route = job.record.route
        families = [t.family for t in route.tasks] if route is not None else []
        compare = [f for f in families if f in self._cfg.compare_images]
        if compare and search.series:
            link, conflict = self._retrieve_images(job, current, search, search.series[0], link, events)
            if conflict is not None:
                return link, conflict
        else:
            link = replace(link, evidence=self._evidence_refs(search))
        retrieved = link.retrieved is not None
        results = tuple(
            r for f in families if (r := self._prior_result(job, search, f, skip_pacs=f in compare and retrieved))
        )
        return replace(link, results=results), None

    # ----------------------------------------------------------- current study
    def _current(self, job: Job) -> tuple[CurrentStudy, str]:
        intake = self._ledger.intake
        route = job.record.route
        routed = {u for t in (route.tasks if route else ()) for u in t.sop_instance_uids}
        instances = [
            i
            for i in intake.job_instances(job.job_id, include_set_aside=False)
            if not routed or i.sop_instance_uid in routed
        ]
        if not instances:
            instances = intake.job_instances(job.job_id)
        header = dcmread_plain(instances[0].path, self._ledger.keyring, stop_before_pixels=True)
        study = CurrentStudy(
            study_uid=job.study_instance_uid,
            identity=PatientIdentity.from_dataset(header),
            study_date=str(header.get("StudyDate", "") or ""),
            study_time=str(header.get("StudyTime", "") or ""),
            modalities=tuple(sorted({i.modality for i in instances if i.modality})),
            body_parts=tuple(sorted({i.body_part.upper() for i in instances if i.body_part})),
        )
        return study, instances[0].patient_key

    # ----------------------------------------------------------- prior images
    def _retrieve_images(
        self,
        job: Job,
        current: CurrentStudy,
        search: PriorSearch,
        series: SeriesRecord,
        link: PriorLink,
        events: list[AuditEvent],
    ) -> tuple[PriorLink, Conflict | None]:
        """Retrieve the prior series (unless held) and check whose it is."""
        held, outcome = self._fetch(job, series)
        events.append(
            AuditEvent(
                AuditEventType.PRIOR_RETRIEVED,
                self._actor,
                job.study_instance_uid,
                job_id=job.job_id,
                detail={
                    "prior_study_uid": series.study_uid,
                    "series_uid": series.series_uid,
                    "method": self._cfg.retrieve,
                    "instances": len(held),
                    **outcome,
                },
            )
        )
        if not held:
            return replace(
                link, reason=f"{link.reason}; prior images could not be retrieved", evidence=self._evidence_refs(search)
            ), None
        header = dcmread_plain(held[0].path, self._ledger.keyring, stop_before_pixels=True)
        differing = current.identity.disagreements(PatientIdentity.from_dataset(header))
        if differing:  # the PACS's C-FIND answer and the stored headers disagree: trust neither
            return link, Conflict(series.study_uid, differing, search.study.study_date if search.study else "")
        retrieved = RetrievedSeries(series.study_uid, series.series_uid, tuple(i.sop_instance_uid for i in held))
        evidence = tuple(
            InstanceRef(series.study_uid, series.series_uid, i.sop_class_uid, i.sop_instance_uid) for i in held
        )
        return replace(link, retrieved=retrieved, evidence=evidence), None

    def _fetch(self, job: Job, series: SeriesRecord) -> tuple[list[InstanceMeta], dict[str, Any]]:
        """The prior series' instances we hold, retrieving them first unless all are held."""
        intake = self._ledger.intake
        held = intake.series_instances(series.series_uid)
        outcome: dict[str, Any] = {"already_held": bool(held) and len(held) == series.n_instances}
        if outcome["already_held"] or self._pacs is None:
            return held, outcome
        intake.expect_prior_series(
            series.series_uid, series.study_uid, job.study_instance_uid, job.job_id, self._clock.now()
        )
        try:
            result = self._pacs.retrieve_series(series.study_uid, series.series_uid, self._cfg.retrieve)
            outcome |= {"status": f"0x{result.status:04X}", "completed": result.completed, "failed": result.failed}
        except DependencyUnavailable as exc:
            outcome["error"] = str(exc)
        return intake.series_instances(series.series_uid), outcome

    def _evidence_refs(self, search: PriorSearch) -> tuple[InstanceRef, ...]:
        """The chosen prior series' instances (IMAGE-level C-FIND), to name in the SR."""
        if not search.series or self._pacs is None:
            return ()
        try:
            refs = self._pacs.find_instances(search.series[0].study_uid, search.series[0].series_uid)
        except DependencyUnavailable as exc:
            logger.info("prior instances could not be listed: %s", exc)
            return ()
        return tuple(r for r in refs if r.sop_class_uid)

    # ------------------------------------------------------ prior AI results
    def _prior_result(self, job: Job, search: PriorSearch, family: str, *, skip_pacs: bool) -> PriorResult | None:
        assert search.study is not None
        study = search.study
        version = self._ledger.results.latest(study.study_uid, family)
        if version is not None:
            sr = InstanceRef(
                study.study_uid, version.series_instance_uid, version.sop_class_uid, version.sop_instance_uid
            )
            return PriorResult.from_prediction(version.prediction, study.study_uid, study.study_date, "ledger", sr)
        if skip_pacs or family not in self._models:
            return None
        try:
            return self._prior_result_at_pacs(job, study.study_uid, family)
        except (DependencyUnavailable, ValueError, OSError) as exc:
            logger.info("prior AI result of %s not usable: %s", family, exc)
            return None

    def _prior_result_at_pacs(self, job: Job, study_uid: str, family: str) -> PriorResult | None:
        assert self._pacs is not None
        name = self._models[family].name
        intake = self._ledger.intake
        series = [
            s for s in self._pacs.find_series(study_uid) if s.modality == "SR" and describes_our_sr(s.description, name)
        ]
        datasets: list[Dataset] = []
        for s in series:
            held = intake.series_instances(s.series_uid)
            if not held:
                intake.expect_prior_series(
                    s.series_uid, study_uid, job.study_instance_uid, job.job_id, self._clock.now()
                )
                self._pacs.retrieve_series(study_uid, s.series_uid, self._cfg.retrieve)
                held = intake.series_instances(s.series_uid)
            datasets += [dcmread_plain(i.path, self._ledger.keyring) for i in held]
        newest = _newest_version(datasets)
        return PriorResult.from_sr(newest, family, "pacs") if newest is not None else None

    # ---------------------------------------------------------------- commit
    def _query_event(
        self,
        job: Job,
        current: CurrentStudy,
        patient_key: str,
        search: PriorSearch | None,
        error: str,
    ) -> AuditEvent:
        detail: dict[str, Any] = {
            "patient_key": patient_key,
            "modalities": list(current.modalities),
            "lookback_days": self._cfg.lookback_days,
        }
        if search is not None:
            detail |= {
                "status": str(search.status),
                "considered": search.considered,
                "prior_study_uid": search.study.study_uid if search.study else "",
            }
        else:
            detail |= {"status": str(PriorStatus.UNAVAILABLE), "error": error}
        return AuditEvent(
            AuditEventType.PRIOR_QUERY, self._actor, job.study_instance_uid, job_id=job.job_id, detail=detail
        )

    def _link(
        self,
        job: Job,
        link: PriorLink,
        events: list[AuditEvent],
        flags: list[RaiseReviewFlag],
    ) -> None:
        event = AuditEvent(
            AuditEventType.LINKED,
            self._actor,
            job.study_instance_uid,
            job_id=job.job_id,
            detail={
                "priors": str(link.status),
                "prior_study_uid": link.study.study_uid if link.study else "",
                "results": sorted(r.family for r in link.results),
                "retrieved": len(link.retrieved.sop_instance_uids) if link.retrieved else 0,
            },
        )
        self._ledger.jobs.transition(
            job,
            JobState.LINKED,
            self._clock.now(),
            events=[*events, event],
            record=replace(job.record, priors=link),
            effects=flags,
        )


def _newest_version(datasets: list[Dataset]) -> Dataset | None:
    """The SR no other SR names as its predecessor (the latest version)."""
    superseded = {
        str(sop.ReferencedSOPInstanceUID)
        for ds in datasets
        for st in ds.get("PredecessorDocumentsSequence", [])
        for se in st.ReferencedSeriesSequence
        for sop in se.ReferencedSOPSequence
    }
    left = [d for d in datasets if str(d.SOPInstanceUID) not in superseded]
    return left[-1] if left else None


@ray.remote
class PriorLinkerActor(StageShell):
    """Ray shell around ``PriorLinkWork``."""

    name = "prior_linker"
    state = JobState.ROUTED

    def __init__(
        self,
        runtime: StageRuntime,
        cfg: PriorsConfig | None = None,
        pacs: PacsConfig | None = None,
        listener: ListenerConfig | None = None,
        layout: VarLayout | None = None,
        models: dict[str, ModelEntry] | None = None,
        hash_key: bytes | None = None,
    ) -> None:
        ledger = self._open_ledger(runtime.storage, runtime.log_level)
        client = None
        if cfg is not None and pacs is not None and listener is not None:
            store = None
            if layout is not None and cfg.retrieve == "c-get":
                kwargs = {"hash_key": hash_key} if hash_key else {}
                self._getter = Listener(listener, layout.spool, layout.rejected, ledger, 0.0, **kwargs)
                store = self._getter.handle_store
            client = DimseQueryRetrieve(
                pacs, cfg.query_timeout_s, cfg.retrieve_timeout_s, move_destination=listener.ae_title, on_store=store
            )
        self._start(runtime, PriorLinkWork(ledger, "stage:prior_linker", cfg, client, models, self._clock))
