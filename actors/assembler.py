"""Study assembler actor: declares receiving studies complete after the quiet period."""

from __future__ import annotations

import time

import ray

from actors.adapters.ledger import SqliteLedger
from actors.stage import StageRuntime, StageShell
from core.assembly import StudyAssembler
from core.audit import AuditEvent
from core.config import AssemblyConfig
from core.types import AuditEventType, Job, JobState

__all__ = ["AssemblerActor", "AssemblyWork"]


class AssemblyWork:
    """Completes one due receiving job (the ledger only hands out jobs whose timer ran out)."""

    def __init__(self, ledger: SqliteLedger, assembler: StudyAssembler, actor: str) -> None:
        self._ledger = ledger
        self._assembler = assembler
        self._actor = actor

    def __call__(self, job: Job) -> None:
        """Complete ``job`` if its quiet period has passed (else leave it for later)."""
        now = time.time()
        if not self._assembler.is_complete(job.last_instance_at, now):
            self._ledger.release(job)
            return
        event = AuditEvent(
            AuditEventType.STUDY_COMPLETE,
            self._actor,
            job.study_instance_uid,
            job_id=job.job_id,
            detail={"rule": "quiet_period", "quiet_period_s": self._assembler.quiet_period_s},
        )
        self._ledger.complete_study(job, now, [event])


@ray.remote
class AssemblerActor(StageShell):
    """Ray shell around ``AssemblyWork``."""

    name = "assembler"
    state = JobState.RECEIVING

    def __init__(self, runtime: StageRuntime, cfg: AssemblyConfig) -> None:
        ledger = self._open_ledger(runtime)
        self._start(runtime, AssemblyWork(ledger, StudyAssembler.from_config(cfg), "stage:assembler"))
