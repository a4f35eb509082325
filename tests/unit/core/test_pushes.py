"""Who gets a pushed critical finding, and how webhook attempts are judged (core.pushes)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.alert_policy import AlertItem, parse_policy
from core.pushes import (
    BACKOFF_MAX_S,
    PushItem,
    PushVerdict,
    classify,
    event_allowed,
    is_dead,
    next_attempt_at,
    push_payload,
    webhook_targets,
)
from tests.unit.core.test_alert_policy import _spec_allows, items, roles, rules


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (200, PushVerdict.DELIVERED),
        (202, PushVerdict.DELIVERED),
        (299, PushVerdict.DELIVERED),
        (None, PushVerdict.RETRY),
        (408, PushVerdict.RETRY),
        (429, PushVerdict.RETRY),
        (500, PushVerdict.RETRY),
        (503, PushVerdict.RETRY),
        (301, PushVerdict.REFUSED),
        (400, PushVerdict.REFUSED),
        (401, PushVerdict.REFUSED),
        (404, PushVerdict.REFUSED),
        (410, PushVerdict.REFUSED),
    ],
)
def test_each_answer_is_delivered_retried_or_refused(status: int | None, verdict: PushVerdict) -> None:
    assert classify(status) is verdict


def test_backoff_doubles_from_the_first_delay_up_to_five_minutes() -> None:
    waits = [next_attempt_at(n, 1000.0, 1.5) - 1000.0 for n in range(1, 12)]
    assert waits[:4] == [1.5, 3.0, 6.0, 12.0]
    assert waits == sorted(waits) and max(waits) == BACKOFF_MAX_S
    assert next_attempt_at(10_000, 0.0, 1.0) == BACKOFF_MAX_S  # no overflow however long it fails


def test_only_refusals_die_and_only_at_max_attempts() -> None:
    assert not is_dead(PushVerdict.REFUSED, 2, 3)
    assert is_dead(PushVerdict.REFUSED, 3, 3)
    assert not is_dead(PushVerdict.RETRY, 1000, 3)  # a paging system that is down gets it later
    assert not is_dead(PushVerdict.DELIVERED, 3, 3)


def test_a_webhook_body_names_the_finding_and_the_role_and_nothing_more() -> None:
    item = PushItem(9, "1.2.9", "1.2.3", AlertItem("chest_xray", "pneumothorax", 0.973456, critical=True), 5.0)
    assert push_payload(item, "er") == {
        "item_id": 9,
        "study_uid": "1.2.3",
        "sr_uid": "1.2.9",
        "family": "chest_xray",
        "finding": "pneumothorax",
        "probability": 0.9735,
        "created_at": 5.0,
        "role": "er",
    }


def test_a_role_without_push_or_webhook_is_not_paged() -> None:
    policy = parse_policy(
        {
            "roles": {
                "er": {"critical_only": True, "webhook": "https://pager.example/er"},
                "chief": {},
                "quiet": {"push": False, "webhook": "https://pager.example/quiet"},
            }
        }
    )
    bleed = AlertItem("head_ct_haemorrhage", "subdural", 0.2, critical=True)
    assert webhook_targets(policy, bleed) == ["er"]
    assert event_allowed(policy, {"chief"}, bleed)  # no webhook, but the page gets the event
    assert policy.visible({"quiet"}, bleed) and not event_allowed(policy, {"quiet"}, bleed)  # sees, no push
    assert not event_allowed(policy, set(), bleed)
    assert webhook_targets(policy, AlertItem("head_ct_haemorrhage", "subdural", 0.9, critical=False)) == []


@settings(max_examples=50, deadline=None)
@given(
    st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), roles(), min_size=1, max_size=4),
    st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), st.booleans()),
    st.fixed_dictionaries({"r1": rules, "r2": rules}),
    st.lists(st.sampled_from(["a", "b", "c", "d", "ghost"]), max_size=3),
    st.lists(items, min_size=5, max_size=30),
)
def test_no_event_or_webhook_carries_a_finding_outside_the_receiving_roles_policy(
    role_specs: dict, pushes: dict, rule_specs: dict, held: list[str], found: list[AlertItem]
) -> None:
    for name, spec in role_specs.items():
        spec["push"] = pushes.get(name, True)
        spec["webhook"] = f"https://pager.example/{name}" if name != "d" else None
    policy = parse_policy({"roles": role_specs, "priority_rules": rule_specs})
    for item in found:
        for role in webhook_targets(policy, item):
            spec = role_specs[role]
            assert _spec_allows(spec, rule_specs, item) and spec["push"] and spec["webhook"]
            assert item.critical and item.present and not item.quality_flag
        if event_allowed(policy, held, item):
            assert any(
                r in role_specs and role_specs[r]["push"] and _spec_allows(role_specs[r], rule_specs, item)
                for r in held
            )
            assert item.critical and item.present and not item.quality_flag
