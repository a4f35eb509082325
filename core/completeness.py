"""Study completeness on evidence: the PACS's instance counts, else the quiet period.

Every peer closes a study after silence (mercure 60 s / 900 s, Orthanc StableAge 60 s, XNAT
5 min; ``shared/reference/peers.md`` section 2). We ask the PACS instead: a Study Root C-FIND
answers Number of Study Related Instances (0020,1208) at STUDY level and Number of Series Related
Instances (0020,1209) at SERIES level (PS3.4 C.6.2.1.2, optional return keys; Orthanc answers
both). The rules, per sender (calling AE title; ``AssemblyConfig.sources``):

- ``pacs_counts``: complete at once when the PACS's counts equal what we hold, where the answer
  was given after our last instance arrived (the counts we held when asking equal those we hold
  now). The PACS holding *more* than we do stops the quiet period from completing the study:
  the rest is awaited up to ``max_wait_s`` after the last instance. Where the PACS cannot tell
  (it does not know the study, holds fewer than we do, omits the counts, or cannot be reached),
  the quiet period decides.
- ``quiet_period``: complete once nothing arrived for the sender's quiet period.

Our own result series (SRs we stored into the study) are left out of the PACS's counts.

Querying is bounded: one answer is cached per study, with the counts we held when asking. A
study is queried again only when our counts just reached that answer (a confirming query),
or when ``requery_s`` has passed since the last query.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from core.config import AssemblyConfig

__all__ = [
    "CompletenessPolicy",
    "CompletionRule",
    "EvidenceTracker",
    "PacsCounts",
    "ReceivingStudy",
    "SourceRule",
    "TimerDecision",
    "Verdict",
    "judge",
]


class CompletionRule(enum.StrEnum):
    """Which rule declared a study complete (recorded in the STUDY_COMPLETE audit event)."""

    PACS_COUNTS = "pacs_counts"
    """The PACS's instance counts equal what we received."""
    QUIET_PERIOD = "quiet_period"
    """Nothing arrived for the quiet period, and the PACS could not tell (or was not asked)."""
    MAX_WAIT = "max_wait"
    """The PACS holds more than we received, but nothing arrived for ``max_wait_s``."""


class Verdict(enum.StrEnum):
    """What one PACS answer says about the instances we hold."""

    MATCH = "match"
    """The counts equal ours."""
    MORE_EXPECTED = "more_expected"
    """The PACS holds instances we do not have (yet)."""
    CANNOT_TELL = "cannot_tell"
    """Unknown study, missing counts, the PACS holds fewer than we do, or it was unreachable."""


@dataclass(frozen=True, slots=True)
class PacsCounts:
    """The PACS's answer for one study.

    Attributes:
        known: Whether the PACS has the study at all.
        study_count: Number of Study Related Instances, if answered.
        series: Number of Series Related Instances by Series Instance UID (``None``: the PACS
            listed the series without a count).
    """

    known: bool
    study_count: int | None = None
    series: Mapping[str, int | None] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ReceivingStudy:
    """What the ledger holds for a study whose job is still receiving.

    Attributes:
        job_id: The receiving job.
        study_uid: Study Instance UID.
        calling_ae: Calling AE title of the sender of the latest instance.
        last_instance_at: When the latest instance arrived.
        received: Instances we hold in the whole study, by Series Instance UID.
    """

    job_id: int
    study_uid: str
    calling_ae: str
    last_instance_at: float
    received: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class SourceRule:
    """The completion rule of one sender."""

    completion: str
    quiet_period_s: float
    count_scope: str


@dataclass(frozen=True, slots=True)
class TimerDecision:
    """What to do with a receiving job whose quiet period ran out.

    Attributes:
        complete: Declare the study complete now.
        rule: Why (when ``complete``).
        not_before: Otherwise, when to look again.
        verdict: The PACS evidence behind the decision.
    """

    complete: bool
    rule: CompletionRule | None
    not_before: float
    verdict: Verdict


def judge(
    received: Mapping[str, int], counts: PacsCounts, own_series: Iterable[str], scope: str
) -> Verdict:
    """Compare what we hold with one PACS answer.

    Args:
        received: Instances we hold, by series.
        counts: The PACS's answer.
        own_series: Series we wrote into the study ourselves (AI results); not counted.
        scope: ``"study"`` (every series the PACS holds) or ``"series"`` (only ours).

    Returns:
        The verdict.

    >>> judge({"s1": 2}, PacsCounts(True, 2, {"s1": 2}), (), "study")
    <Verdict.MATCH: 'match'>
    >>> judge({"s1": 1}, PacsCounts(True, 2, {"s1": 2}), (), "study")
    <Verdict.MORE_EXPECTED: 'more_expected'>
    """
    if not counts.known:
        return Verdict.CANNOT_TELL
    own = set(own_series)
    pacs = {s: n for s, n in counts.series.items() if s not in own}
    if scope == "series":
        pacs = {s: pacs.get(s) for s in received}
    elif not pacs:
        return _judge_total(received, counts.study_count)
    if any(n is None for n in pacs.values()) or set(received) - set(pacs):
        return Verdict.CANNOT_TELL
    expected = {s: int(n or 0) for s, n in pacs.items()}
    if any(received.get(s, 0) > n for s, n in expected.items()):
        return Verdict.CANNOT_TELL
    if all(received.get(s, 0) == n for s, n in expected.items()):
        return Verdict.MATCH
    return Verdict.MORE_EXPECTED


def _judge_total(received: Mapping[str, int], study_count: int | None) -> Verdict:
    """Judge on the study count alone (the PACS listed no series)."""
    total = sum(received.values())
    if study_count is None or study_count < total:
        return Verdict.CANNOT_TELL
    return Verdict.MATCH if study_count == total else Verdict.MORE_EXPECTED


class CompletenessPolicy:
    """The completion rules of every sender, from ``AssemblyConfig``."""

    def __init__(self, cfg: AssemblyConfig) -> None:
        """Args:
        cfg: The assembly config slice.
        """
        self.cfg = cfg

    @property
    def max_wait_s(self) -> float:
        """Longest wait for instances the PACS holds and we do not."""
        return self.cfg.max_wait_s

    @property
    def requery_s(self) -> float:
        """Least seconds between count queries of one study."""
        return self.cfg.requery_s

    def rule_for(self, calling_ae: str) -> SourceRule:
        """Return the rule for a sender (the default rule if it is not listed).

        >>> CompletenessPolicy(AssemblyConfig(quiet_period_s=3)).rule_for("CT1").quiet_period_s
        3.0
        """
        src = self.cfg.sources.get(calling_ae.strip())
        return SourceRule(
            completion=src.completion if src else self.cfg.completion,
            quiet_period_s=(
                src.quiet_period_s
                if src is not None and src.quiet_period_s is not None
                else self.cfg.quiet_period_s
            ),
            count_scope=(src.count_scope if src and src.count_scope else self.cfg.count_scope),
        )

    def quiet_period_for(self, calling_ae: str) -> float:
        """The quiet period of a sender."""
        return self.rule_for(calling_ae).quiet_period_s

    def uses_pacs(self, calling_ae: str) -> bool:
        """Whether a sender's studies are completed on PACS counts."""
        return self.rule_for(calling_ae).completion == "pacs_counts"


@dataclass(frozen=True, slots=True)
class _Answer:
    counts: PacsCounts | None
    """``None``: the query failed (PACS unreachable)."""
    asked_at: float
    received_then: Mapping[str, int]


class EvidenceTracker:
    """Caches the PACS's answer per study and decides when to ask and when to complete.

    Not thread-safe: the owner serialises calls.
    """

    def __init__(self, policy: CompletenessPolicy) -> None:
        """Args:
        policy: Completion rules per sender.
        """
        self.policy = policy
        self._answers: dict[str, _Answer] = {}
        self.queries = 0

    def wants_query(self, study: ReceivingStudy, now: float, own: Iterable[str] = ()) -> bool:
        """Whether to ask the PACS about ``study`` now (bounded: see the module docstring)."""
        rule = self.policy.rule_for(study.calling_ae)
        if rule.completion != "pacs_counts":
            return False
        answer = self._answers.get(study.study_uid)
        if answer is None:
            return True
        if dict(answer.received_then) == dict(study.received):
            return False
        due = now - answer.asked_at >= self.policy.requery_s
        if answer.counts is None:
            return due
        verdict = judge(study.received, answer.counts, own, rule.count_scope)
        return verdict is Verdict.MATCH or due

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
        self._answers[study.study_uid] = _Answer(counts, asked_at, held)
        self.queries += 1

    def verdict(self, study: ReceivingStudy, own: Iterable[str] = ()) -> tuple[Verdict, bool]:
        """Return the cached verdict and whether it is fresh (answered after our last instance)."""
        answer = self._answers.get(study.study_uid)
        if answer is None or answer.counts is None:
            return Verdict.CANNOT_TELL, answer is not None
        rule = self.policy.rule_for(study.calling_ae)
        fresh = dict(answer.received_then) == dict(study.received)
        return judge(study.received, answer.counts, own, rule.count_scope), fresh

    def complete_now(self, study: ReceivingStudy, own: Iterable[str] = ()) -> bool:
        """Whether a fresh PACS answer matches what we hold (complete before any timer)."""
        if self.policy.rule_for(study.calling_ae).completion != "pacs_counts":
            return False
        verdict, fresh = self.verdict(study, own)
        return fresh and verdict is Verdict.MATCH

    def on_quiet_timer(
        self, study: ReceivingStudy, now: float, own: Iterable[str] = ()
    ) -> TimerDecision:
        """Decide for a job whose quiet period ran out (query first if ``wants_query``)."""
        rule = self.policy.rule_for(study.calling_ae)
        quiet_end = study.last_instance_at + rule.quiet_period_s
        if now < quiet_end:
            return TimerDecision(False, None, quiet_end, Verdict.CANNOT_TELL)
        if rule.completion != "pacs_counts":
            return TimerDecision(True, CompletionRule.QUIET_PERIOD, now, Verdict.CANNOT_TELL)
        verdict, fresh = self.verdict(study, own)
        if verdict is Verdict.MATCH and fresh:
            return TimerDecision(True, CompletionRule.PACS_COUNTS, now, verdict)
        if verdict is Verdict.MORE_EXPECTED:
            give_up = study.last_instance_at + self.policy.max_wait_s
            if now >= give_up:
                return TimerDecision(True, CompletionRule.MAX_WAIT, now, verdict)
            return TimerDecision(False, None, give_up, verdict)
        return TimerDecision(True, CompletionRule.QUIET_PERIOD, now, verdict)

    def answer_of(self, study_uid: str) -> PacsCounts | None:
        """The cached PACS answer of a study, if any."""
        answer = self._answers.get(study_uid)
        return answer.counts if answer else None

    def forget_except(self, study_uids: Iterable[str]) -> None:
        """Drop cached answers of studies no longer receiving."""
        keep = set(study_uids)
        for uid in [u for u in self._answers if u not in keep]:
            del self._answers[uid]
