"""Routing: which model family runs on which series of a study, or why none does.

Rules are evaluated per series, in order; the first rule whose every given criterion matches
wins. AI off-switches (per study, per modality) are checked first and take effect without a
restart, because the switch state is passed in with every decision.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from core.assembly import group_by_series
from core.config import RoutingConfig, RoutingRule
from core.records import ModelTask, Route
from core.types import InstanceMeta

__all__ = ["AiSwitches", "RouteDecision", "Router"]


@dataclass(frozen=True, slots=True)
class AiSwitches:
    """Runtime AI switches, as set by radiologists or operators.

    Attributes:
        studies_off: Study Instance UIDs for which AI is off.
        modalities: Modality -> enabled; overrides the configured default for that modality.
    """

    studies_off: frozenset[str] = frozenset()
    modalities: Mapping[str, bool] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """The router's answer for one job.

    Attributes:
        route: The tasks to run and why (what the job's record keeps).
        skipped: ``(sop_instance_uid, reason)`` for instances no task covers.
    """

    route: Route
    skipped: tuple[tuple[str, str], ...]

    @property
    def tasks(self) -> tuple[ModelTask, ...]:
        """The tasks (empty: the job is skipped)."""
        return self.route.tasks

    @property
    def reason(self) -> str:
        """Why, in words."""
        return self.route.reason

    @property
    def priority(self) -> int:
        """Priority floor from the matched rules."""
        return self.route.priority


class Router:
    """Chooses model families for a study's series."""

    def __init__(self, cfg: RoutingConfig, available_families: Iterable[str]) -> None:
        """Build the router.

        Args:
            cfg: Rules and configured AI-off modalities.
            available_families: Families in the model registry.
        """
        self._rules = tuple(cfg.rules)
        self._patterns = {
            r.name: re.compile(r.series_description, re.IGNORECASE)
            for r in self._rules
            if r.series_description is not None
        }
        self._disabled = frozenset(m.upper() for m in cfg.ai_disabled_modalities)
        self._families = frozenset(available_families)

    @property
    def families(self) -> frozenset[str]:
        """The families in the model registry."""
        return self._families

    def ai_enabled_for_modality(self, modality: str, switches: AiSwitches) -> bool:
        """Whether AI is on for a modality: runtime switch first, then config."""
        mod = modality.upper()
        if mod in switches.modalities:
            return switches.modalities[mod]
        return mod not in self._disabled

    def match(self, sample: InstanceMeta) -> RoutingRule | None:
        """Return the first rule matching a series (represented by one of its instances)."""
        for rule in self._rules:
            if self._matches(rule, sample):
                return rule
        return None

    def _matches(self, rule: RoutingRule, inst: InstanceMeta) -> bool:
        if rule.modalities and inst.modality.upper() not in {m.upper() for m in rule.modalities}:
            return False
        if rule.body_parts and inst.body_part.upper() not in {b.upper() for b in rule.body_parts}:
            return False
        if rule.sop_class_uids and inst.sop_class_uid not in rule.sop_class_uids:
            return False
        pattern = self._patterns.get(rule.name)
        return pattern is None or pattern.search(inst.series_description) is not None

    def decide(self, study_uid: str, instances: Iterable[InstanceMeta], switches: AiSwitches) -> RouteDecision:
        """Route one study.

        Args:
            study_uid: The study.
            instances: Its instances that passed validation.
            switches: Current AI switches.

        Returns:
            The tasks to run and the instances skipped, with reasons.
        """
        insts = list(instances)
        if study_uid in switches.studies_off:
            reason = "AI switched off for this study"
            return RouteDecision(Route((), reason), tuple((i.sop_instance_uid, reason) for i in insts))
        by_family: dict[str, list[str]] = {}
        skipped: list[tuple[str, str]] = []
        priority = 0
        for series_uid, members in group_by_series(insts).items():
            family, why_not = self._route_series(members[0], switches)
            rule = self.match(members[0])
            if family is not None and rule is not None:
                priority = max(priority, rule.priority)
            if family is None:
                why = f"series {series_uid}: {why_not}"
                skipped += [(m.sop_instance_uid, why) for m in members]
            else:
                by_family.setdefault(family, []).extend(m.sop_instance_uid for m in members)
        tasks = tuple(ModelTask(f, tuple(uids)) for f, uids in sorted(by_family.items()))
        if tasks:
            reason = "routed to " + ", ".join(t.family for t in tasks)
        else:
            reason = "; ".join(sorted({why for _, why in skipped})) or "no instances"
        return RouteDecision(Route(tasks, reason, priority), tuple(skipped))

    def _route_series(self, sample: InstanceMeta, switches: AiSwitches) -> tuple[str | None, str]:
        """Return ``(family, "")`` for a series, or ``(None, reason)`` to skip it."""
        if not self.ai_enabled_for_modality(sample.modality, switches):
            return None, f"AI switched off for modality {sample.modality or '(none)'}"
        rule = self.match(sample)
        if rule is None:
            return None, (
                f"no routing rule matched (modality={sample.modality!r}, "
                f"body part={sample.body_part!r}, SOP class={sample.sop_class_uid})"
            )
        if rule.family not in self._families:
            return None, f"rule {rule.name!r} names family {rule.family!r}, which is not deployed"
        return rule.family, ""
