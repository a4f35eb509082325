"""Who sees which AI result: the role policy (issue 12; alert fatigue is a patient-safety problem).

A site's policy file (``configs/roles.example.yaml``) defines roles; users map to one or more
roles (by name in the file, or from an OIDC token's claim). A user sees a result when *any* of
their roles may see it, and nothing else: every API answer, pushed event and webhook is cut
down by ``visible`` before it leaves, so a new surface cannot forget a rule.

What a role may see, in the order the rules apply:

1. Only *alerts*: findings a model reported present (probability at or above the finding's
   threshold) and image-quality flags. An absent finding alerts nobody.
2. ``families`` / ``exclude_families``, ``findings`` / ``exclude_findings``: which model
   families and finding keys the role is shown at all (a chest radiologist: no neuro).
3. ``quality_flags_only``: only image-quality flags (a technologist); ``quality_flags``: whether
   flags are shown beside findings.
4. ``critical_only``: only critical findings, at any probability (an ER attending); which
   findings are critical is the role's ``critical_findings`` where given, else the model
   registry's ``critical`` flag.
5. Otherwise a finding is shown when its probability reaches ``min_probability``, or when one of
   the institution's ``priority_rules`` the role names matches it (e.g. any present finding of
   a STAT order, or a haemorrhage above 0.7 for a junior radiologist whose floor is 0.92).

Pure: the policy is parsed from a mapping; loading the file, reloading it and auditing the
change happen in the API and actors.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from core.errors import ConfigError

__all__ = [
    "AlertItem",
    "AlertPolicy",
    "PriorityRule",
    "RolePolicy",
    "parse_policy",
    "policy_changes",
    "policy_problems",
]

KEY = r"^[a-z][a-z0-9_]*$"
OrderPriority = Literal["stat", "asap", "routine"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True, slots=True)
class AlertItem:
    """One finding or quality flag of a study, as the policy judges it.

    Attributes:
        family: The model family that produced it (``quality`` for image-quality flags).
        key: The finding or flag key.
        probability: The finding's probability (a flag's: 1.0).
        present: Whether the model reported it present (flags: always).
        critical: Whether the model registry marks it critical.
        quality_flag: An image-quality flag rather than a finding.
        order_priority: The order's priority (from HL7 / FHIR), if known.
    """

    family: str
    key: str
    probability: float
    present: bool = True
    critical: bool = False
    quality_flag: bool = False
    order_priority: OrderPriority | None = None


class PriorityRule(_Model):
    """An institutional rule that shows a finding below a role's probability floor."""

    families: list[str] = Field(default_factory=list, description="Model families it covers; empty: all")
    findings: list[str] = Field(default_factory=list, description="Finding keys it covers; empty: all")
    order_priorities: list[OrderPriority] = Field(
        default_factory=list, description="Order priorities it covers (stat, asap, routine); empty: all"
    )
    min_probability: float = Field(default=0.0, ge=0.0, le=1.0, description="Shown at or above this")

    def matches(self, item: AlertItem) -> bool:
        """Whether this rule covers ``item``."""
        return (
            (not self.families or item.family in self.families)
            and (not self.findings or item.key in self.findings)
            and (not self.order_priorities or item.order_priority in self.order_priorities)
            and item.probability >= self.min_probability
        )


class RolePolicy(_Model):
    """What one role is shown (see the module's rules 1-5)."""

    description: str = Field(default="", max_length=200, description="What the role is, in words")
    families: list[str] | Literal["*"] = Field(default="*", description="Model families shown; '*': all")
    exclude_families: list[str] = Field(default_factory=list, description="Model families never shown")
    findings: list[str] | Literal["*"] = Field(default="*", description="Finding keys shown; '*': all")
    exclude_findings: list[str] = Field(default_factory=list, description="Finding keys never shown")
    min_probability: float = Field(default=0.0, ge=0.0, le=1.0, description="Probability floor of a finding")
    critical_only: bool = Field(default=False, description="Only critical findings, at any probability")
    critical_findings: list[str] = Field(
        default_factory=list,
        description="Finding keys this role treats as critical; empty: the model registry's critical flag",
    )
    quality_flags: bool = Field(default=True, description="Image-quality flags are shown beside findings")
    quality_flags_only: bool = Field(default=False, description="Only image-quality flags")
    priority_rules: list[str] = Field(
        default_factory=list, description="Names of the policy's priority_rules that also show a finding"
    )
    push: bool = Field(default=True, description="Critical findings it may see are pushed (events, webhook)")
    webhook: str | None = Field(
        default=None, pattern=r"^https://\S+$", description="https URL paged with this role's critical findings"
    )

    @model_validator(mode="after")
    def _one_mode(self) -> RolePolicy:
        if self.critical_only and self.quality_flags_only:
            raise ValueError("critical_only and quality_flags_only: a role takes one of them")
        return self

    def _scoped(self, item: AlertItem) -> bool:
        if item.family in self.exclude_families or item.key in self.exclude_findings:
            return False
        if self.families != "*" and item.family not in self.families:
            return False
        return self.findings == "*" or item.key in self.findings

    def _critical(self, item: AlertItem) -> bool:
        return item.key in self.critical_findings if self.critical_findings else item.critical

    def shows(self, item: AlertItem, rules: Mapping[str, PriorityRule]) -> bool:
        """Whether this role may see ``item``."""
        if not item.present or not self._scoped(item):
            return False
        if item.quality_flag:
            return self.quality_flags or self.quality_flags_only
        if self.quality_flags_only:
            return False
        if self.critical_only:
            return self._critical(item)
        if item.probability >= self.min_probability:
            return True
        return any(rules[name].matches(item) for name in self.priority_rules)


class ClaimMapping(_Model):
    """How an OIDC token's claim names the user's roles."""

    claim: str = Field(default="roles", min_length=1, description="The claim holding role names or groups")
    values: dict[str, list[str]] = Field(
        default_factory=dict, description="Claim value -> roles; a value not listed names a role of that name"
    )


class AlertPolicy(_Model):
    """The whole policy file."""

    roles: dict[str, RolePolicy] = Field(description="Role name -> what it is shown")
    priority_rules: dict[str, PriorityRule] = Field(
        default_factory=dict, description="Institutional rules by name, used by roles' priority_rules"
    )
    users: dict[str, list[str]] = Field(default_factory=dict, description="User -> roles (token-store users)")
    oidc: ClaimMapping = Field(default_factory=ClaimMapping, description="Roles from an OIDC token's claim")

    @model_validator(mode="after")
    def _references(self) -> AlertPolicy:
        problems = [
            f"roles.{role}.priority_rules: got {name!r}; expected one of {sorted(self.priority_rules)}"
            for role, spec in self.roles.items()
            for name in spec.priority_rules
            if name not in self.priority_rules
        ]
        problems += [
            f"users.{user}: got role {role!r}; expected one of {sorted(self.roles)}"
            for user, roles in self.users.items()
            for role in roles
            if role not in self.roles
        ]
        problems += [
            f"oidc.values.{value}: got role {role!r}; expected one of {sorted(self.roles)}"
            for value, roles in self.oidc.values.items()
            for role in roles
            if role not in self.roles
        ]
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def roles_of(self, user: str, claims: Mapping[str, Any] | None = None) -> frozenset[str]:
        """The user's roles: those the file gives them, plus those their token's claim names."""
        found = set(self.users.get(user, ()))
        raw = (claims or {}).get(self.oidc.claim, ())
        for value in [raw] if isinstance(raw, str) else raw if isinstance(raw, list) else ():
            for role in self.oidc.values.get(str(value), [str(value)]):
                if role in self.roles:
                    found.add(role)
        return frozenset(found)

    def visible(self, roles: Iterable[str], item: AlertItem) -> bool:
        """Whether a holder of ``roles`` may see ``item`` (any role suffices; unknown roles none)."""
        return any(r in self.roles and self.roles[r].shows(item, self.priority_rules) for r in roles)

    def filter(self, roles: Iterable[str], items: Sequence[AlertItem]) -> list[AlertItem]:
        """The items a holder of ``roles`` may see, in their order."""
        held = [r for r in set(roles) if r in self.roles]
        return [i for i in items if self.visible(held, i)]

    def push_roles(self, item: AlertItem) -> list[str]:
        """Roles to push ``item`` to: critical findings, to each role that may see it and pushes."""
        if not item.critical or not item.present or item.quality_flag:
            return []
        return sorted(r for r, spec in self.roles.items() if spec.push and spec.shows(item, self.priority_rules))


def parse_policy(raw: Mapping[str, Any] | None, source: str = "<mapping>") -> AlertPolicy:
    """Validate a policy mapping (a YAML file's content).

    Raises:
        ConfigError: One problem per offending field, naming it.
    """
    try:
        return AlertPolicy.model_validate(raw or {})
    except ValidationError as exc:
        problems = []
        for e in exc.errors():
            where = ".".join(str(p) for p in e.get("loc", ())) or "<root>"
            problems.append(f"{where}: {e.get('msg', 'invalid')}")
        raise ConfigError(source, problems) from None


def policy_problems(policy: AlertPolicy, families: Mapping[str, Iterable[str]]) -> list[str]:
    """Names in the policy that no deployed model has (a typo would silently hide a finding).

    Args:
        policy: The parsed policy.
        families: Model family -> its finding keys (``quality`` -> the flag keys).
    """
    keys = {k for ks in families.values() for k in ks}
    problems = []
    for role, spec in policy.roles.items():
        named = {
            "families": [] if spec.families == "*" else spec.families,
            "exclude_families": spec.exclude_families,
        }
        for field, values in named.items():
            problems += [
                f"roles.{role}.{field}: got {v!r}; expected a model family" for v in values if v not in families
            ]
        listed = {"findings": [] if spec.findings == "*" else spec.findings}
        listed |= {"exclude_findings": spec.exclude_findings, "critical_findings": spec.critical_findings}
        for field, values in listed.items():
            problems += [f"roles.{role}.{field}: got {v!r}; expected a finding key" for v in values if v not in keys]
    for name, rule in policy.priority_rules.items():
        problems += [
            f"priority_rules.{name}.families: got {v!r}; expected a model family"
            for v in rule.families
            if v not in families
        ]
        problems += [
            f"priority_rules.{name}.findings: got {v!r}; expected a finding key" for v in rule.findings if v not in keys
        ]
    return problems


def policy_changes(old: AlertPolicy | None, new: AlertPolicy) -> list[str]:
    """What a reload changed, for its audit event: ``role X added/removed/changed``, and so on."""
    before = old.model_dump() if old is not None else {"roles": {}, "priority_rules": {}, "users": {}, "oidc": None}
    after = new.model_dump()
    changes = []
    for section in ("roles", "priority_rules", "users"):
        a, b = before[section], after[section]
        changes += [f"{section}.{k} added" for k in sorted(b.keys() - a.keys())]
        changes += [f"{section}.{k} removed" for k in sorted(a.keys() - b.keys())]
        changes += [f"{section}.{k} changed" for k in sorted(a.keys() & b.keys()) if a[k] != b[k]]
    if before["oidc"] != after["oidc"]:
        changes.append("oidc changed")
    return changes
