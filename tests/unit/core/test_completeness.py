from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.completeness import (
    CompletenessPolicy,
    CompletionRule,
    EvidenceTracker,
    PacsCounts,
    ReceivingStudy,
    Verdict,
    judge,
)
from core.config import AssemblyConfig
from tests.fakes import FakeClock

PACS_AE = "PACSFWD"


def policy(**kw):
    raw = dict(quiet_period_s=2.0, requery_s=5.0, max_wait_s=60.0,
               sources={PACS_AE: {"completion": "pacs_counts"}})
    return CompletenessPolicy(AssemblyConfig.model_validate(raw | kw))


def study(received, last, ae=PACS_AE):
    return ReceivingStudy(1, "st", ae, last, dict(received))


def counts(**series):
    return PacsCounts(True, sum(series.values()), series)


@pytest.mark.parametrize(
    ("received", "answer", "own", "scope", "verdict"),
    [
        ({"a": 2, "b": 1}, counts(a=2, b=1), (), "study", Verdict.MATCH),
        ({"a": 2}, counts(a=2, b=1), (), "study", Verdict.MORE_EXPECTED),  # a series still missing
        ({"a": 1}, counts(a=2), (), "study", Verdict.MORE_EXPECTED),
        ({"a": 3}, counts(a=2), (), "study", Verdict.CANNOT_TELL),  # the PACS is behind us
        ({"a": 2, "x": 1}, counts(a=2), (), "study", Verdict.CANNOT_TELL),  # a series it lacks
        ({"a": 2}, counts(a=2, sr=1), ("sr",), "study", Verdict.MATCH),  # our own SR series
        ({"a": 2}, counts(a=2, b=5), (), "series", Verdict.MATCH),  # only what we received
        ({"a": 1}, counts(a=2, b=5), (), "series", Verdict.MORE_EXPECTED),
        ({"a": 2}, PacsCounts(True, 2, {"a": None}), (), "study", Verdict.CANNOT_TELL),
        ({"a": 2}, PacsCounts(True, 2, {}), (), "study", Verdict.MATCH),  # study count only
        ({"a": 2}, PacsCounts(True, 3, {}), (), "study", Verdict.MORE_EXPECTED),
        ({"a": 2}, PacsCounts(True, None, {}), (), "study", Verdict.CANNOT_TELL),
        ({"a": 2}, PacsCounts(False), (), "study", Verdict.CANNOT_TELL),  # unknown study
    ],
)
def test_judge_compares_our_counts_with_the_pacs(received, answer, own, scope, verdict):
    assert judge(received, answer, own, scope) is verdict


@given(st.dictionaries(st.sampled_from("abcd"), st.integers(1, 5), min_size=1),
       st.dictionaries(st.sampled_from("abcd"), st.integers(1, 5), min_size=1))
def test_match_only_when_every_series_count_is_equal(received, pacs):
    verdict = judge(received, PacsCounts(True, sum(pacs.values()), pacs), (), "study")
    assert (verdict is Verdict.MATCH) == (received == pacs)


def test_rules_per_sender_with_defaults():
    p = policy(sources={PACS_AE: {"completion": "pacs_counts", "quiet_period_s": 9, "count_scope": "series"}})
    assert p.rule_for(PACS_AE).completion == "pacs_counts"
    assert (p.quiet_period_for(PACS_AE), p.rule_for(PACS_AE).count_scope) == (9, "series")
    assert p.rule_for("CT1").completion == "quiet_period" and p.quiet_period_for("CT1") == 2.0
    assert p.uses_pacs(PACS_AE + " ") and not p.uses_pacs("CT1")


def test_queries_are_bounded_and_a_fresh_match_completes_at_once():
    clock, tracker = FakeClock(), EvidenceTracker(policy())
    s = study({"a": 2}, clock.now())
    assert tracker.wants_query(s, clock.now())  # nothing known yet
    tracker.record(s, counts(a=4), clock.now())
    assert not tracker.wants_query(s, clock.now()) and not tracker.complete_now(s)
    clock.advance(1)
    s = study({"a": 3}, clock.now())
    assert not tracker.wants_query(s, clock.now())  # 3 < 4: waiting for more, no need to ask
    clock.advance(5)
    assert tracker.wants_query(s, clock.now())  # requery_s passed
    s = study({"a": 4}, clock.now())
    assert tracker.wants_query(s, clock.now())  # our count reached the answer: confirm it
    assert not tracker.complete_now(s)  # the answer predates our last instance
    tracker.record(s, counts(a=4), clock.now())
    assert tracker.complete_now(s) and tracker.queries == 2


def test_a_pacs_that_grew_meanwhile_is_not_mistaken_for_a_match():
    clock, tracker = FakeClock(), EvidenceTracker(policy())
    tracker.record(study({"a": 1}, clock.now()), counts(a=2), clock.now())
    s = study({"a": 2}, clock.now())
    assert tracker.wants_query(s, clock.now())
    tracker.record(s, counts(a=3), clock.now())
    assert not tracker.complete_now(s)
    assert tracker.verdict(s) == (Verdict.MORE_EXPECTED, True)


def test_quiet_timer_waits_while_the_pacs_holds_more_then_gives_up():
    clock, tracker = FakeClock(), EvidenceTracker(policy())
    last = clock.now()
    s = study({"a": 1}, last)
    tracker.record(s, counts(a=2), last)
    clock.advance(2.0)
    d = tracker.on_quiet_timer(s, clock.now())
    assert not d.complete and d.not_before == last + 60.0 and d.verdict is Verdict.MORE_EXPECTED
    clock.advance(58.0)
    d = tracker.on_quiet_timer(s, clock.now())
    assert d.complete and d.rule is CompletionRule.MAX_WAIT


def test_quiet_period_decides_where_the_pacs_cannot_tell():
    clock, tracker = FakeClock(), EvidenceTracker(policy())
    s = study({"a": 1}, clock.now())
    tracker.record(s, None, clock.now())  # unreachable
    assert not tracker.wants_query(s, clock.now() + 1)
    assert tracker.wants_query(study({"a": 2}, clock.now()), clock.now() + 5)
    early = tracker.on_quiet_timer(s, clock.now() + 1.0)
    assert not early.complete and early.not_before == clock.now() + 2.0
    d = tracker.on_quiet_timer(s, clock.now() + 2.0)
    assert d.complete and d.rule is CompletionRule.QUIET_PERIOD and d.verdict is Verdict.CANNOT_TELL


def test_quiet_period_senders_never_query_and_complete_on_silence():
    clock, tracker = FakeClock(), EvidenceTracker(policy())
    s = study({"a": 1}, clock.now(), ae="MODALITY")
    assert not tracker.wants_query(s, clock.now()) and not tracker.complete_now(s)
    assert tracker.on_quiet_timer(s, clock.now() + 2.0).rule is CompletionRule.QUIET_PERIOD


def test_fresh_match_on_the_timer_is_recorded_as_pacs_counts_and_cache_is_pruned():
    clock, tracker = FakeClock(), EvidenceTracker(policy())
    s = study({"a": 2}, clock.now())
    tracker.record(s, counts(a=2), clock.now())
    assert tracker.on_quiet_timer(s, clock.now() + 2).rule is CompletionRule.PACS_COUNTS
    tracker.forget_except([])
    assert tracker.answer_of("st") is None and tracker.wants_query(s, clock.now())


# ------------------------------------------- issue 18: PACS counts with hysteresis
ISSUE18 = pytest.mark.xfail(strict=True, reason="issue 18: a single count match completes at once")


@ISSUE18
def test_per_instance_forwarding_matches_after_every_slice_but_completes_once_settled():
    """Orthanc OnStoredInstance + a scanner pacing 60 slices 0.1 s apart: the PACS holds exactly
    what we hold after every slice. One fresh match used to complete the study 14-26 times."""
    clock, tracker = FakeClock(), EvidenceTracker(policy())
    for n in range(1, 61):
        s = study({"a": n}, clock.now())
        if tracker.wants_query(s, clock.now()):
            tracker.record(s, counts(a=n), clock.now())
        assert not tracker.complete_now(s), f"completed after slice {n}"
        assert not tracker.on_quiet_timer(s, clock.now()).complete
        clock.advance(0.1)
    last = clock.now() - 0.1
    clock.advance(2.0)  # the quiet period ran out, but the counts have not held for 5 s
    d = tracker.on_quiet_timer(s, clock.now())
    assert not d.complete and d.not_before == pytest.approx(last + 5.0, abs=0.11)
    clock.t = d.not_before
    assert tracker.wants_query(s, clock.now())  # the confirming query
    tracker.record(s, counts(a=60), clock.now())
    assert tracker.complete_now(s)
    assert tracker.on_quiet_timer(s, clock.now()).rule is CompletionRule.PACS_COUNTS


@ISSUE18
def test_counts_that_change_within_the_settle_window_restart_it():
    clock, tracker = FakeClock(), EvidenceTracker(policy())
    s = study({"a": 2}, clock.now())
    tracker.record(s, counts(a=2), clock.now())
    clock.advance(5.0)
    tracker.record(s, counts(a=3), clock.now())  # the PACS got one more meanwhile
    assert not tracker.complete_now(s)
    s = study({"a": 3}, clock.now())
    tracker.record(s, counts(a=3), clock.now())
    clock.advance(4.9)
    tracker.record(s, counts(a=3), clock.now())
    assert not tracker.complete_now(s)
    clock.advance(0.1)
    tracker.record(s, counts(a=3), clock.now())
    assert tracker.complete_now(s)
