"""Inference actor: sends each routed task to its model family's Ray Serve deployment.

The deployment being down (not deployed, no healthy replica, queue full) is a peer outage: the
job waits in the ledger without spending its retry budget, and C-STOREs keep succeeding. A
``ModelError`` (the model cannot read this input) spends the budget and ends ``dead``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import ray
from ray import serve
from ray.exceptions import GetTimeoutError, RayActorError
from ray.serve.exceptions import BackPressureError, RayServeException

from actors.adapters.ledger import SqliteLedger
from actors.adapters.study_records import StudyRecords
from actors.stage import StageRuntime, StageShell
from core.audit import AuditEvent
from core.config import ModelEntry, PriorsConfig, RoutingConfig, app_name
from core.errors import DependencyUnavailable, ModelError
from core.routing import Router
from core.types import AuditEventType, InferenceRequest, Job, JobState, ModelTask, Prediction

__all__ = ["InferenceActor", "InferenceWork"]

logger = logging.getLogger(__name__)


class InferenceWork:
    """Runs every model task of one linked job."""

    def __init__(
        self,
        ledger: SqliteLedger,
        models: dict[str, ModelEntry],
        router: Router,
        actor: str,
        compare_images: tuple[str, ...] = (),
    ) -> None:
        self._ledger = ledger
        self._records = StudyRecords(ledger)
        self._models = models
        self._router = router
        self._actor = actor
        self._compare = compare_images
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
        switches = self._ledger.ai_switches()
        if job.study_instance_uid in switches.studies_off:
            return "AI switched off for this study"
        modalities = {
            i.modality for i in self._ledger.job_instances(job.job_id)
            if i.sop_instance_uid in set(task.sop_instance_uids)
        }
        off = [m for m in modalities if not self._router.ai_enabled_for_modality(m, switches)]
        return f"AI switched off for modality {', '.join(sorted(off))}" if off else ""

    def infer(self, job: Job, task: ModelTask) -> Prediction:
        """Run one task on its deployment.

        Raises:
            DependencyUnavailable: The deployment cannot take the request now.
            ModelError: The model failed on this input.
        """
        paths = {i.sop_instance_uid: i.path for i in self._ledger.job_instances(job.job_id)}
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
            return self._handle(task.family).remote(request).result(timeout_s=timeout)
        except ModelError as exc:  # Ray wraps it (RayTaskError subclassing ModelError)
            cause = getattr(exc, "cause", exc)
            raise ModelError(f"{task.family}: {getattr(cause, 'reason', cause)}") from None
        except (BackPressureError, RayServeException, RayActorError, GetTimeoutError, TimeoutError) as exc:
            self._handles.pop(task.family, None)
            raise DependencyUnavailable(f"model:{task.family}", f"{type(exc).__name__}: {exc}") from exc

    def __call__(self, job: Job) -> None:
        """Infer every task; move the job to ``inferred`` (or ``skipped`` if AI was switched off)."""
        tasks = [ModelTask(t["family"], tuple(t["sop_instance_uids"])) for t in job.data.get("tasks", [])]
        for task in tasks:
            why = self._switched_off(job, task)
            if why:
                event = AuditEvent(AuditEventType.SKIPPED, self._actor, job.study_instance_uid, job_id=job.job_id, detail={"reason": why})
                self._ledger.transition(job, JobState.SKIPPED, time.time(), events=[event], reason=why)
                return
        predictions: dict[str, Any] = {}
        events = []
        for task in self._affected(job, tasks, events):
            started = time.time()
            pred = self.infer(job, task)
            predictions[task.family] = pred.to_json()
            events.append(
                AuditEvent(
                    AuditEventType.INFERRED,
                    self._actor,
                    job.study_instance_uid,
                    job_id=job.job_id,
                    detail={
                        "family": task.family,
                        "model": pred.model_name,
                        "version": pred.model_version,
                        "positive": [f.key for f in pred.findings if f.present],
                        "critical": [f.key for f in pred.findings if f.present and f.critical],
                        "quality_flags": [q["key"] for q in pred.extra.get("quality_flags", [])],
                        "seconds": round(time.time() - started, 3),
                        "started_at": round(started, 6),
                    },
                )
            )
        data: dict[str, Any] = {"predictions": predictions, "inferred_at": time.time()}
        data["prior_predictions"] = self._prior_predictions(job, tasks, predictions, events)
        self._ledger.transition(job, JobState.INFERRED, time.time(), events=events, data=data)

    def _affected(self, job: Job, tasks: list[ModelTask], events: list[AuditEvent]) -> list[ModelTask]:
        """Tasks whose input differs from the study's latest result (late instances re-run
        only the affected models; an unchanged input would give the same SR again)."""
        if job.version <= 1:
            return tasks
        out = []
        for task in tasks:
            last = self._records.latest_result(job.study_instance_uid, task.family, job.version)
            used = set((last or {}).get("prediction", {}).get("source_uids", ()))
            if last is not None and used == set(task.sop_instance_uids):
                events.append(AuditEvent(
                    AuditEventType.SKIPPED, self._actor, job.study_instance_uid, job_id=job.job_id,
                    detail={"family": task.family, "reason": "input unchanged since SR "
                            f"{last['sop_instance_uid']}; not re-run"}))
                continue
            out.append(task)
        return out

    def _prior_predictions(
        self, job: Job, tasks: list[ModelTask], predictions: dict[str, Any], events: list[AuditEvent]
    ) -> dict[str, Any]:
        """Run families that compare images on the retrieved prior series too (issue #5)."""
        retrieved = (job.data.get("priors") or {}).get("retrieved") or {}
        uids = list(retrieved.get("sop_instance_uids", ()))
        paths = {i.sop_instance_uid: i.path for i in self._records.instances(uids)}
        out: dict[str, Any] = {}
        for task in tasks:
            if task.family not in self._compare or task.family not in predictions or not paths:
                continue
            prior_task = ModelTask(task.family, tuple(u for u in uids if u in paths))
            try:
                out[task.family] = self._request(job, retrieved["study_uid"], prior_task, paths).to_json()
            except ModelError as exc:  # the prior is unreadable for the model: compare without it
                events.append(AuditEvent(
                    AuditEventType.INFERENCE_FAILED, self._actor, job.study_instance_uid,
                    job_id=job.job_id, detail={"family": task.family, "prior": True, "error": exc.reason}))
        return out


@ray.remote
class InferenceActor(StageShell):
    """Ray shell around ``InferenceWork``."""

    name = "inference"
    state = JobState.LINKED

    def __init__(
        self, runtime: StageRuntime, models: dict[str, ModelEntry], routing: RoutingConfig,
        priors: PriorsConfig | None = None,
    ) -> None:
        ledger = self._open_ledger(runtime)
        router = Router(routing, list(models))
        compare = priors.compare_images if priors is not None and priors.enabled else ()
        self._start(runtime, InferenceWork(ledger, models, router, "stage:inference", compare))
