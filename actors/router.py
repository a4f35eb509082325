"""Router actor: chooses model families per series, or records why AI does not run."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import ray

from actors.adapters.context_join import ContextJoin
from actors.adapters.context_store import ContextReader
from actors.adapters.ledger import SqliteLedger
from actors.stage import StageRuntime, StageShell
from core.audit import AuditEvent
from core.config import RoutingConfig
from core.context import StudyContext
from core.routing import Router
from core.types import AuditEventType, InstanceMeta, Job, JobState, RouteDecision

__all__ = ["RouterActor", "RoutingWork"]


class RoutingWork:
    """Routes one validated job, reading the AI switches afresh every time."""

    def __init__(
        self, ledger: SqliteLedger, router: Router, actor: str, context: ContextJoin | None = None
    ) -> None:
        self._ledger = ledger
        self._router = router
        self._actor = actor
        self._context = context

    def _join(
        self, job: Job, instances: list[InstanceMeta]
    ) -> tuple[StudyContext | None, list[AuditEvent]]:
        """The HL7 order context of a routed job (issue #6); none when the bridge is off."""
        if self._context is None:
            return None, []
        context, event = self._context.lookup(
            job, instances, self._actor, "routing: priority lane and job context"
        )
        return context, [event]

    def _event(
        self, job: Job, decision: RouteDecision, lane: int, context: StudyContext | None
    ) -> AuditEvent:
        return AuditEvent(
            AuditEventType.ROUTED if decision.tasks else AuditEventType.SKIPPED,
            self._actor,
            job.study_instance_uid,
            job_id=job.job_id,
            detail={
                "reason": decision.reason,
                "families": [t.family for t in decision.tasks],
                "skipped_instances": len(decision.skipped),
                "priority": lane,
                "context": None if context is None else {
                    "match": context.match, "order_priority": context.priority,
                    "encounter_class": context.encounter_class,
                },
            },
        )

    def __call__(self, job: Job) -> None:
        """Move the job to ``routed`` (with its tasks) or ``skipped`` (with the reason)."""
        overrides = self._ledger.instance_overrides(job.job_id)
        instances = [
            i for i in self._ledger.job_instances(job.job_id) if i.sop_instance_uid not in overrides
        ]
        decision = self._router.decide(
            job.study_instance_uid, instances, self._ledger.ai_switches()
        )
        context, reads = self._join(job, instances) if decision.tasks else (None, [])
        data: dict[str, Any] = {"tasks": [asdict(t) for t in decision.tasks]}
        lane = decision.priority
        if context is not None:
            data["context"] = context.to_json()
            lane = max(lane, context.lane)
        events = reads + [self._event(job, decision, lane, context)]
        self._ledger.set_aside(
            job,
            JobState.ROUTED if decision.tasks else JobState.SKIPPED,
            time.time(),
            override="skipped",
            reasons=dict(decision.skipped) if decision.tasks else {},
            events=events,
            data=data,
            reason=decision.reason,
            priority=lane,
        )


@ray.remote
class RouterActor(StageShell):
    """Ray shell around ``RoutingWork``."""

    name = "router"
    state = JobState.VALIDATED

    def __init__(
        self,
        runtime: StageRuntime,
        cfg: RoutingConfig,
        families: list[str],
        context_db: Path | None = None,
        join_window_days: int = 1,
    ) -> None:
        ledger = self._open_ledger(runtime)
        join = ContextJoin(ContextReader(context_db), join_window_days) if context_db else None
        work = RoutingWork(ledger, Router(cfg, families), "stage:router", join)
        self._start(runtime, work)
