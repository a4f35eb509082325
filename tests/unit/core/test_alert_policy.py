"""The role policy (core.alert_policy): each role sees only what it should (issue 12)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from core.alert_policy import AlertItem, AlertPolicy, parse_policy, policy_changes, policy_problems
from core.config import parse_config
from core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "configs" / "roles.example.yaml"
QUALITY = ["motion_artefact", "incomplete_series"]


def _example() -> AlertPolicy:
    return parse_policy(yaml.safe_load(EXAMPLE.read_text()), str(EXAMPLE))


def _item(family: str, key: str, p: float, critical: bool = False, **kw) -> AlertItem:
    return AlertItem(family, key, p, present=kw.pop("present", True), critical=critical, **kw)


def test_the_shipped_policy_names_only_families_and_findings_the_shipped_models_have() -> None:
    cfg = parse_config(yaml.safe_load((ROOT / "configs" / "default.yaml").read_text()))
    families = {f: [s.key for s in e.findings] for f, e in cfg.models.items()} | {"quality": QUALITY}
    assert policy_problems(_example(), families) == []
    assert policy_problems(_example(), {"chest_xray": ["pneumothorax"]})  # a typo would be named


# (item, roles that see it) for the five shipped roles
BLEED_LOW = _item("head_ct_haemorrhage", "subdural", 0.55, critical=True)
BLEED_MID = _item("head_ct_haemorrhage", "subdural", 0.75, critical=True)
NODULE = _item("chest_xray", "nodule", 0.80)
NODULE_SURE = _item("chest_xray", "nodule", 0.95)
NODULE_STAT = _item("chest_xray", "nodule", 0.60, order_priority="stat")
TENSION = _item("chest_xray", "tension_pneumothorax", 0.45)  # critical for the ER by name
TUMOUR = _item("brain_mri_tumour", "brain_tumour", 0.99)
MOTION = _item("quality", "motion_artefact", 1.0, quality_flag=True)
ABSENT = _item("chest_xray", "pneumothorax", 0.10, critical=True, present=False)
CASES = [
    (BLEED_LOW, {"chief_radiologist", "er_attending"}),
    (BLEED_MID, {"chief_radiologist", "er_attending", "junior_radiologist"}),
    (NODULE, {"chief_radiologist", "chest_radiologist"}),
    (NODULE_SURE, {"chief_radiologist", "chest_radiologist", "junior_radiologist"}),
    (_item("chest_xray", "nodule", 0.92), {"chief_radiologist", "chest_radiologist", "junior_radiologist"}),
    (NODULE_STAT, {"chief_radiologist", "chest_radiologist", "junior_radiologist"}),
    (TENSION, {"chief_radiologist", "chest_radiologist", "er_attending"}),
    (TUMOUR, {"chief_radiologist", "junior_radiologist"}),
    (MOTION, {"chief_radiologist", "technologist", "junior_radiologist", "chest_radiologist"}),
    (ABSENT, set()),
]


@pytest.mark.parametrize(("item", "seen_by"), CASES, ids=[f"{i.key}-{i.probability}" for i, _ in CASES])
def test_each_shipped_role_sees_exactly_what_it_should(item: AlertItem, seen_by: set[str]) -> None:
    policy = _example()
    assert {role for role in policy.roles if policy.visible([role], item)} == seen_by


def test_users_get_roles_from_the_file_and_from_their_tokens_claim() -> None:
    policy = _example()
    assert policy.roles_of("dr-chest") == {"chest_radiologist", "junior_radiologist"}
    assert policy.roles_of("someone", {"groups": ["emergency-physicians", "unknown-group"]}) == {"er_attending"}
    assert policy.roles_of("someone", {"groups": "technologist"}) == {"technologist"}  # a role by its own name
    assert policy.roles_of("nobody") == frozenset()
    assert policy.filter(policy.roles_of("nobody"), [NODULE_SURE, BLEED_MID]) == []


def test_critical_findings_are_pushed_only_to_roles_that_may_see_them() -> None:
    policy = _example()
    assert policy.push_roles(BLEED_LOW) == ["chief_radiologist", "er_attending"]
    assert policy.push_roles(NODULE_SURE) == []  # not critical: shown, never pushed
    assert policy.push_roles(MOTION) == []


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        ({"roles": {"a": {"min_probability": 2}}}, "roles.a.min_probability"),
        ({"roles": {"a": {"colour": "red"}}}, "roles.a.colour"),
        ({"roles": {"a": {"webhook": "http://pager.example/x"}}}, "roles.a.webhook"),
        ({"roles": {"a": {"priority_rules": ["nope"]}}}, "roles.a.priority_rules"),
        ({"roles": {"a": {}}, "users": {"u": ["b"]}}, "users.u"),
        ({"roles": {"a": {"critical_only": True, "quality_flags_only": True}}}, "critical_only"),
        ({}, "roles"),
    ],
)
def test_a_bad_policy_is_refused_naming_the_field(raw: dict, named: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_policy(raw, "roles.yaml")
    assert named in str(err.value)


def test_a_reload_says_what_changed_for_its_audit_event() -> None:
    old = _example()
    raw = yaml.safe_load(EXAMPLE.read_text())
    raw["roles"]["junior_radiologist"]["min_probability"] = 0.9
    del raw["roles"]["technologist"]
    raw["users"] = {k: v for k, v in raw["users"].items() if "technologist" not in v}
    del raw["oidc"]["values"]["ct-technologists"]
    raw["roles"]["fellow"] = {"min_probability": 0.8}
    changes = policy_changes(old, parse_policy(raw))
    assert changes == [
        "roles.fellow added",
        "roles.technologist removed",
        "roles.junior_radiologist changed",
        "users.tech-1 removed",
        "oidc changed",
    ]
    assert policy_changes(old, old) == []


# ---- for random policies, users and findings: nothing outside the caller's policy ----

FAMILIES = ["chest_xray", "head_ct_haemorrhage", "quality"]
KEYS = ["nodule", "subdural", "pneumothorax", "motion_artefact"]
probs = st.floats(0.0, 1.0, allow_nan=False)
subset = st.lists(st.sampled_from(FAMILIES), max_size=2, unique=True)
keys = st.lists(st.sampled_from(KEYS), max_size=2, unique=True)
rules = st.fixed_dictionaries(
    {"families": subset, "findings": keys, "order_priorities": st.lists(st.sampled_from(["stat", "asap"]), max_size=1)},
    optional={"min_probability": probs},
)


@st.composite
def roles(draw: st.DrawFn) -> dict:
    mode = draw(st.sampled_from(["plain", "critical_only", "quality_flags_only"]))
    spec = {
        "families": draw(st.one_of(st.just("*"), subset)),
        "exclude_families": draw(subset),
        "findings": draw(st.one_of(st.just("*"), keys)),
        "exclude_findings": draw(keys),
        "min_probability": draw(probs),
        "quality_flags": draw(st.booleans()),
        "critical_findings": draw(keys),
        "priority_rules": draw(st.lists(st.sampled_from(["r1", "r2"]), max_size=2, unique=True)),
    }
    if mode != "plain":
        spec[mode] = True
    return spec


items = st.builds(
    AlertItem,
    family=st.sampled_from(FAMILIES),
    key=st.sampled_from(KEYS),
    probability=probs,
    present=st.booleans(),
    critical=st.booleans(),
    quality_flag=st.booleans(),
    order_priority=st.sampled_from([None, "stat", "asap", "routine"]),
)


def _spec_allows(role: dict, rules: dict, item: AlertItem) -> bool:
    """The policy rules as the file documents them, written out again for the oracle."""
    if not item.present or item.family in role["exclude_families"] or item.key in role["exclude_findings"]:
        return False
    if role["families"] != "*" and item.family not in role["families"]:
        return False
    if role["findings"] != "*" and item.key not in role["findings"]:
        return False
    if item.quality_flag:
        return role["quality_flags"] or role.get("quality_flags_only", False)
    if role.get("quality_flags_only"):
        return False
    if role.get("critical_only"):
        return item.key in role["critical_findings"] if role["critical_findings"] else item.critical
    if item.probability >= role["min_probability"]:
        return True
    for name in role["priority_rules"]:
        r = rules[name]
        if (
            (not r["families"] or item.family in r["families"])
            and (not r["findings"] or item.key in r["findings"])
            and (not r["order_priorities"] or item.order_priority in r["order_priorities"])
            and item.probability >= r.get("min_probability", 0.0)
        ):
            return True
    return False


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), roles(), min_size=1, max_size=4),
    st.fixed_dictionaries({"r1": rules, "r2": rules}),
    st.lists(st.sampled_from(["a", "b", "c", "d", "ghost"]), min_size=1, max_size=2),
    st.lists(items, min_size=8, max_size=40),
)
def test_no_answer_or_push_carries_a_finding_outside_the_callers_policy(
    role_specs: dict, rule_specs: dict, held: list[str], found: list[AlertItem]
) -> None:
    policy = parse_policy({"roles": role_specs, "priority_rules": rule_specs})
    shown = policy.filter(held, found)
    expected = [i for i in found if any(r in role_specs and _spec_allows(role_specs[r], rule_specs, i) for r in held)]
    assert shown == expected
    for item in found:
        for role in policy.push_roles(item):
            assert _spec_allows(role_specs[role], rule_specs, item) and item.present and not item.quality_flag
