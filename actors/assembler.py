"""Study assembler actor: declares receiving studies complete, on PACS evidence or after silence.

Two paths share one ``EvidenceTracker`` (``core.completeness``):

- The stage runner leases receiving jobs whose quiet period ran out (the listener sets
  ``not_before``) and decides with ``on_quiet_timer``: complete (``quiet_period``, or
  ``pacs_counts`` / ``max_wait``), or postpone while the PACS holds instances we lack.
- ``EvidenceWatcher`` looks at receiving studies of ``pacs_counts`` senders every poll interval,
  before any timer, asks the PACS for its counts when that can change the answer, and completes
  a study at once when the counts match.

The STUDY_COMPLETE audit event records which rule completed the study and the evidence.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import Any

import ray

from actors.adapters.query_retrieve import DimseQueryRetrieve
from actors.polling import Loop
from actors.stage import StageRuntime, StageShell
from core.audit import AuditEvent
from core.completeness import (
    CompletenessPolicy,
    CompletionRule,
    EvidenceTracker,
    ReceivingStudy,
    TimerDecision,
    Verdict,
)
from core.config import AssemblyConfig, PacsConfig
from core.errors import DependencyUnavailable
from core.job import Job
from core.ledger import CoverStudy
from core.ports import Clock
from core.types import AuditEventType, JobState
from state.ledger import Ledger

__all__ = ["AssemblerActor", "AssemblyWork", "Evidence", "EvidenceWatcher"]

logger = logging.getLogger(__name__)


class Evidence:
    """The tracker, the PACS client and the ledger, safe to share between threads."""

    def __init__(
        self, tracker: EvidenceTracker, pacs: DimseQueryRetrieve | None, ledger: Ledger
    ) -> None:
        self.tracker = tracker
        self._pacs = pacs
        self.ledger = ledger
        self._lock = threading.Lock()

    def refresh(self, study: ReceivingStudy, now: float) -> None:
        """Ask the PACS for the study's counts if that can change the answer (bounded)."""
        if self._pacs is None:
            return
        own = self.ledger.results.own_series(study.study_uid)
        with self._lock:
            if not self.tracker.wants_query(study, now, own):
                return
        try:
            counts = self._pacs.study_counts(study.study_uid)
        except DependencyUnavailable as exc:
            logger.info("study %s: PACS cannot tell (%s); the quiet period decides", study.study_uid, exc)
            counts = None
        with self._lock:
            self.tracker.record(study, counts, now)

    def complete_now(self, study: ReceivingStudy) -> bool:
        """Whether a fresh PACS answer matches what we hold."""
        own = self.ledger.results.own_series(study.study_uid)
        with self._lock:
            return self.tracker.complete_now(study, own)

    def on_quiet_timer(self, study: ReceivingStudy, now: float) -> TimerDecision:
        """Refresh the PACS answer if useful, then decide for a job whose timer ran out."""
        self.refresh(study, now)
        own = self.ledger.results.own_series(study.study_uid)
        with self._lock:
            return self.tracker.on_quiet_timer(study, now, own)

    def forget_except(self, study_uids: Iterable[str]) -> None:
        """Drop cached answers of studies no longer receiving."""
        with self._lock:
            self.tracker.forget_except(study_uids)

    def describe(self, study: ReceivingStudy) -> dict[str, Any]:
        """The evidence for the audit trail (counts only, no identifiers)."""
        own = self.ledger.results.own_series(study.study_uid)
        with self._lock:
            verdict, fresh = self.tracker.verdict(study, own)
            counts = self.tracker.answer_of(study.study_uid)
        return {
            "verdict": str(verdict),
            "fresh": fresh,
            "received": sum(study.received.values()),
            "received_series": len(study.received),
            "pacs_study_count": counts.study_count if counts else None,
            "pacs_series": len(counts.series) if counts else None,
            "own_series": len(own),
        }


def _complete(
    ledger: Ledger, evidence: Evidence, job: Job, study: ReceivingStudy,
    rule: CompletionRule, actor: str, now: float,
) -> None:
    """Declare the study complete, auditing the rule and the evidence."""
    source = evidence.tracker.policy.rule_for(study.calling_ae)
    detail = {
        "rule": str(rule),
        "source_rule": source.completion,
        "calling_ae": study.calling_ae,
        "quiet_period_s": source.quiet_period_s,
        "since_last_instance_s": round(now - study.last_instance_at, 3),
        **evidence.describe(study),
    }
    event = AuditEvent(
        AuditEventType.STUDY_COMPLETE, actor, job.study_instance_uid, job_id=job.job_id, detail=detail
    )
    ledger.jobs.transition(job, JobState.COMPLETE, now, events=[event], effects=[CoverStudy()])


class AssemblyWork:
    """Decides for one receiving job whose quiet period ran out."""

    def __init__(self, ledger: Ledger, evidence: Evidence, actor: str, clock: Clock) -> None:
        self._ledger = ledger
        self._evidence = evidence
        self._actor = actor
        self._clock = clock

    def __call__(self, job: Job) -> None:
        """Complete ``job``, or postpone it while the PACS holds instances we lack."""
        now = self._clock.now()
        found = self._ledger.intake.receiving_studies(now, job_id=job.job_id)
        study = found[0] if found else ReceivingStudy(job.job_id, job.study_instance_uid, "", job.last_instance_at, {})
        decision = self._evidence.on_quiet_timer(study, now)
        if decision.complete and decision.rule is not None:
            _complete(self._ledger, self._evidence, job, study, decision.rule, self._actor, now)
            return
        if decision.verdict is Verdict.MORE_EXPECTED:
            logger.info("study %s: the PACS holds more; waiting until %.0f", job.study_instance_uid, decision.not_before)
        self._ledger.jobs.postpone(job, decision.not_before)


class EvidenceWatcher:
    """Completes studies of ``pacs_counts`` senders as soon as the PACS's counts match."""

    def __init__(
        self, ledger: Ledger, evidence: Evidence, owner: str, lease_s: float, actor: str,
        clock: Clock,
    ) -> None:
        self._ledger = ledger
        self._evidence = evidence
        self._owner = owner
        self._lease_s = lease_s
        self._actor = actor
        self._clock = clock
        self.completed = 0

    def run_once(self) -> int:
        """Look at every receiving study once; return how many were completed."""
        now = self._clock.now()
        studies = self._ledger.intake.receiving_studies(now)
        self._evidence.forget_except(s.study_uid for s in studies)
        policy = self._evidence.tracker.policy
        done = 0
        for study in studies:
            if not policy.uses_pacs(study.calling_ae):
                continue
            self._evidence.refresh(study, now)
            if not self._evidence.complete_now(study):
                continue
            job = self._ledger.jobs.lease_job(study.job_id, JobState.RECEIVING, self._owner,
                                              self._lease_s, now)
            if job is not None:
                _complete(self._ledger, self._evidence, job, study, CompletionRule.PACS_COUNTS,
                          self._actor, self._clock.now())
                done += 1
        self.completed += done
        return done


@ray.remote
class AssemblerActor(StageShell):
    """Ray shell around ``AssemblyWork`` and ``EvidenceWatcher``."""

    name = "assembler"
    state = JobState.RECEIVING

    def __init__(
        self, runtime: StageRuntime, cfg: AssemblyConfig, pacs: PacsConfig | None = None
    ) -> None:
        ledger = self._open_ledger(runtime.storage, runtime.log_level)
        client = DimseQueryRetrieve(pacs, cfg.query_timeout_s) if pacs is not None else None
        evidence = Evidence(EvidenceTracker(CompletenessPolicy(cfg)), client, ledger)
        watcher = EvidenceWatcher(ledger, evidence, f"assembler-evidence:{id(self):x}",
                                  runtime.lease_s, "stage:assembler", self._clock)
        self._add_loop(Loop("evidence-watcher", watcher.run_once, runtime.poll_interval_s,
                            clock=self._clock))
        self._start(runtime, AssemblyWork(ledger, evidence, "stage:assembler", self._clock))
