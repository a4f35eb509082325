from __future__ import annotations

import json
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.completeness import (
    CompletenessPolicy,
    CompletionRule,
    EvidenceTracker,
    Outcome,
    PacsCounts,
    ReceivingStudy,
    StudyEvidence,
    Verdict,
    count_query_due,
    decide,
    judge,
)
from core.config import AssemblyConfig
from core.ian import Availability, AvailabilityNotice, AvailableInstance
from core.mpps import PerformedSeries, ProcedureStep, StepStatus
from core.order_status import OrderProgress, OrderStatus
from core.pacs_counts import CountObservation
from core.sources import SenderStanding
from core.versions import IncompleteReason
from tests.fakes import FakeClock

PACS_AE = "PACSFWD"


def policy(**kw):
    raw = dict(quiet_period_s=2.0, requery_s=5.0, max_wait_s=60.0, sources={PACS_AE: {"completion": "pacs_counts"}})
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


@given(
    st.dictionaries(st.sampled_from("abcd"), st.integers(1, 5), min_size=1),
    st.dictionaries(st.sampled_from("abcd"), st.integers(1, 5), min_size=1),
)
def test_match_only_when_every_series_count_is_equal(received, pacs):
    verdict = judge(received, PacsCounts(True, sum(pacs.values()), pacs), (), "study")
    assert (verdict is Verdict.MATCH) == (received == pacs)


def test_rules_per_sender_with_defaults():
    p = policy(sources={PACS_AE: {"completion": "pacs_counts", "quiet_period_s": 9, "count_scope": "series"}})
    assert p.rule_for(PACS_AE).completion == "pacs_counts"
    assert (p.quiet_period_for(PACS_AE), p.rule_for(PACS_AE).count_scope) == (9, "series")
    assert p.rule_for("CT1").completion == "quiet_period" and p.quiet_period_for("CT1") == 2.0
    assert p.uses_pacs(PACS_AE + " ") and not p.uses_pacs("CT1")


def test_queries_are_bounded_and_with_no_settle_window_a_fresh_match_completes_at_once():
    clock, tracker = FakeClock(), EvidenceTracker(policy(settle_s=0))
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
    clock, tracker = FakeClock(), EvidenceTracker(policy(settle_s=0))
    s = study({"a": 2}, clock.now())
    tracker.record(s, counts(a=2), clock.now())
    assert tracker.on_quiet_timer(s, clock.now() + 2).rule is CompletionRule.PACS_COUNTS
    tracker.forget_except([])
    assert tracker.answer_of("st") is None and tracker.wants_query(s, clock.now())


# ------------------------------------------- issue 18: PACS counts with hysteresis


def test_per_instance_forwarding_matches_after_every_slice_but_completes_once_settled():
    """Orthanc OnStoredInstance + a scanner pacing 60 slices 0.1 s apart: the PACS holds exactly
    what we hold after every slice. One fresh match used to complete the study 14-26 times."""
    clock, tracker = FakeClock(), EvidenceTracker(policy())
    pacs_holds = 0
    for n in range(1, 61):
        pacs_holds = n  # the PACS stored the slice before forwarding it to us
        s = study({"a": n}, clock.now())
        for _ in range(2):  # the evidence watcher polls every 0.05 s
            if tracker.wants_query(s, clock.now()):
                tracker.record(s, counts(a=pacs_holds), clock.now())
            assert not tracker.complete_now(s), f"completed after slice {n}"
            assert not tracker.on_quiet_timer(s, clock.now()).complete
            clock.advance(0.05)
    assert tracker.queries <= 8  # bounded while streaming: requery_s
    last = s.last_instance_at
    while not tracker.complete_now(s):
        if tracker.wants_query(s, clock.now()):
            tracker.record(s, counts(a=pacs_holds), clock.now())
        if not tracker.complete_now(s):
            assert not tracker.on_quiet_timer(s, clock.now()).complete
        clock.advance(0.05)
    assert clock.now() - last == pytest.approx(1.0 + 5.0, abs=0.11)  # the lull, then the settle window
    assert tracker.on_quiet_timer(s, clock.now()).rule is CompletionRule.PACS_COUNTS


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


# ------------------------------------------------ issue 18: one entry point, every evidence
T0 = 1000.0


def held(*uids, series="s1", last=T0, ae=PACS_AE, modalities=("CT",)):
    return ReceivingStudy(1, "st", ae, last, {series: len(uids)} if uids else {}, modalities, frozenset(uids))


def step(status, *uids, series="s1"):
    return ProcedureStep("9.1", status, ("st",), (PerformedSeries(series, tuple(uids)),))


def ev(study_, **kw):
    return StudyEvidence(study_, **kw)


def test_mpps_completed_with_every_listed_instance_completes_at_once():
    d = decide(ev(held("i1", "i2"), steps=(step(StepStatus.COMPLETED, "i1", "i2"),)), policy(), T0)
    assert (d.outcome, d.rule, d.incomplete, d.query_pacs, d.not_before) == (
        Outcome.COMPLETE,
        CompletionRule.MPPS,
        None,
        False,
        T0,
    )
    assert json.loads(json.dumps(d.audit_detail()))["rule"] == "mpps"


def test_mpps_in_progress_or_missing_instances_wait_up_to_max_wait_then_complete_marked_partial():
    running = ev(held("i1"), steps=(step(StepStatus.IN_PROGRESS),))
    d = decide(running, policy(), T0 + 30)
    assert (d.outcome, d.not_before, d.evidence) == (Outcome.MORE_EXPECTED, T0 + 60, CompletionRule.MPPS)
    late = decide(running, policy(), T0 + 60)
    assert (late.rule, late.incomplete.reason) == (CompletionRule.MAX_WAIT, IncompleteReason.NOT_FINISHED)
    missing = ev(held("i1"), steps=(step(StepStatus.COMPLETED, "i1", "i2", series="s2"),))
    d = decide(missing, policy(), T0)
    assert (d.outcome, d.missing) == (Outcome.MORE_EXPECTED, 1)
    gave_up = decide(missing, policy(), T0 + 60)
    assert gave_up.incomplete.reason is IncompleteReason.MISSING_INSTANCES and gave_up.incomplete.series_uids == ("s2",)


def test_mpps_discontinued_processes_what_arrived_marked_as_such():
    d = decide(ev(held("i1"), steps=(step(StepStatus.DISCONTINUED, "i1"),)), policy(), T0)
    assert d.rule is CompletionRule.MPPS and d.incomplete.reason is IncompleteReason.DISCONTINUED
    listing_nothing = ev(held("i1"), steps=(step(StepStatus.DISCONTINUED),))
    d = decide(listing_nothing, policy(), T0 + 10.0)  # the CT quiet period (the PACS was not asked)
    assert d.rule is CompletionRule.QUIET_PERIOD and d.incomplete.reason is IncompleteReason.DISCONTINUED


def test_a_sender_may_be_told_not_to_trust_mpps():
    no_mpps = policy(sources={PACS_AE: {"completion": "quiet_period", "evidence": ["ian"]}})
    d = decide(ev(held("i1"), steps=(step(StepStatus.IN_PROGRESS),)), no_mpps, T0 + 10)
    assert d.rule is CompletionRule.QUIET_PERIOD


def notice(*instances):
    return AvailabilityNotice("9.2", "st", tuple(AvailableInstance("s1", u, Availability.ONLINE) for u in instances))


def test_ian_completes_when_every_available_instance_is_held():
    assert decide(ev(held("i1", "i2"), notices=(notice("i1", "i2"),)), policy(), T0).rule is CompletionRule.IAN
    d = decide(ev(held("i1"), notices=(notice("i1", "i2"),)), policy(), T0)
    assert (d.outcome, d.evidence, d.missing) == (Outcome.MORE_EXPECTED, CompletionRule.IAN, 1)


def test_order_status_completes_after_the_order_settle_time():
    done = OrderStatus("st", "", OrderProgress.COMPLETED, T0 + 1, "ORC-5=CM")
    d = decide(ev(held("i1"), order=done), policy(), T0 + 2)
    assert (d.outcome, d.not_before, d.evidence) == (Outcome.WAIT, T0 + 3, CompletionRule.ORDER_STATUS)
    assert decide(ev(held("i1"), order=done), policy(), T0 + 3).rule is CompletionRule.ORDER_STATUS
    stopped = replace_progress(done, OrderProgress.DISCONTINUED)
    assert decide(ev(held("i1"), order=stopped), policy(), T0 + 3).incomplete.reason is IncompleteReason.DISCONTINUED
    running = replace_progress(done, OrderProgress.IN_PROGRESS)
    assert decide(ev(held("i1"), order=running), policy(), T0 + 3).evidence is not CompletionRule.ORDER_STATUS


def replace_progress(status, progress):
    return replace(status, progress=progress)


def test_counts_settle_wait_and_more_expected():
    s = held("i1", "i2")
    fresh = CountObservation(T0, counts(s1=2), {"s1": 2})
    d = decide(ev(s, counts=(fresh,)), policy(), T0 + 1)
    assert (d.outcome, d.not_before, d.evidence, d.query_pacs) == (
        Outcome.WAIT,
        T0 + 5,
        CompletionRule.PACS_COUNTS,
        False,
    )
    confirm = CountObservation(T0 + 5, counts(s1=2), {"s1": 2})
    d = decide(ev(s, counts=(fresh, confirm)), policy(), T0 + 5)
    assert d.rule is CompletionRule.PACS_COUNTS and not d.query_pacs
    behind = CountObservation(T0, counts(s1=5), {"s1": 2})
    d = decide(ev(s, counts=(behind,)), policy(), T0 + 10)
    assert (d.outcome, d.missing, d.not_before) == (Outcome.MORE_EXPECTED, 3, T0 + 60)


def test_the_quiet_period_goes_by_modality_and_a_tightened_sender_waits_longer():
    radiograph = held("i1", ae="MODALITY", modalities=("CR",))
    ct = held("i1", ae="MODALITY", modalities=("CT",))
    assert decide(ev(radiograph), policy(quiet_period_s=2.0), T0 + 2).rule is CompletionRule.QUIET_PERIOD
    d = decide(ev(ct), policy(), T0 + 2)
    assert (d.outcome, d.not_before) == (Outcome.WAIT, T0 + 10)
    strict = decide(ev(ct, standing=SenderStanding("MODALITY", 1)), policy(), T0 + 10)
    assert (strict.outcome, strict.not_before) == (Outcome.WAIT, T0 + 40)


def test_query_pacs_asks_first_then_at_a_lull_and_at_the_end_of_a_settle_window():
    s = held("i1")
    assert decide(ev(s), policy(), T0).query_pacs  # nothing known yet
    quiet_sender = held("i1", ae="MODALITY")
    assert not count_query_due(ev(quiet_sender), policy(), T0)
    streaming = ev(held("i1", "i2", last=T0 + 0.5), counts=(CountObservation(T0, counts(s1=1), {"s1": 1}),))
    assert not count_query_due(streaming, policy(), T0 + 0.6)  # we grew past it; no lull yet
    assert count_query_due(streaming, policy(), T0 + 1.5)  # a lull of lull_s (1 s)
    unreachable = ev(s, counts=(CountObservation(T0, None, {"s1": 1}),))
    d = decide(unreachable, policy(), T0 + 10)
    assert d.rule is CompletionRule.QUIET_PERIOD and not d.query_pacs  # the PACS cannot tell


def test_with_series_scope_mpps_expects_only_the_series_routed_to_us():
    both = ProcedureStep(
        "9.1", StepStatus.COMPLETED, ("st",), (PerformedSeries("s1", ("i1",)), PerformedSeries("s2", ("j1",)))
    )
    scoped = policy(count_scope="series")
    assert decide(ev(held("i1"), steps=(both,)), scoped, T0).rule is CompletionRule.MPPS
    assert decide(ev(held("i1"), steps=(both,)), policy(), T0).outcome is Outcome.MORE_EXPECTED
