"""Inference actor: sends each routed task to its model family's Ray Serve deployment.

The deployment being down (not deployed, no healthy replica, queue full) is a peer outage: the
job waits in the ledger without spending its retry budget, and C-STOREs keep succeeding. A
``ModelError`` (the model cannot read this input) spends the budget and ends ``dead``.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import ray
from ray import serve
from ray.exceptions import GetTimeoutError, RayActorError
from ray.serve.exceptions import BackPressureError, RayServeException

from actors.adapters.metrics import recorder
from actors.polling import SystemClock
from actors.stage import StageRuntime, StageShell
from core.audit import AuditEvent
from core.config import ModelEntry, PriorsConfig, RoutingConfig, app_name
from core.errors import DependencyUnavailable, ModelError
from core.job import Inference, Job
from core.ports import Clock
from core.records import InferenceRequest, ModelOutput, ModelTask, Prediction
from core.routing import Router
from core.types import AuditEventType, JobState
from state.ledger import Ledger

__all__ = ["InferenceActor", "InferenceWork"]

logger = logging.getLogger(__name__)


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

    def _handle(self, family: str) -> Any:
        handle = self._handles.get(family)
        if handle is None:
            try:
                handle = serve.get_app_handle(app_name(family))
            except RayServeException as exc:
                raise DependencyUnavailable(f"model:{family}", str(exc)) from exc
            self._handles[family] = handle
        return handle

    def _switched_off(self, job: Job, task: ModelTask) -> str:
        switches = self._ledger.controls.ai_switches()
        if job.study_instance_uid in switches.studies_off:
            return "AI switched off for this study"
        wanted = set(task.sop_instance_uids)
        modalities = {i.modality for i in self._ledger.intake.job_instances(job.job_id) if i.sop_instance_uid in wanted}
        off = [m for m in modalities if not self._router.ai_enabled_for_modality(m, switches)]
        return f"AI switched off for modality {', '.join(sorted(off))}" if off else ""

    def infer(self, job: Job, task: ModelTask) -> Prediction:
        """Run one task on its deployment; store its heatmaps as blobs.

        Raises:
            DependencyUnavailable: The deployment cannot take the request now.
            ModelError: The model failed on this input.
        """
        paths = {i.sop_instance_uid: i.path for i in self._ledger.intake.job_instances(job.job_id)}
        return self._request(job, job.study_instance_uid, task, paths)

    def _request(self, job: Job, study_uid: str, task: ModelTask, paths: dict[str, str]) -> Prediction:
        request = InferenceRequest(
            study_uid=study_uid,
            family=task.family,
            instances=tuple((uid, Path(paths[uid]).read_bytes()) for uid in task.sop_instance_uids),
            job_id=job.job_id,
        )
        timeout = self._models[task.family].serve.request_timeout_s
        try:
            output: ModelOutput = self._handle(task.family).remote(request).result(timeout_s=timeout)
        except ModelError as exc:  # Ray wraps it (RayTaskError subclassing ModelError)
            cause = getattr(exc, "cause", exc)
            raise ModelError(f"{task.family}: {getattr(cause, 'reason', cause)}") from None
        except (BackPressureError, RayServeException, RayActorError, GetTimeoutError, TimeoutError) as exc:
            self._handles.pop(task.family, None)
            raise DependencyUnavailable(f"model:{task.family}", f"{type(exc).__name__}: {exc}") from exc
        blobs = self._ledger.blobs
        return output.with_stored(tuple(h.stored_as(blobs.put(h.levels)) for h in output.heatmaps))

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
        for task in self._affected(job, tasks, events):
            started = self._clock.now()
            recorder.observe(
                "pacsai_archive_to_inference_start_seconds",
                max(0.0, started - job.last_instance_at),
                family=task.family,
                priority=str(job.priority),
            )
            pred = self.infer(job, task)
            predictions.append(pred)
            events.append(self._inferred(job, pred, started))
        prior = self._prior_predictions(job, tasks, predictions, events)
        inference = Inference(tuple(predictions), prior, self._clock.now())
        self._ledger.jobs.transition(
            job, JobState.INFERRED, self._clock.now(), events=events, record=replace(job.record, inference=inference)
        )

    def _inferred(self, job: Job, pred: Prediction, started: float) -> AuditEvent:
        return AuditEvent(
            AuditEventType.INFERRED,
            self._actor,
            job.study_instance_uid,
            job_id=job.job_id,
            detail={
                "family": pred.family,
                "model": pred.model_name,
                "version": pred.model_version,
                "positive": [f.key for f in pred.findings if f.present],
                "critical": [f.key for f in pred.findings if f.present and f.critical],
                "quality_flags": [q.key for q in pred.quality_flags],
                "seconds": round(self._clock.now() - started, 3),
                "started_at": round(started, 6),
            },
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
        predictions: list[Prediction],
        events: list[AuditEvent],
    ) -> tuple[Prediction, ...]:
        """Run families that compare images on the retrieved prior series too (issue #5)."""
        priors = job.record.priors
        retrieved = priors.retrieved if priors is not None else None
        if retrieved is None:
            return ()
        uids = list(retrieved.sop_instance_uids)
        paths = {i.sop_instance_uid: i.path for i in self._ledger.intake.instances(uids)}
        ran = {p.family for p in predictions}
        out = []
        for task in tasks:
            if task.family not in self._compare or task.family not in ran or not paths:
                continue
            prior_task = ModelTask(task.family, tuple(u for u in uids if u in paths))
            try:
                out.append(self._request(job, retrieved.study_uid, prior_task, paths))
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
