"""Router actor: chooses model families per series, or records why AI does not run."""

from __future__ import annotations

import time
from dataclasses import asdict

import ray

from actors.adapters.ledger import SqliteLedger
from actors.stage import StageRuntime, StageShell
from core.audit import AuditEvent
from core.config import RoutingConfig
from core.routing import Router
from core.types import AuditEventType, Job, JobState

__all__ = ["RouterActor", "RoutingWork"]


class RoutingWork:
    """Routes one validated job, reading the AI switches afresh every time."""

    def __init__(self, ledger: SqliteLedger, router: Router, actor: str) -> None:
        self._ledger = ledger
        self._router = router
        self._actor = actor

    def __call__(self, job: Job) -> None:
        """Move the job to ``routed`` (with its tasks) or ``skipped`` (with the reason)."""
        overrides = self._ledger.instance_overrides(job.job_id)
        instances = [
            i for i in self._ledger.job_instances(job.job_id) if i.sop_instance_uid not in overrides
        ]
        decision = self._router.decide(
            job.study_instance_uid, instances, self._ledger.ai_switches()
        )
        events = [
            AuditEvent(
                AuditEventType.ROUTED if decision.tasks else AuditEventType.SKIPPED,
                self._actor,
                job.study_instance_uid,
                job_id=job.job_id,
                detail={
                    "reason": decision.reason,
                    "families": [t.family for t in decision.tasks],
                    "skipped_instances": len(decision.skipped),
                },
            )
        ]
        self._ledger.set_aside(
            job,
            JobState.ROUTED if decision.tasks else JobState.SKIPPED,
            time.time(),
            override="skipped",
            reasons=dict(decision.skipped) if decision.tasks else {},
            events=events,
            data={"tasks": [asdict(t) for t in decision.tasks]},
            reason=decision.reason,
            priority=decision.priority,
        )


@ray.remote
class RouterActor(StageShell):
    """Ray shell around ``RoutingWork``."""

    name = "router"
    state = JobState.VALIDATED

    def __init__(self, runtime: StageRuntime, cfg: RoutingConfig, families: list[str]) -> None:
        ledger = self._open_ledger(runtime)
        self._start(runtime, RoutingWork(ledger, Router(cfg, families), "stage:router"))
