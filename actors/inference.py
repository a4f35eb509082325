"""Inference actor: sends each routed task to its model family's Ray Serve deployment.

The deployment being down (not deployed, no healthy replica, queue full) is a peer outage: the
job waits in the ledger without spending its retry budget, and C-STOREs keep succeeding. A
``ModelError`` (the model cannot read this input) spends the budget and ends ``dead``.

**Versions side by side** (issue 17): for a family with ``versions``, each job reads the
family's rollout state afresh (as it reads the AI switches) and ``core.rollout.assign`` says
which version's result is the result (the live one, or a canary or rule candidate) and which
versions run beside it in shadow. A shadow's prediction is only stored and compared
(``Ledger.models.record_shadow``; its heatmaps are not kept): it never enters the job's
record, so it never reaches the SR, the PACS or the EHR, and its failure or absence is an
``inference_failed`` audit event with ``shadow: true``, never a retry of the job. A family
without ``versions`` runs as before, without reading the rollout state.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Any

import ray
from ray import serve
from ray.exceptions import GetTimeoutError, RayActorError
from ray.serve.exceptions import BackPressureError, RayServeException

from actors.adapters.metrics import recorder
from actors.polling import SystemClock
from actors.stage import StageRuntime, StageShell
from core.audit import AuditEvent
from core.config import ModelEntry, PriorsConfig, RoutingConfig
from core.errors import DependencyUnavailable, ModelError, UndecodablePixels
from core.job import Inference, Job
from core.ledger import HoldInQuarantine
from core.ports import Clock
from core.reasons import ReasonCode
from core.records import InferenceRequest, ModelOutput, ModelTask, Prediction
from core.rollout import Assignment, StudyFacts, assign, compare, version_app
from core.routing import Router
from core.types import AuditEventType, InstanceMeta, JobState, ValidationIssue
from state.ledger import Ledger
from state.sealed_files import read_plain

__all__ = ["InferenceActor", "InferenceWork", "TaskRun"]

logger = logging.getLogger(__name__)

_UNAVAILABLE = (BackPressureError, RayServeException, RayActorError, GetTimeoutError, TimeoutError)
"""What a Serve call raises when the application cannot answer now (a peer outage)."""


@dataclass(frozen=True, slots=True)
class TaskRun:
    """One task run: the prediction used, the versions met, the shadows whose answers were stored."""

    prediction: Prediction
    assignment: Assignment
    shadows: tuple[str, ...] = ()


def _cancel(response: Any) -> None:
    """Cancel a Serve request, best effort: one that already failed re-raises its error from
    ``cancel`` (Serve fetches the result first), and that must not replace the error being
    handled (a ``DeploymentUnavailableError`` would spend a retry)."""
    try:
        response.cancel()
    except Exception:  # noqa: BLE001 - it is over either way
        logger.debug("cancelling a Serve request raised; it had ended", exc_info=True)


ABSENT_RECHECK_S = 1.0
"""How long an application Serve said it does not have is taken as absent before Serve is asked
again. During an AI outage every due job asked the Serve controller (bench_soak: the inference
actor at ~40 % CPU and the controller at ~25 % for the whole outage); a study waits at most this
much longer once its model is back."""


def _peer(app: str) -> str:
    """The peer an outage names: ``model:<family>`` (``model:<family>--<version>`` for another
    version)."""
    return "model:" + app.removeprefix("model-")


class InferenceWork:
    """Runs every model task of one linked job."""

    def __init__(
        self,
        ledger: Ledger,
        models: dict[str, ModelEntry],
        router: Router,
        actor: str,
        compare_images: tuple[str, ...] = (),
        clock: Clock | None = None,
    ) -> None:
        self._ledger = ledger
        self._models = models
        self._router = router
        self._actor = actor
        self._compare = compare_images
        self._clock = clock or SystemClock()
        self._handles: dict[str, Any] = {}
        self._absent: dict[str, tuple[float, str]] = {}
        """Applications Serve said it does not have: until when (monotonic) to believe it, and what it said."""

    def _handle(self, app: str) -> Any:
        handle = self._handles.get(app)
        if handle is None:
            absent = self._absent.get(app)
            if absent is not None and time.monotonic() < absent[0]:
                raise DependencyUnavailable(_peer(app), absent[1])
            try:
                handle = serve.get_app_handle(app)
            except RayServeException as exc:
                self._absent[app] = (time.monotonic() + ABSENT_RECHECK_S, str(exc))
                raise DependencyUnavailable(_peer(app), str(exc)) from exc
            self._absent.pop(app, None)
            self._handles[app] = handle
        return handle

    def _switched_off(self, job: Job, task: ModelTask) -> str:
        switches = self._ledger.controls.ai_switches()
        if job.study_instance_uid in switches.studies_off:
            return "AI switched off for this study"
        wanted = set(task.sop_instance_uids)
        modalities = {i.modality for i in self._ledger.intake.job_instances(job.job_id) if i.sop_instance_uid in wanted}
        off = [m for m in modalities if not self._router.ai_enabled_for_modality(m, switches)]
        return f"AI switched off for modality {', '.join(sorted(off))}" if off else ""

    def _assign(self, job: Job, task: ModelTask, instances: list[InstanceMeta]) -> Assignment:
        """The versions this task meets (the family entry alone when it has no others)."""
        entry = self._models[task.family]
        if not entry.versions:
            return Assignment(task.family, entry.version, entry.version)
        wanted = set(task.sop_instance_uids)
        mine = [i for i in instances if i.sop_instance_uid in wanted]
        study = StudyFacts(
            job.study_instance_uid, frozenset(i.modality for i in mine), frozenset(i.calling_ae for i in mine)
        )
        return assign(task.family, entry, self._ledger.models.rollout(task.family), study)

    def infer(
        self,
        job: Job,
        task: ModelTask,
        events: list[AuditEvent] | None = None,
        holds: list[HoldInQuarantine] | None = None,
    ) -> TaskRun | None:
        """Run one task on the version it meets (and its shadows); store its heatmaps as blobs.

        Args:
            job: The job.
            task: One family's task.
            events: Where a shadow's failure and a quarantined instance are noted (``None``:
                run no shadows).
            holds: Where an instance the replica cannot decode is put to be held in quarantine
                (then the task runs again without it); ``None``: such an instance fails the task.

        Returns:
            The prediction of the version whose result is used, the assignment, the shadows
            run; ``None`` when no instance of the task could be decoded (all held).

        Raises:
            DependencyUnavailable: The deployment cannot take the request now.
            ModelError: The model failed on this input.
        """
        instances = self._ledger.intake.job_instances(job.job_id)
        paths = {i.sop_instance_uid: i.path for i in instances}
        assignment = self._assign(job, task, instances)
        while task.sop_instance_uids:
            try:
                prediction, shadows = self._request(job, job.study_instance_uid, task, paths, assignment, events)
                return TaskRun(prediction, assignment, shadows)
            except UndecodablePixels as exc:
                if holds is None or exc.sop_instance_uid not in task.sop_instance_uids:
                    raise
                holds.append(self._hold(job, exc, events if events is not None else []))
                task = replace(
                    task, sop_instance_uids=tuple(u for u in task.sop_instance_uids if u != exc.sop_instance_uid)
                )
        return None

    def _hold(self, job: Job, exc: UndecodablePixels, events: list[AuditEvent]) -> HoldInQuarantine:
        """Quarantine an instance the replica cannot decode, as the validator would have."""
        code = str(ReasonCode.PIXEL_DATA_UNDECODABLE)
        uid = exc.sop_instance_uid
        events.append(
            AuditEvent(
                AuditEventType.QUARANTINED,
                self._actor,
                job.study_instance_uid,
                uid,
                job.job_id,
                {"codes": [code], "messages": [exc.reason], "found_by": "model replica"},
            )
        )
        recorder.inc("pacsai_instances_quarantined_total", code=code)
        return HoldInQuarantine(uid, (ValidationIssue(code, exc.reason, uid),))

    def _call(self, family: str, version: str, request: InferenceRequest) -> Any:
        """Send ``request`` to one version's application; the response to wait for."""
        app = version_app(family, self._models[family], version)
        try:
            return self._handle(app).remote(request)
        except _UNAVAILABLE as exc:
            self._handles.pop(app, None)
            raise DependencyUnavailable(_peer(app), f"{type(exc).__name__}: {exc}") from exc

    def _output(self, family: str, version: str, response: Any) -> ModelOutput:
        """Wait for one version's answer (its own ``serve.request_timeout_s``)."""
        entry = self._models[family]
        app = version_app(family, entry, version)
        label = family if version == entry.version else f"{family} {version}"
        try:
            output: ModelOutput = response.result(timeout_s=entry.all_versions()[version].serve.request_timeout_s)
        except ModelError as exc:  # Ray wraps it (RayTaskError subclassing ModelError)
            cause = getattr(exc, "cause", exc)
            if isinstance(cause, UndecodablePixels):
                raise UndecodablePixels(f"{label}: {cause.reason}", cause.sop_instance_uid) from None
            raise ModelError(f"{label}: {getattr(cause, 'reason', cause)}") from None
        except _UNAVAILABLE as exc:
            if not isinstance(exc, (TimeoutError, GetTimeoutError)):  # a timeout: the application is there, slow
                self._handles.pop(app, None)
            raise DependencyUnavailable(_peer(app), f"{type(exc).__name__}: {exc}") from exc
        return output

    def _request(
        self,
        job: Job,
        study_uid: str,
        task: ModelTask,
        paths: dict[str, str],
        assignment: Assignment,
        events: list[AuditEvent] | None = None,
    ) -> tuple[Prediction, tuple[str, ...]]:
        """The prediction of the assigned version, and the shadow versions whose answers were
        stored (shadows run only where ``events`` is given)."""
        # No application (an AI outage): wait without reading the study (a CT is ~200 MB,
        # read again at every retry of a long outage).
        self._handle(version_app(task.family, self._models[task.family], assignment.version))
        request = InferenceRequest(
            study_uid=study_uid,
            family=task.family,
            instances=tuple((uid, read_plain(paths[uid], self._ledger.keyring)) for uid in task.sop_instance_uids),
            job_id=job.job_id,
        )
        response = self._call(task.family, assignment.version, request)
        shadows = self._send_shadows(job, assignment, request, events) if events is not None else []
        try:
            output = self._output(task.family, assignment.version, response)
        except BaseException:
            # A request that timed out still waits in Serve's queue, holding the study's bytes,
            # until a replica takes it (never, while none can start): drop it and the shadows.
            for pending in (response, *(p for _, p in shadows)):
                _cancel(pending)
            raise
        blobs = self._ledger.blobs
        prediction = output.with_stored(tuple(h.stored_as(blobs.put(h.levels)) for h in output.heatmaps))
        noted = events if events is not None else []
        ran = tuple(v for v, pending in shadows if self._shadow(job, assignment, v, pending, prediction, noted))
        return prediction, ran

    def _send_shadows(
        self, job: Job, assignment: Assignment, request: InferenceRequest, events: list[AuditEvent]
    ) -> list[tuple[str, Any]]:
        sent = []
        for version in assignment.shadows:
            try:
                sent.append((version, self._call(assignment.family, version, request)))
            except DependencyUnavailable as exc:
                events.append(self._shadow_failed(job, assignment.family, version, exc))
        return sent

    def _shadow(
        self,
        job: Job,
        assignment: Assignment,
        version: str,
        pending: Any,
        used: Prediction,
        events: list[AuditEvent],
    ) -> bool:
        """Store one shadow's answer beside the result used; whether it could be."""
        family = assignment.family
        try:
            shadow = self._output(family, version, pending).prediction
            self._ledger.models.record_shadow(
                job.job_id,
                job.study_instance_uid,
                family,
                assignment.version,
                version,
                shadow,
                compare(used, shadow),
                self._clock.now(),
            )
        except Exception as exc:  # a shadow never fails or retries the job: it leaves an audit event
            logger.warning("shadow %s %s failed for job %s: %s", family, version, job.job_id, type(exc).__name__)
            events.append(self._shadow_failed(job, family, version, exc))
            return False
        return True

    def _shadow_failed(self, job: Job, family: str, version: str, exc: Exception) -> AuditEvent:
        return AuditEvent(
            AuditEventType.INFERENCE_FAILED,
            self._actor,
            job.study_instance_uid,
            job_id=job.job_id,
            detail={
                "family": family,
                "version": version,
                "shadow": True,
                "error": f"{type(exc).__name__}: {getattr(exc, 'reason', None) or exc}"[:500],
            },
        )

    def __call__(self, job: Job) -> None:
        """Infer every task; move the job to ``inferred`` (or ``skipped`` if AI was switched off)."""
        route = job.record.route
        tasks = list(route.tasks) if route is not None else []
        for task in tasks:
            why = self._switched_off(job, task)
            if why:
                event = AuditEvent(
                    AuditEventType.SKIPPED,
                    self._actor,
                    job.study_instance_uid,
                    job_id=job.job_id,
                    detail={"reason": why},
                )
                self._ledger.jobs.transition(job, JobState.SKIPPED, self._clock.now(), events=[event], reason=why)
                return
        predictions: list[Prediction] = []
        events: list[AuditEvent] = []
        holds: list[HoldInQuarantine] = []
        assignments: dict[str, Assignment] = {}
        for task in self._affected(job, tasks, events):
            started = self._clock.now()
            recorder.observe(
                "pacsai_archive_to_inference_start_seconds",
                max(0.0, started - job.last_instance_at),
                family=task.family,
                priority=str(job.priority),
            )
            run = self.infer(job, task, events, holds)
            if run is None:
                continue  # every instance of the task is held: no result of this family
            predictions.append(run.prediction)
            assignments[task.family] = run.assignment
            events.append(self._inferred(job, run, started))
        prior = self._prior_predictions(job, tasks, assignments, events)
        inference = Inference(tuple(predictions), prior, self._clock.now())
        state, reason = JobState.INFERRED, None
        if holds and not predictions:
            state, reason = JobState.QUARANTINED, f"{len(holds)} instance(s) a model reads cannot be decoded"
        self._ledger.jobs.transition(
            job,
            state,
            self._clock.now(),
            events=events,
            record=replace(job.record, inference=inference),
            reason=reason,
            effects=holds,
        )

    def _inferred(self, job: Job, run: TaskRun, started: float) -> AuditEvent:
        """The ``inferred`` event: the version actually used; for a family with versions also why
        it was used (``traffic``) and the shadow versions whose answers were stored."""
        pred = run.prediction
        detail = {
            "family": pred.family,
            "model": pred.model_name,
            "version": pred.model_version,
            "positive": [f.key for f in pred.findings if f.present],
            "critical": [f.key for f in pred.findings if f.present and f.critical],
            "quality_flags": [q.key for q in pred.quality_flags],
            "seconds": round(self._clock.now() - started, 3),
            "started_at": round(started, 6),
        }
        if self._models[pred.family].versions:
            detail.update(traffic=run.assignment.reason.value, shadow=list(run.shadows))
        return AuditEvent(
            AuditEventType.INFERRED, self._actor, job.study_instance_uid, job_id=job.job_id, detail=detail
        )

    def _affected(self, job: Job, tasks: list[ModelTask], events: list[AuditEvent]) -> list[ModelTask]:
        """Tasks whose input differs from the study's latest result (late instances re-run
        only the affected models; an unchanged input would give the same SR again)."""
        if job.version <= 1:
            return tasks
        out = []
        for task in tasks:
            last = self._ledger.results.latest(job.study_instance_uid, task.family, job.version)
            if last is not None and set(last.prediction.source_uids) == set(task.sop_instance_uids):
                events.append(
                    AuditEvent(
                        AuditEventType.SKIPPED,
                        self._actor,
                        job.study_instance_uid,
                        job_id=job.job_id,
                        detail={
                            "family": task.family,
                            "reason": f"input unchanged since SR {last.sop_instance_uid}; not re-run",
                        },
                    )
                )
                continue
            out.append(task)
        return out

    def _prior_predictions(
        self,
        job: Job,
        tasks: list[ModelTask],
        assignments: dict[str, Assignment],
        events: list[AuditEvent],
    ) -> tuple[Prediction, ...]:
        """Run families that compare images on the retrieved prior series too (issue #5), on the
        version the current study met (no shadows)."""
        priors = job.record.priors
        retrieved = priors.retrieved if priors is not None else None
        if retrieved is None:
            return ()
        uids = list(retrieved.sop_instance_uids)
        paths = {i.sop_instance_uid: i.path for i in self._ledger.intake.instances(uids)}
        out = []
        for task in tasks:
            if task.family not in self._compare or task.family not in assignments or not paths:
                continue
            prior_task = ModelTask(task.family, tuple(u for u in uids if u in paths))
            try:
                out.append(self._request(job, retrieved.study_uid, prior_task, paths, assignments[task.family])[0])
            except ModelError as exc:  # the prior is unreadable for the model: compare without it
                events.append(
                    AuditEvent(
                        AuditEventType.INFERENCE_FAILED,
                        self._actor,
                        job.study_instance_uid,
                        job_id=job.job_id,
                        detail={"family": task.family, "prior": True, "error": exc.reason},
                    )
                )
        return tuple(out)


@ray.remote
class InferenceActor(StageShell):
    """Ray shell around ``InferenceWork``."""

    name = "inference"
    state = JobState.LINKED

    def __init__(
        self,
        runtime: StageRuntime,
        models: dict[str, ModelEntry],
        routing: RoutingConfig,
        priors: PriorsConfig | None = None,
    ) -> None:
        ledger = self._open_ledger(runtime.storage, runtime.log_level)
        router = Router(routing, list(models))
        compare = priors.compare_images if priors is not None and priors.enabled else ()
        self._start(runtime, InferenceWork(ledger, models, router, "stage:inference", compare, self._clock))
