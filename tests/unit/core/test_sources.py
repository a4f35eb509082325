"""core.sources: the completion rule of each sender, by modality, and how it tightens."""

from __future__ import annotations

import json

import pytest

from core.config import AssemblyConfig
from core.sources import (
    ArrivalKind,
    CompletedStudy,
    CompletenessPolicy,
    CompletionRule,
    SenderStanding,
)


def policy(**kw):
    return CompletenessPolicy(AssemblyConfig.model_validate(kw))


def test_quiet_period_by_modality_the_longest_applies_and_a_sender_override_wins():
    p = policy(sources={"CT_ED_1": {"completion": "quiet_period", "quiet_period_s": 30}})
    assert p.quiet_period_for("X", ["CR"]) == 2.0 and p.quiet_period_for("X", ["CR", "CT"]) == 10.0
    assert p.quiet_period_for("X", ["OT"]) == 2.0 and p.quiet_period_for("X") == 2.0  # fallback
    assert p.quiet_period_for("CT_ED_1", ["CR"]) == 30.0
    flat = policy(quiet_period_s=0.5, quiet_period_by_modality={})
    assert flat.quiet_period_for("X", ["CT"]) == 0.5  # today's configs keep their meaning


def test_evidence_settle_and_scope_per_sender():
    p = policy(
        completion="pacs_counts",
        sources={"MOD": {"completion": "quiet_period", "evidence": [], "settle_s": 1.0, "count_scope": "series"}},
    )
    default, mod = p.rule_for("PACS"), p.rule_for("MOD")
    assert (default.completion, default.evidence, default.settle_s, default.count_scope) == (
        "pacs_counts",
        ("mpps", "ian", "order_status"),
        5.0,
        "study",
    )
    assert (mod.completion, mod.evidence, mod.settle_s, mod.count_scope) == ("quiet_period", (), 1.0, "series")
    assert p.uses_pacs("PACS") and not p.uses_pacs("MOD") and p.max_wait_s == 600.0 and p.requery_s == 5.0


@pytest.mark.parametrize(
    ("strictness", "settle", "quiet", "order"),
    [(0, 5.0, 10.0, 2.0), (1, 20.0, 40.0, 8.0), (2, 80.0, 120.0, 32.0), (3, 120.0, 120.0, 120.0)],
)
def test_tightening_stretches_settle_quiet_and_order_settle_up_to_the_ceiling(strictness, settle, quiet, order):
    rule = policy().rule_for("PACS", ["CT"], SenderStanding("PACS", strictness))
    assert (rule.settle_s, rule.quiet_period_s, rule.order_settle_s, rule.strictness) == (
        settle,
        quiet,
        order,
        strictness,
    )


def test_tightening_never_shortens_and_lifts_a_disabled_settle_window():
    rule = policy(settle_s=0, max_settle_s=3.0, quiet_period_s=200).rule_for("X", (), SenderStanding("X", 1))
    assert rule.settle_s == 3.0 and rule.quiet_period_s == 200.0


def test_an_early_arrival_after_a_heuristic_rule_tightens_the_sender():
    p = policy(tighten_after=2)
    done = CompletedStudy("1.2", "PACS ", CompletionRule.PACS_COUNTS, 100.0)
    first = p.classify_arrival(done, 110.0)
    assert (first.kind, first.standing, first.tightened) == (ArrivalKind.EARLY, SenderStanding("PACS", 0, 1), None)
    second = p.classify_arrival(done, 110.0, first.standing, ["CT"])
    assert second.standing == SenderStanding("PACS", 1, 0)
    assert second.tightened.audit_detail() == {
        "calling_ae": "PACS",
        "rule": "pacs_counts",
        "after_s": 10.0,
        "strictness": 1,
        "settle_s": 20.0,
        "quiet_period_s": 40.0,
    }
    assert SenderStanding.from_json(json.loads(json.dumps(second.standing.to_json()))) == second.standing


@pytest.mark.parametrize(
    ("rule", "after", "kind"),
    [
        (CompletionRule.QUIET_PERIOD, 5.0, ArrivalKind.EARLY),
        (CompletionRule.ORDER_STATUS, 5.0, ArrivalKind.EARLY),
        (CompletionRule.PACS_COUNTS, 601.0, ArrivalKind.LATE),  # after early_window_s
        (CompletionRule.MPPS, 5.0, ArrivalKind.LATE),  # a new procedure step, no blame
        (CompletionRule.IAN, 5.0, ArrivalKind.LATE),
        (CompletionRule.MAX_WAIT, 5.0, ArrivalKind.LATE),
    ],
)
def test_which_arrivals_count_as_early(rule, after, kind):
    verdict = policy().classify_arrival(CompletedStudy("1.2", "PACS", rule, 0.0), after)
    assert verdict.kind is kind and (verdict.tightened is not None) == (kind is ArrivalKind.EARLY)
