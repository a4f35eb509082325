"""Study assembler actor: declares receiving studies complete on the strongest evidence present.

One decision for every path: ``core.completeness.decide`` over a ``StudyEvidence`` built here
from the ledger (MPPS steps, IAN notices, the sender's standing, what we hold), the RIS order
status (``OrderStatusSource``, where the HL7 bridge is configured) and the PACS count answers
this process asked for (kept in memory: after a restart the PACS is simply asked again).

- The stage runner leases receiving jobs that are due: the listener sets ``not_before`` to the
  quiet period, accepted MPPS / IAN evidence makes a job due at once (and NOTIFYs on
  PostgreSQL), and a job that must wait is postponed to the decision's ``not_before``.
- ``EvidenceWatcher`` looks at every receiving study each poll interval, asks the PACS for
  counts when ``decide`` says an answer could change the decision, and completes a study as
  soon as it is complete (e.g. the last instance an MPPS step lists arrived).

Completing writes the typed ``Completion`` section (rule, partial or not) and a STUDY_COMPLETE
audit event with the decision. A job version opened by instances after an earlier completion
is judged once (``classify_arrival``): a heuristic rule that completed the study too early
tightens that sender's rule (stored; ``sender_tightened`` audit event and review flag).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

import ray

from actors.adapters.query_retrieve import DimseQueryRetrieve
from actors.polling import Loop
from actors.stage import StageRuntime, StageShell
from core.audit import AuditEvent
from core.completeness import (
    CompletenessPolicy,
    CompletionDecision,
    ReceivingStudy,
    StudyEvidence,
    decide,
)
from core.config import AssemblyConfig, PacsConfig, StorageConfig
from core.errors import DependencyUnavailable
from core.job import Completion, Job
from core.ledger import CoverStudy
from core.order_status import OrderStatus
from core.pacs_counts import CountObservation, PacsCounts, Verdict, judge
from core.ports import Clock, OrderStatusSource
from core.sources import SenderStanding
from core.types import AuditEventType, JobState
from state.ledger import Ledger

__all__ = ["AssemblerActor", "Assembly", "AssemblyWork", "Evidence", "EvidenceWatcher", "order_source"]

logger = logging.getLogger(__name__)

_KEEP = 16
"""Count answers kept per study (only a run of identical answers matters)."""
_PUSHED = frozenset({"mpps", "ian"})


class Evidence:
    """What is known of receiving studies: the ledger's evidence, the PACS's count answers (this
    process's memory) and the RIS order status. Safe to share between threads."""

    def __init__(
        self,
        policy: CompletenessPolicy,
        pacs: DimseQueryRetrieve | None,
        ledger: Ledger,
        orders: OrderStatusSource | None = None,
    ) -> None:
        self.policy = policy
        self._pacs = pacs
        self._ledger = ledger
        self._orders = orders
        self._lock = threading.Lock()
        self._answers: dict[str, list[CountObservation]] = {}
        self.queries = 0

    def gather(self, studies: Sequence[ReceivingStudy]) -> list[StudyEvidence]:
        """The evidence of each study (one batch of ledger reads for them all)."""
        standings = self._ledger.evidence.standings()
        rules = {
            s.job_id: self.policy.rule_for(s.calling_ae, s.modalities, standings.get(s.calling_ae.strip()))
            for s in studies
        }
        pushed = [s.study_uid for s in studies if _PUSHED & set(rules[s.job_id].evidence)]
        steps = self._ledger.evidence.steps_for(pushed) if pushed else {}
        notices = self._ledger.evidence.notices_for(pushed) if pushed else {}
        named = {u for uid in steps for st in steps[uid] for u in st.study_uids} | set(notices)
        held = self._ledger.intake.held_uids(named) if named else {}
        out = []
        for s in studies:
            own = self._own_series(s, rules[s.job_id].completion == "pacs_counts" or s.study_uid in notices)
            mine = steps.get(s.study_uid, ())
            elsewhere = frozenset().union(
                *(held.get(u, frozenset()) for st in mine for u in st.study_uids if u != s.study_uid)
            )
            study = replace(s, instance_uids=held.get(s.study_uid, frozenset()))
            out.append(
                StudyEvidence(
                    study,
                    own,
                    mine,
                    notices.get(s.study_uid, ()),
                    self._order(s, rules[s.job_id].evidence),
                    self.observations(s.study_uid),
                    standings.get(s.calling_ae.strip()),
                    elsewhere,
                )
            )
        return out

    def _own_series(self, study: ReceivingStudy, needed: bool) -> frozenset[str]:
        return frozenset(self._ledger.results.own_series(study.study_uid)) if needed else frozenset()

    def _order(self, study: ReceivingStudy, trusted: Iterable[str]) -> OrderStatus | None:
        if self._orders is None or "order_status" not in trusted:
            return None
        return self._orders.order_status(study.study_uid, study.accession_key)

    def observations(self, study_uid: str) -> tuple[CountObservation, ...]:
        """The count answers kept for a study, oldest first."""
        with self._lock:
            return tuple(self._answers.get(study_uid, ()))

    def decide(self, evidence: StudyEvidence, now: float) -> tuple[CompletionDecision, StudyEvidence]:
        """Decide; when a count answer could change the decision, ask the PACS and decide again."""
        decision = decide(evidence, self.policy, now)
        if not decision.query_pacs or self._pacs is None:
            return decision, evidence
        study = evidence.study
        try:
            counts: PacsCounts | None = self._pacs.study_counts(study.study_uid)
        except DependencyUnavailable as exc:
            logger.info("study %s: the PACS cannot tell (%s)", study.study_uid, exc)
            counts = None
        with self._lock:
            kept = self._answers.setdefault(study.study_uid, [])
            kept.append(CountObservation(now, counts, dict(study.received)))
            del kept[:-_KEEP]
            self.queries += 1
        evidence = replace(evidence, counts=self.observations(study.study_uid))
        return decide(evidence, self.policy, now), evidence

    def forget_except(self, study_uids: Iterable[str]) -> None:
        """Drop the count answers of studies no longer receiving."""
        keep = set(study_uids)
        with self._lock:
            for uid in [u for u in self._answers if u not in keep]:
                del self._answers[uid]


def _counts_detail(evidence: StudyEvidence, scope: str) -> dict[str, Any]:
    """What the count evidence was (no identifiers), for the STUDY_COMPLETE audit event."""
    latest = evidence.counts[-1].counts if evidence.counts else None
    verdict = judge(evidence.study.received, latest, evidence.own_series, scope) if latest else Verdict.CANNOT_TELL
    return {
        "verdict": str(verdict),
        "received": sum(evidence.study.received.values()),
        "received_series": len(evidence.study.received),
        "pacs_study_count": latest.study_count if latest else None,
        "pacs_series": len(latest.series) if latest else None,
        "count_queries": len(evidence.counts),
        "own_series": len(evidence.own_series),
        "steps": len(evidence.steps),
        "notices": len(evidence.notices),
    }


class Assembly:
    """Decides for receiving studies and commits the completions."""

    def __init__(self, ledger: Ledger, evidence: Evidence, actor: str, clock: Clock) -> None:
        self.ledger = ledger
        self.evidence = evidence
        self._actor = actor
        self._clock = clock
        self._judged: set[int] = set()

    def consider(self, studies: Sequence[ReceivingStudy], now: float) -> list[tuple[CompletionDecision, StudyEvidence]]:
        """Judge late arrivals, then decide for each study."""
        for study in studies:
            self._judge_arrival(study, now)
        return [self.evidence.decide(ev, now) for ev in self.evidence.gather(studies)]

    def forget_except(self, studies: Sequence[ReceivingStudy]) -> None:
        """Keep only what concerns studies still receiving (count answers, judged arrivals)."""
        self.evidence.forget_except(s.study_uid for s in studies)
        self._judged &= {s.job_id for s in studies}

    def complete(self, job: Job, decision: CompletionDecision, evidence: StudyEvidence, now: float) -> None:
        """Move the job to ``complete`` with its ``Completion`` section and audit event."""
        study = evidence.study
        rule = self.evidence.policy.rule_for(study.calling_ae, study.modalities, evidence.standing)
        detail = {
            **decision.audit_detail(),
            "calling_ae": study.calling_ae,
            "source_rule": rule.completion,
            "strictness": rule.strictness,
            "quiet_period_s": rule.quiet_period_s,
            "settle_s": rule.settle_s,
            "since_last_instance_s": round(now - study.last_instance_at, 3),
            **_counts_detail(evidence, rule.count_scope),
        }
        event = AuditEvent(
            AuditEventType.STUDY_COMPLETE, self._actor, job.study_instance_uid, job_id=job.job_id, detail=detail
        )
        record = replace(job.record, completion=Completion.of(decision, study.calling_ae))
        self.ledger.jobs.transition(job, JobState.COMPLETE, now, events=[event], record=record, effects=[CoverStudy()])

    def _judge_arrival(self, study: ReceivingStudy, now: float) -> None:
        """Judge once the instances that opened a later version of a completed study."""
        if study.version <= 1 or study.job_id in self._judged:
            return
        self._judged.add(study.job_id)
        if self.ledger.evidence.arrival_judged(study.job_id):
            return
        earlier = [
            j
            for j in self.ledger.jobs.for_study(study.study_uid)
            if j.version < study.version and j.record.completion is not None
        ]
        if not earlier:
            return
        done = earlier[-1].record.completion
        assert done is not None
        if study.last_instance_at <= done.at:
            return  # reopened without a new instance (a quarantine release): nothing arrived
        standing = self.ledger.evidence.standings().get(done.calling_ae) or SenderStanding(done.calling_ae)
        verdict = self.evidence.policy.classify_arrival(
            done.completed_study(study.study_uid), study.opened_at, standing, study.modalities
        )
        self.ledger.evidence.record_arrival(study.job_id, study.study_uid, verdict, self._actor, now)
        if verdict.tightened is not None:
            logger.warning(
                "sender %s completed study %s early; its rule is tightened to strictness %d",
                done.calling_ae,
                study.study_uid,
                verdict.tightened.strictness,
            )


class AssemblyWork:
    """Decides for one receiving job that is due (its timer ran out, or evidence arrived)."""

    def __init__(self, assembly: Assembly, clock: Clock, poll_s: float = 0.05) -> None:
        self._assembly = assembly
        self._clock = clock
        self._poll_s = poll_s

    def __call__(self, job: Job) -> None:
        """Complete ``job``, or postpone it until the decision's ``not_before``."""
        now = self._clock.now()
        ledger = self._assembly.ledger
        found = ledger.intake.receiving_studies(now, job_id=job.job_id)
        study = (
            found[0]
            if found
            else ReceivingStudy(
                job.job_id,
                job.study_instance_uid,
                "",
                job.last_instance_at,
                {},
                version=job.version,
                opened_at=job.created_at,
            )
        )
        [(decision, evidence)] = self._assembly.consider([study], now)
        if decision.complete:
            self._assembly.complete(job, decision, evidence, now)
            return
        ledger.jobs.postpone(job, max(decision.not_before, now + self._poll_s))


class EvidenceWatcher:
    """Completes receiving studies as soon as their evidence says so, before any timer."""

    def __init__(self, assembly: Assembly, owner: str, lease_s: float, clock: Clock) -> None:
        self._assembly = assembly
        self._owner = owner
        self._lease_s = lease_s
        self._clock = clock
        self.completed = 0

    def run_once(self) -> int:
        """Look at every receiving study once; return how many were completed."""
        now = self._clock.now()
        ledger = self._assembly.ledger
        studies = ledger.intake.receiving_studies(now)
        self._assembly.forget_except(studies)
        done = 0
        for decision, evidence in self._assembly.consider(studies, now):
            if not decision.complete:
                continue
            job = ledger.jobs.lease_job(evidence.study.job_id, JobState.RECEIVING, self._owner, self._lease_s, now)
            if job is not None:
                self._assembly.complete(job, decision, evidence, self._clock.now())
                done += 1
        self.completed += done
        return done


def order_source(storage: StorageConfig | None) -> OrderStatusSource | None:
    """The RIS order status, read from the HL7 context store where the bridge is configured.

    Needs ``ContextReader.order_status`` (``core.ports.OrderStatusSource``); a context store
    without it gives no order-status evidence (logged once), and the other rules decide.

    Args:
        storage: Where the context store is (``None``: the HL7 bridge is off).
    """
    if storage is None:
        return None
    from state.context_store import ContextReader, open_context

    reader: Any = ContextReader(open_context(storage))
    if isinstance(reader, OrderStatusSource):
        return reader
    logger.warning("the context store has no order_status read: order status is not used as evidence")
    reader.close()
    return None


@ray.remote
class AssemblerActor(StageShell):
    """Ray shell around ``AssemblyWork`` and ``EvidenceWatcher``."""

    name = "assembler"
    state = JobState.RECEIVING

    def __init__(
        self,
        runtime: StageRuntime,
        cfg: AssemblyConfig,
        pacs: PacsConfig | None = None,
        hl7_context: bool = False,
    ) -> None:
        ledger = self._open_ledger(runtime.storage, runtime.log_level)
        client = DimseQueryRetrieve(pacs, cfg.query_timeout_s) if pacs is not None else None
        orders = order_source(runtime.storage if hl7_context else None)
        evidence = Evidence(CompletenessPolicy(cfg), client, ledger, orders)
        assembly = Assembly(ledger, evidence, "stage:assembler", self._clock)
        watcher = EvidenceWatcher(assembly, f"assembler-evidence:{id(self):x}", runtime.lease_s, self._clock)
        self._add_loop(Loop("evidence-watcher", watcher.run_once, runtime.poll_interval_s, clock=self._clock))
        self._start(runtime, AssemblyWork(assembly, self._clock, runtime.poll_interval_s))
