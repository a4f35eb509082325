"""Prior linker actor. Linking priors by C-FIND / C-MOVE is issue #5; until then the stage
records, for every job, that priors were not looked up, so that the omission is explicit."""

from __future__ import annotations

import time

import ray

from actors.adapters.ledger import SqliteLedger
from actors.stage import StageRuntime, StageShell
from core.audit import AuditEvent
from core.types import AuditEventType, Job, JobState

__all__ = ["PriorLinkWork", "PriorLinkerActor"]


class PriorLinkWork:
    """Records the prior-linking outcome of one routed job."""

    def __init__(self, ledger: SqliteLedger, actor: str) -> None:
        self._ledger = ledger
        self._actor = actor

    def __call__(self, job: Job) -> None:
        """Move the job to ``linked``."""
        priors = {"status": "not_looked_up", "reason": "prior linking is not enabled"}
        event = AuditEvent(
            AuditEventType.LINKED, self._actor, job.study_instance_uid, job_id=job.job_id,
            detail={"priors": priors["status"]},
        )
        self._ledger.transition(job, JobState.LINKED, time.time(), events=[event], data={"priors": priors})


@ray.remote
class PriorLinkerActor(StageShell):
    """Ray shell around ``PriorLinkWork``."""

    name = "prior_linker"
    state = JobState.ROUTED

    def __init__(self, runtime: StageRuntime) -> None:
        ledger = self._open_ledger(runtime)
        self._start(runtime, PriorLinkWork(ledger, "stage:prior_linker"))
