"""The completion rule of each sending AE, and how it tightens when a sender misleads it.

``CompletenessPolicy`` resolves, for one study, the rule of its sender (calling AE title):
``AssemblyConfig`` defaults, overridden per AE in ``assembly.sources``, with the quiet period of
the study's modality (CT and MR series stream slower than CR and DX), all stretched by the
sender's ``SenderStanding``.

A sender whose studies keep looking complete too early is moved to a stricter rule (issue 18).
When an instance arrives less than ``early_window_s`` after its study was completed on a
heuristic rule (PACS counts, the RIS order status or the quiet period), that rule completed it
early. After ``tighten_after`` such early completions the sender's strictness goes up by one:
its settle window, order settle and quiet period are multiplied by ``tighten_factor`` (up to
``max_settle_s``), and ``classify_arrival`` returns a ``SenderTightened`` for the audit trail.
MPPS and IAN completions never tighten a sender: an instance after those is a new step, not a
misleading count. The assembler keeps each sender's standing (``to_json`` / ``from_json``).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from core.config import AssemblyConfig

__all__ = [
    "ArrivalKind",
    "CompletedStudy",
    "CompletenessPolicy",
    "CompletionRule",
    "HEURISTIC_RULES",
    "LateArrival",
    "SenderStanding",
    "SenderTightened",
    "SourceRule",
]


class CompletionRule(enum.StrEnum):
    """Which rule declared a study complete (recorded in the STUDY_COMPLETE audit event)."""

    MPPS = "mpps"
    """Every procedure step naming the study is final and we hold every instance it lists."""
    IAN = "ian"
    """We hold every instance the PACS's Instance Availability Notifications list."""
    ORDER_STATUS = "order_status"
    """The RIS reported the order complete, and nothing arrived for the order settle time."""
    PACS_COUNTS = "pacs_counts"
    """The PACS's instance counts equal what we received, and held across the settle window."""
    QUIET_PERIOD = "quiet_period"
    """Nothing arrived for the quiet period, and no stronger evidence could tell."""
    MAX_WAIT = "max_wait"
    """Evidence said more was coming, but nothing arrived for ``max_wait_s``: partial."""


HEURISTIC_RULES = frozenset({CompletionRule.PACS_COUNTS, CompletionRule.ORDER_STATUS, CompletionRule.QUIET_PERIOD})
"""Rules that infer completeness; an instance soon after them shows they were early."""


@dataclass(frozen=True, slots=True)
class SourceRule:
    """The completion rule of one sender, for one study (see ``AssemblyConfig``).

    Attributes:
        completion: ``quiet_period`` or ``pacs_counts``.
        quiet_period_s: Quiet period (by modality, tightened).
        count_scope: ``study`` or ``series``.
        evidence: Pushed evidence trusted (``mpps``, ``ian``, ``order_status``).
        settle_s: PACS counts settle window (tightened).
        order_settle_s: Silence needed after the RIS reports the order complete (tightened).
        max_wait_s: Longest wait for instances evidence says are coming.
        strictness: How often the sender's rule was tightened.
    """

    completion: str
    quiet_period_s: float
    count_scope: str
    evidence: tuple[str, ...] = ()
    settle_s: float = 0.0
    order_settle_s: float = 0.0
    max_wait_s: float = 600.0
    strictness: int = 0


@dataclass(frozen=True, slots=True)
class SenderStanding:
    """How far one sending AE's rule was tightened (kept by the assembler, per AE).

    Attributes:
        calling_ae: The sender.
        strictness: Tightenings so far (0: the configured rule).
        early: Early completions counted since the last tightening.
    """

    calling_ae: str
    strictness: int = 0
    early: int = 0

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict (for the ledger)."""
        return {"calling_ae": self.calling_ae, "strictness": self.strictness, "early": self.early}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> SenderStanding:
        """Read what ``to_json`` wrote."""
        return cls(str(raw["calling_ae"]), int(raw.get("strictness", 0)), int(raw.get("early", 0)))


@dataclass(frozen=True, slots=True)
class CompletedStudy:
    """How a study was completed, as the assembler recorded it."""

    study_uid: str
    calling_ae: str
    rule: CompletionRule
    at: float


class ArrivalKind(enum.StrEnum):
    """What an instance arriving after its study was completed says about the rule."""

    EARLY = "early"
    """A heuristic rule completed the study less than ``early_window_s`` before: too early."""
    LATE = "late"
    """A genuinely late instance (or after MPPS / IAN / max_wait): a new version, no blame."""


@dataclass(frozen=True, slots=True)
class SenderTightened:
    """A sender moved to a stricter rule: the assembler turns this into an audit event.

    Attributes:
        calling_ae: The sender.
        study_uid: The study that was completed early.
        rule: The rule that completed it.
        after_s: Seconds between the completion and the instance that arrived.
        strictness: The sender's new strictness.
        settle_s: Its new PACS counts settle window.
        quiet_period_s: Its new quiet period (for a study of the same modalities).
    """

    calling_ae: str
    study_uid: str
    rule: CompletionRule
    after_s: float
    strictness: int
    settle_s: float
    quiet_period_s: float

    def audit_detail(self) -> dict[str, Any]:
        """The detail of the audit event (no identifiers beyond the AE title and UID)."""
        return {
            "calling_ae": self.calling_ae,
            "rule": str(self.rule),
            "after_s": round(self.after_s, 3),
            "strictness": self.strictness,
            "settle_s": self.settle_s,
            "quiet_period_s": self.quiet_period_s,
        }


@dataclass(frozen=True, slots=True)
class LateArrival:
    """The verdict on an instance that arrived after its study was completed.

    Attributes:
        kind: Early completion or genuinely late instance.
        standing: The sender's standing afterwards (store it).
        tightened: Set when this arrival tightened the sender's rule (audit it).
    """

    kind: ArrivalKind
    standing: SenderStanding
    tightened: SenderTightened | None = None


def _stretch(base: float, factor: float, cap: float) -> float:
    """A tightened duration: at least 1 s before stretching, never above ``cap`` or below ``base``."""
    if factor == 1.0:
        return base
    return max(base, min(max(base, 1.0) * factor, cap))


class CompletenessPolicy:
    """The completion rules of every sender, from ``AssemblyConfig``."""

    def __init__(self, cfg: AssemblyConfig) -> None:
        """Args:
        cfg: The assembly config slice.
        """
        self.cfg = cfg

    @property
    def max_wait_s(self) -> float:
        """Longest wait for instances the evidence says are coming."""
        return self.cfg.max_wait_s

    @property
    def requery_s(self) -> float:
        """Least seconds between count queries of one study."""
        return self.cfg.requery_s

    def rule_for(
        self, calling_ae: str, modalities: Iterable[str] = (), standing: SenderStanding | None = None
    ) -> SourceRule:
        """Return the rule for a sender's study (the default rule if it is not listed).

        >>> policy = CompletenessPolicy(AssemblyConfig(quiet_period_s=3))
        >>> policy.rule_for("CT1").quiet_period_s, policy.rule_for("CT1", ["CT", "SR"]).quiet_period_s
        (3.0, 10.0)
        >>> policy.rule_for("CT1", ["CT"], SenderStanding("CT1", strictness=1)).settle_s
        20.0
        """
        cfg, src = self.cfg, self.cfg.sources.get(calling_ae.strip())
        factor = cfg.tighten_factor ** (standing.strictness if standing else 0)
        cap = cfg.max_settle_s
        settle = src.settle_s if src is not None and src.settle_s is not None else cfg.settle_s
        quiet = self._quiet(src.quiet_period_s if src is not None else None, modalities)
        return SourceRule(
            completion=src.completion if src else cfg.completion,
            quiet_period_s=_stretch(quiet, factor, cap),
            count_scope=(src.count_scope if src and src.count_scope else cfg.count_scope),
            evidence=tuple(src.evidence if src is not None and src.evidence is not None else cfg.evidence),
            settle_s=_stretch(settle, factor, cap),
            order_settle_s=_stretch(cfg.order_settle_s, factor, cap),
            max_wait_s=cfg.max_wait_s,
            strictness=standing.strictness if standing else 0,
        )

    def _quiet(self, source_quiet: float | None, modalities: Iterable[str]) -> float:
        """The quiet period: the sender's, else the longest of the study's modalities, else the default."""
        if source_quiet is not None:
            return source_quiet
        known = [self.cfg.quiet_period_by_modality[m] for m in modalities if m in self.cfg.quiet_period_by_modality]
        return max(known) if known else self.cfg.quiet_period_s

    def quiet_period_for(self, calling_ae: str, modalities: Iterable[str] = ()) -> float:
        """The quiet period of a sender (for a study of ``modalities``)."""
        return self.rule_for(calling_ae, modalities).quiet_period_s

    def uses_pacs(self, calling_ae: str) -> bool:
        """Whether a sender's studies are completed on PACS counts."""
        return self.rule_for(calling_ae).completion == "pacs_counts"

    def classify_arrival(
        self,
        completed: CompletedStudy,
        arrived_at: float,
        standing: SenderStanding | None = None,
        modalities: Iterable[str] = (),
    ) -> LateArrival:
        """Judge an instance that arrived after its study was completed (module docstring).

        Args:
            completed: How the study was completed.
            arrived_at: When the instance arrived.
            standing: The sender's standing (``None``: never tightened).
            modalities: The study's modalities (for the new quiet period in the audit detail).

        Returns:
            Early or late, the sender's new standing, and the tightening if there was one.
        """
        before = standing or SenderStanding(completed.calling_ae.strip())
        after_s = arrived_at - completed.at
        if completed.rule not in HEURISTIC_RULES or after_s > self.cfg.early_window_s:
            return LateArrival(ArrivalKind.LATE, before)
        counted = replace(before, early=before.early + 1)
        if counted.early < self.cfg.tighten_after:
            return LateArrival(ArrivalKind.EARLY, counted)
        tighter = SenderStanding(before.calling_ae, before.strictness + 1, 0)
        rule = self.rule_for(completed.calling_ae, modalities, tighter)
        event = SenderTightened(
            before.calling_ae,
            completed.study_uid,
            completed.rule,
            after_s,
            tighter.strictness,
            rule.settle_s,
            rule.quiet_period_s,
        )
        return LateArrival(ArrivalKind.EARLY, tighter, event)
