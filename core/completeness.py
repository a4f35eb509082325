"""When is a receiving study complete? One entry point over every kind of evidence.

Every peer closes a study after silence (mercure 60 s / 900 s, Orthanc StableAge 60 s, XNAT
5 min; ``shared/reference/peers.md`` section 2). Silence guesses; the modality, the PACS and
the RIS know. ``decide`` weighs what is known of one receiving study, strongest evidence first,
per sender (calling AE title; ``core.sources``):

1. **MPPS** (``core.mpps``, PS3.4 F): every procedure step naming the study final, and every
   instance they list held. A step in progress, or listed instances missing: more expected.
   DISCONTINUED: complete with what arrived, marked partial.
2. **IAN** (``core.ian``, PS3.4 R): every instance the PACS's notices list as retrievable held.
3. **Order status** (``core.order_status``, HL7 ORC-5 / OBR-25): the RIS reported the order
   complete, and nothing arrived for ``order_settle_s`` since.
4. **PACS counts with hysteresis** (``core.pacs_counts``): the counts equal ours and stayed so,
   with no arrival, across ``settle_s``. The PACS holding more: more expected.
5. **The quiet period**, by modality: nothing arrived for it.

Evidence saying more is coming is waited on until ``max_wait_s`` after the last instance; the
study then completes as ``max_wait``, marked partial (``core.versions.Incompleteness``). The
decision also says whether a (new) count query could change it, so the assembler asks the PACS
only then: a first query; after arrivals, once nothing has arrived for ``lull_s`` (which starts
the settle window), when our counts reach its last answer, or ``requery_s`` after the last
answer; and a confirming query when a settle window ends. Our own result series are left out.

``EvidenceTracker`` kept the count answers per study for the assembler written before issue 18
(no actor uses it now; ``actors.assembler`` calls ``decide`` itself);
``PacsCounts``, ``Verdict``, ``judge``, ``CompletionRule``, ``CompletenessPolicy`` and
``SourceRule`` are re-exported from their modules for it.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from core.ian import AvailabilityNotice, NoticesState, judge_notices
from core.mpps import ProcedureStep, StepsState, StepsVerdict, judge_steps
from core.order_status import OrderProgress, OrderStatus
from core.pacs_counts import (
    CountObservation,
    CountsState,
    PacsCounts,
    Verdict,
    judge,
    read_counts,
)
from core.sources import CompletenessPolicy, CompletionRule, SenderStanding, SourceRule
from core.versions import Incompleteness, IncompleteReason

__all__ = [
    "CompletenessPolicy",
    "CompletionDecision",
    "CompletionRule",
    "EvidenceTracker",
    "Outcome",
    "PacsCounts",
    "ReceivingStudy",
    "SourceRule",
    "StudyEvidence",
    "TimerDecision",
    "Verdict",
    "count_query_due",
    "decide",
    "judge",
]


@dataclass(frozen=True, slots=True)
class ReceivingStudy:
    """What the ledger holds for a study whose job is still receiving.

    Attributes:
        job_id: The receiving job.
        study_uid: Study Instance UID.
        calling_ae: Calling AE title of the sender of the latest instance.
        last_instance_at: When the latest instance arrived.
        received: Instances we hold in the whole study, by Series Instance UID.
        modalities: Modalities of the instances (chooses the quiet period).
        instance_uids: SOP Instance UIDs we hold (needed for MPPS and IAN evidence).
        version: The job's version (above 1: instances arrived after an earlier completion).
        opened_at: When the job was opened (its first instance arrived).
        accession_key: Keyed hash of the latest instance's accession (order status look-up).
    """

    job_id: int
    study_uid: str
    calling_ae: str
    last_instance_at: float
    received: Mapping[str, int]
    modalities: tuple[str, ...] = ()
    instance_uids: frozenset[str] = frozenset()
    version: int = 1
    opened_at: float = 0.0
    accession_key: str = ""


@dataclass(frozen=True, slots=True)
class StudyEvidence:
    """Everything known about one receiving study that can say it is complete.

    Attributes:
        study: What we hold.
        own_series: Our own result series in the study (SRs we stored): never counted.
        steps: MPPS procedure steps (those not naming the study are ignored).
        notices: IAN notices (those of other studies are ignored).
        order: The latest order status from the RIS (``core.order_status.latest_order_status``).
        counts: The PACS count answers for the study, oldest first.
        standing: The sender's standing (``None``: never tightened).
        held_elsewhere: SOP Instance UIDs held in other studies that an MPPS step names too
            (the group case).
    """

    study: ReceivingStudy
    own_series: frozenset[str] = frozenset()
    steps: tuple[ProcedureStep, ...] = ()
    notices: tuple[AvailabilityNotice, ...] = ()
    order: OrderStatus | None = None
    counts: tuple[CountObservation, ...] = ()
    standing: SenderStanding | None = None
    held_elsewhere: frozenset[str] = frozenset()


class Outcome(enum.StrEnum):
    """What the assembler does with a receiving study now."""

    COMPLETE = "complete"
    """Declare it complete (``CompletionDecision.rule`` says why)."""
    WAIT = "wait"
    """Nothing says more is coming, but nothing proves completeness yet: look again at ``not_before``."""
    MORE_EXPECTED = "more_expected"
    """Evidence says more is coming: wait for it, at most until ``not_before`` (then max_wait)."""


@dataclass(frozen=True, slots=True)
class CompletionDecision:
    """The typed answer of ``decide``.

    Attributes:
        outcome: Complete, wait, or more expected.
        rule: ``COMPLETE``: the rule that completed it (``MAX_WAIT`` when waiting gave up).
        not_before: When to decide again (``now`` when complete).
        evidence: The evidence that spoke (for ``MAX_WAIT``: what was waited on).
        incomplete: ``COMPLETE`` but known partial: mark the SR (incomplete series flag).
        missing: Instances the evidence lists (or the PACS holds) that we lack.
        reason: In words, for the audit trail.
        query_pacs: A new PACS count answer could change the decision: ask, then decide again.
    """

    outcome: Outcome
    rule: CompletionRule | None
    not_before: float
    evidence: CompletionRule
    incomplete: Incompleteness | None = None
    missing: int = 0
    reason: str = ""
    query_pacs: bool = False

    @property
    def complete(self) -> bool:
        """Whether the study is complete now."""
        return self.outcome is Outcome.COMPLETE

    def audit_detail(self) -> dict[str, Any]:
        """The decision for the STUDY_COMPLETE audit event (no identifiers)."""
        return {
            "outcome": str(self.outcome),
            "rule": str(self.rule or ""),
            "evidence": str(self.evidence),
            "missing": self.missing,
            "reason": self.reason,
            "incomplete": self.incomplete.to_json() if self.incomplete else None,
        }


def _complete(
    rule: CompletionRule,
    now: float,
    reason: str,
    incomplete: Incompleteness | None = None,
    evidence: CompletionRule | None = None,
) -> CompletionDecision:
    return CompletionDecision(
        Outcome.COMPLETE, rule, now, evidence or rule, incomplete, incomplete.missing if incomplete else 0, reason
    )


def _more_expected(
    evidence: CompletionRule, give_up: float, now: float, missing: Incompleteness, reason: str
) -> CompletionDecision:
    """Wait for what the evidence lists, until ``give_up``; then complete as partial."""
    if now >= give_up:
        return _complete(CompletionRule.MAX_WAIT, now, f"{reason}; waited max_wait_s", missing, evidence)
    return CompletionDecision(Outcome.MORE_EXPECTED, None, give_up, evidence, None, missing.missing, reason)


def _by_steps(ev: StudyEvidence, rule: SourceRule, now: float, give_up: float) -> CompletionDecision | None:
    """MPPS: every step naming the study final, every listed instance held."""
    verdict = _steps_verdict(ev, rule)
    if verdict.state is StepsState.NONE:
        return None
    if verdict.state is StepsState.IN_PROGRESS:
        return _more_expected(
            CompletionRule.MPPS,
            give_up,
            now,
            Incompleteness(IncompleteReason.NOT_FINISHED),
            "a procedure step naming the study is in progress",
        )
    if verdict.state is StepsState.MISSING:
        missing = Incompleteness(IncompleteReason.MISSING_INSTANCES, len(verdict.missing), verdict.missing_series)
        return _more_expected(
            CompletionRule.MPPS,
            give_up,
            now,
            missing,
            f"{len(verdict.missing)} of {verdict.expected} listed instances not held",
        )
    partial = Incompleteness(IncompleteReason.DISCONTINUED) if verdict.discontinued else None
    return _complete(
        CompletionRule.MPPS, now, f"{verdict.steps} step(s) final, {verdict.expected} instances held", partial
    )


def _steps_verdict(ev: StudyEvidence, rule: SourceRule) -> StepsVerdict:
    if "mpps" not in rule.evidence:
        return StepsVerdict(StepsState.NONE)
    scope = set(ev.study.received) if rule.count_scope == "series" else None
    return judge_steps(ev.steps, ev.study.study_uid, ev.study.instance_uids | ev.held_elsewhere, scope)


def _by_notices(ev: StudyEvidence, rule: SourceRule, now: float, give_up: float) -> CompletionDecision | None:
    """IAN: every instance listed as retrievable held."""
    if "ian" not in rule.evidence:
        return None
    study = ev.study
    verdict = judge_notices(
        ev.notices, study.study_uid, study.instance_uids, set(study.received), ev.own_series, rule.count_scope
    )
    if verdict.state is NoticesState.NONE:
        return None
    if verdict.state is NoticesState.MISSING:
        missing = Incompleteness(IncompleteReason.MISSING_INSTANCES, len(verdict.missing), verdict.missing_series)
        return _more_expected(
            CompletionRule.IAN,
            give_up,
            now,
            missing,
            f"{len(verdict.missing)} of {verdict.expected} available instances not held",
        )
    return _complete(CompletionRule.IAN, now, f"{verdict.expected} available instances held")


def _by_order(ev: StudyEvidence, rule: SourceRule, now: float) -> CompletionDecision | None:
    """Order status: reported complete (or discontinued), then ``order_settle_s`` of silence."""
    order = ev.order
    if "order_status" not in rule.evidence or order is None:
        return None
    if order.progress not in (OrderProgress.COMPLETED, OrderProgress.DISCONTINUED):
        return None
    due = max(order.at, ev.study.last_instance_at) + rule.order_settle_s
    reason = f"the RIS reported {order.progress} ({order.source or 'order status'})"
    if now < due:
        return CompletionDecision(Outcome.WAIT, None, due, CompletionRule.ORDER_STATUS, reason=reason)
    partial = Incompleteness(IncompleteReason.DISCONTINUED) if order.progress is OrderProgress.DISCONTINUED else None
    return _complete(CompletionRule.ORDER_STATUS, now, reason, partial)


def _by_counts(ev: StudyEvidence, rule: SourceRule, now: float, give_up: float) -> CompletionDecision | None:
    """PACS counts with hysteresis (``core.pacs_counts.read_counts``)."""
    if rule.completion != "pacs_counts":
        return None
    study = ev.study
    reading = read_counts(
        ev.counts, study.received, study.last_instance_at, ev.own_series, rule.count_scope, rule.settle_s
    )
    if reading.state is CountsState.SETTLED:
        return _complete(
            CompletionRule.PACS_COUNTS,
            now,
            f"counts matched for {reading.settles_at - reading.since:g} s with no arrival",
        )
    if reading.state is CountsState.UNSETTLED:
        return CompletionDecision(
            Outcome.WAIT,
            None,
            reading.settles_at,
            CompletionRule.PACS_COUNTS,
            reason=f"counts match; settling until {reading.settles_at:.3f}",
        )
    if reading.state is CountsState.MORE_EXPECTED:
        missing = Incompleteness(IncompleteReason.MISSING_INSTANCES, reading.missing)
        return _more_expected(
            CompletionRule.PACS_COUNTS, give_up, now, missing, f"the PACS holds {reading.missing} more instance(s)"
        )
    return None


def _by_quiet(ev: StudyEvidence, rule: SourceRule, now: float) -> CompletionDecision:
    """The quiet period, last."""
    end = ev.study.last_instance_at + rule.quiet_period_s
    if now >= end:
        return _complete(CompletionRule.QUIET_PERIOD, now, f"nothing arrived for {rule.quiet_period_s:g} s")
    return CompletionDecision(
        Outcome.WAIT, None, end, CompletionRule.QUIET_PERIOD, reason=f"quiet period of {rule.quiet_period_s:g} s"
    )


def decide(evidence: StudyEvidence, policy: CompletenessPolicy, now: float) -> CompletionDecision:
    """Decide whether a receiving study is complete, on the strongest evidence present.

    Args:
        evidence: What is known of the study.
        policy: The completion rules per sender.
        now: The current time (from the injected clock).

    Returns:
        Complete (with the rule) / wait until ``not_before`` / more expected. When
        ``query_pacs`` is set (also on a quiet-period completion), a count answer could change
        the decision: ask the PACS, record the answer (``None`` if it cannot be reached) and
        decide again before acting on it.
    """
    study = evidence.study
    rule = policy.rule_for(study.calling_ae, study.modalities, evidence.standing)
    give_up = study.last_instance_at + rule.max_wait_s
    for judged in (
        _by_steps(evidence, rule, now, give_up),
        _by_notices(evidence, rule, now, give_up),
        _by_order(evidence, rule, now),
    ):
        if judged is not None:
            return judged
    decision = _by_counts(evidence, rule, now, give_up) or _by_quiet(evidence, rule, now)
    if decision.complete and decision.incomplete is None and _steps_verdict(evidence, rule).discontinued:
        decision = replace(decision, incomplete=Incompleteness(IncompleteReason.DISCONTINUED))
    return replace(decision, query_pacs=count_query_due(evidence, policy, now))


def count_query_due(evidence: StudyEvidence, policy: CompletenessPolicy, now: float) -> bool:
    """Whether to ask the PACS for the study's counts now (bounded; module docstring)."""
    study = evidence.study
    rule = policy.rule_for(study.calling_ae, study.modalities, evidence.standing)
    if rule.completion != "pacs_counts":
        return False
    if not evidence.counts:
        return True
    latest = evidence.counts[-1]
    if dict(latest.received_then) != dict(study.received):  # arrivals since the last answer
        lull = now - study.last_instance_at >= min(policy.cfg.lull_s, rule.quiet_period_s)
        if lull or now - latest.asked_at >= policy.requery_s:
            return True
        return (
            latest.counts is not None
            and judge(study.received, latest.counts, evidence.own_series, rule.count_scope) is Verdict.MATCH
        )
    reading = read_counts(
        evidence.counts, study.received, study.last_instance_at, evidence.own_series, rule.count_scope, rule.settle_s
    )
    return reading.state is CountsState.UNSETTLED and now >= reading.settles_at


@dataclass(frozen=True, slots=True)
class TimerDecision:
    """What to do with a receiving job whose quiet period ran out (``EvidenceTracker``).

    Attributes:
        complete: Declare the study complete now.
        rule: Why (when ``complete``).
        not_before: Otherwise, when to look again.
        verdict: The latest PACS answer against what we hold.
    """

    complete: bool
    rule: CompletionRule | None
    not_before: float
    verdict: Verdict


_KEEP = 16
"""Count answers kept per study (only a run of identical answers matters)."""


class EvidenceTracker:
    """Keeps the PACS count answers per study and decides with ``decide`` (counts only).

    Not thread-safe: the owner serialises calls.
    """

    def __init__(self, policy: CompletenessPolicy) -> None:
        """Args:
        policy: Completion rules per sender.
        """
        self.policy = policy
        self.queries = 0
        self._answers: dict[str, list[CountObservation]] = {}

    def observations(self, study_uid: str) -> tuple[CountObservation, ...]:
        """The count answers kept for a study, oldest first."""
        return tuple(self._answers.get(study_uid, ()))

    def _evidence(self, study: ReceivingStudy, own: Iterable[str]) -> StudyEvidence:
        return StudyEvidence(study, frozenset(own), counts=self.observations(study.study_uid))

    def wants_query(self, study: ReceivingStudy, now: float, own: Iterable[str] = ()) -> bool:
        """Whether to ask the PACS about ``study`` now (``count_query_due``)."""
        return count_query_due(self._evidence(study, own), self.policy, now)

    def record(
        self,
        study: ReceivingStudy,
        counts: PacsCounts | None,
        asked_at: float,
        received_then: Mapping[str, int] | None = None,
    ) -> None:
        """Store the PACS's answer (``None`` when it could not be reached).

        Args:
            study: The study as it was when the query was sent.
            counts: The answer.
            asked_at: When the query was sent.
            received_then: Our counts when the query was sent (default: ``study.received``).
        """
        held = dict(study.received if received_then is None else received_then)
        kept = self._answers.setdefault(study.study_uid, [])
        kept.append(CountObservation(asked_at, counts, held))
        del kept[:-_KEEP]
        self.queries += 1

    def verdict(self, study: ReceivingStudy, own: Iterable[str] = ()) -> tuple[Verdict, bool]:
        """Return the latest answer's verdict and whether it is fresh (no arrival since)."""
        kept = self._answers.get(study.study_uid)
        if not kept or kept[-1].counts is None:
            return Verdict.CANNOT_TELL, bool(kept)
        rule = self.policy.rule_for(study.calling_ae)
        fresh = dict(kept[-1].received_then) == dict(study.received)
        return judge(study.received, kept[-1].counts, own, rule.count_scope), fresh

    def complete_now(self, study: ReceivingStudy, own: Iterable[str] = ()) -> bool:
        """Whether the counts settled (matched, unchanged, no arrival, across ``settle_s``)."""
        rule = self.policy.rule_for(study.calling_ae, study.modalities)
        if rule.completion != "pacs_counts":
            return False
        reading = read_counts(
            self.observations(study.study_uid),
            study.received,
            study.last_instance_at,
            own,
            rule.count_scope,
            rule.settle_s,
        )
        return reading.state is CountsState.SETTLED

    def on_quiet_timer(self, study: ReceivingStudy, now: float, own: Iterable[str] = ()) -> TimerDecision:
        """Decide for a job whose quiet period ran out (query first if ``wants_query``)."""
        decision = decide(self._evidence(study, own), self.policy, now)
        return TimerDecision(decision.complete, decision.rule, decision.not_before, self.verdict(study, own)[0])

    def answer_of(self, study_uid: str) -> PacsCounts | None:
        """The latest PACS answer of a study, if any."""
        kept = self._answers.get(study_uid)
        return kept[-1].counts if kept else None

    def forget_except(self, study_uids: Iterable[str]) -> None:
        """Drop the answers of studies no longer receiving."""
        keep = set(study_uids)
        for uid in [u for u in self._answers if u not in keep]:
            del self._answers[uid]
