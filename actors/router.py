"""Router actor: chooses model families per series, or records why AI does not run."""

from __future__ import annotations

from dataclasses import replace

import ray

from actors.adapters.context_join import ContextJoin
from actors.polling import SystemClock
from actors.stage import StageRuntime, StageShell
from core.audit import AuditEvent
from core.config import RoutingConfig
from core.context import StudyContext
from core.job import Job
from core.ledger import Override, SetAside
from core.ports import Clock
from core.routing import RouteDecision, Router
from core.types import AuditEventType, InstanceMeta, JobState
from state.context_store import ContextReader, open_context
from state.ledger import Ledger

__all__ = ["RouterActor", "RoutingWork"]


class RoutingWork:
    """Routes one validated job, reading the AI switches afresh every time."""

    def __init__(
        self,
        ledger: Ledger,
        router: Router,
        actor: str,
        context: ContextJoin | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._ledger = ledger
        self._router = router
        self._actor = actor
        self._context = context
        self._clock = clock or SystemClock()

    def _join(self, job: Job, instances: list[InstanceMeta]) -> tuple[StudyContext | None, list[AuditEvent]]:
        """The HL7 order context of a routed job (issue #6); none when the bridge is off."""
        if self._context is None:
            return None, []
        context, event = self._context.lookup(job, instances, self._actor, "routing: priority lane and job context")
        return context, [event]

    def _event(self, job: Job, decision: RouteDecision, lane: int, context: StudyContext | None) -> AuditEvent:
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
                "context": None
                if context is None
                else {
                    "match": context.match,
                    "order_priority": context.priority,
                    "encounter_class": context.encounter_class,
                },
            },
        )

    def __call__(self, job: Job) -> None:
        """Move the job to ``routed`` (with its tasks) or ``skipped`` (with the reason)."""
        instances = self._ledger.intake.job_instances(job.job_id, include_set_aside=False)
        decision = self._router.decide(job.study_instance_uid, instances, self._ledger.controls.ai_switches())
        context, reads = self._join(job, instances) if decision.tasks else (None, [])
        lane = decision.priority if context is None else max(decision.priority, context.lane)
        record = replace(job.record, route=decision.route, context=context)
        events = reads + [self._event(job, decision, lane, context)]
        skipped = decision.skipped if decision.tasks else ()
        self._ledger.jobs.transition(
            job,
            JobState.ROUTED if decision.tasks else JobState.SKIPPED,
            self._clock.now(),
            events=events,
            record=record,
            reason=decision.reason,
            priority=lane,
            effects=[SetAside(Override.SKIPPED, tuple(skipped))] if skipped else [],
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
        hl7_context: bool = False,
        join_window_days: int = 1,
    ) -> None:
        """Args:
        runtime: Stage settings; ``runtime.storage`` also says where the context store is.
        cfg: Routing rules.
        families: The deployed model families.
        hl7_context: Join jobs to their HL7 order context (the bridge is configured).
        join_window_days: Patient ID + date join tolerance.
        """
        ledger = self._open_ledger(runtime.storage, runtime.log_level)
        join = (
            ContextJoin(ContextReader(open_context(runtime.storage)), join_window_days, keyring=ledger.keyring)
            if hl7_context
            else None
        )
        work = RoutingWork(ledger, Router(cfg, families), "stage:router", join, self._clock)
        self._start(runtime, work)
