"""An alert policy compiled into SQL over ``alert_items a`` (the worklist's WHERE clause).

``policy_sql`` mirrors ``core.alert_policy.RolePolicy.shows`` rule for rule. It only narrows
the rows a query fetches: callers pass what they return through ``AlertPolicy.filter`` itself,
and a property test on both backends checks that the clause selects exactly what the filter
keeps (``tests/integration/test_ledger_clinical.py``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from core.alert_policy import AlertPolicy, PriorityRule, RolePolicy
from core.clinical import QUALITY_FAMILY
from state.db import marks

__all__ = ["ALERT_FAMILY", "policy_sql"]

ALERT_FAMILY = f"(CASE WHEN a.quality_flag = 1 THEN '{QUALITY_FAMILY}' ELSE a.family END)"
"""An item's family as the policy judges it (image-quality flags: ``quality``)."""


def _in(column: str, values: Sequence[str], args: list[object]) -> str:
    if not values:
        return "1 = 0"
    args.extend(values)
    return f"{column} IN ({marks(len(values))})"


def _rule_sql(rule: PriorityRule, args: list[object]) -> str:
    parts = []
    if rule.families:
        parts.append(_in(ALERT_FAMILY, rule.families, args))
    if rule.findings:
        parts.append(_in("a.finding", rule.findings, args))
    if rule.order_priorities:
        parts.append(_in("a.order_priority", list(rule.order_priorities), args))
    parts.append("a.probability >= ?")
    args.append(rule.min_probability)
    return "(" + " AND ".join(parts) + ")"


def _role_sql(role: RolePolicy, rules: Mapping[str, PriorityRule], args: list[object]) -> str:
    parts = ["a.present = 1"]
    if role.exclude_families:
        parts.append("NOT " + _in(ALERT_FAMILY, role.exclude_families, args))
    if role.exclude_findings:
        parts.append("NOT " + _in("a.finding", role.exclude_findings, args))
    if role.families != "*":
        parts.append(_in(ALERT_FAMILY, role.families, args))
    if role.findings != "*":
        parts.append(_in("a.finding", role.findings, args))
    if role.quality_flags_only:
        parts.append("a.quality_flag = 1")
    else:
        flags = "a.quality_flag = 1" if role.quality_flags else "1 = 0"
        if role.critical_only:
            shown = _in("a.finding", role.critical_findings, args) if role.critical_findings else "a.critical = 1"
        else:
            args.append(role.min_probability)
            shown = " OR ".join(["a.probability >= ?", *(_rule_sql(rules[n], args) for n in role.priority_rules)])
        parts.append(f"({flags} OR (a.quality_flag = 0 AND ({shown})))")
    return "(" + " AND ".join(parts) + ")"


def policy_sql(policy: AlertPolicy | None, roles: Iterable[str]) -> tuple[str, list[object]]:
    """The WHERE clause (over ``alert_items a``) of the items a holder of ``roles`` may see.

    ``None`` for the policy: every alert (present findings and flags), the operators' view. The
    clause mirrors ``RolePolicy.shows``; callers still filter what they return with the policy.

    >>> policy_sql(None, [])
    ('a.present = 1', [])
    """
    if policy is None:
        return "a.present = 1", []
    args: list[object] = []
    held = sorted(r for r in set(roles) if r in policy.roles)
    if not held:
        return "1 = 0", []
    return "(" + " OR ".join(_role_sql(policy.roles[r], policy.priority_rules, args) for r in held) + ")", args
