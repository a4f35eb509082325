"""core.versions: no storms of partial reports (issue 18)."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from core.versions import (
    DeliveryAction,
    Incompleteness,
    IncompleteReason,
    SRVersion,
    VersionState,
    WritePlan,
    plan_delivery,
    plan_write,
)

P, S, D, PL, H, AB = (
    VersionState.PENDING,
    VersionState.SENDING,
    VersionState.DELIVERED,
    VersionState.PLANNED,
    VersionState.HELD,
    VersionState.ABANDONED,
)


def v(version, state, predecessor="", incomplete=False):
    return SRVersion(version, state, f"sr{version}" if state is not PL else "", predecessor, incomplete)


def plan(*versions, cap=5, released=frozenset()):
    return plan_delivery("st", "head_ct", versions, cap, released)


def test_one_version_in_flight_newer_ones_wait_and_the_stale_ones_are_superseded():
    p = plan(v(1, S), v(2, P), v(3, P))
    assert (p.action, p.version.version, p.supersede) == (DeliveryAction.WAIT, 3, (2,))
    assert "being sent" in p.reason


def test_a_newer_version_supersedes_one_not_yet_delivered():
    p = plan(v(1, P), v(2, P, ""))
    assert (p.action, p.version.version, p.supersede, p.predecessor_uid, p.rebuild) == (
        DeliveryAction.SEND,
        2,
        (1,),
        "",
        False,
    )


def test_each_version_names_the_previous_delivered_one_chosen_when_sent():
    p = plan(v(1, D), v(2, D, "sr1"), v(3, P, "sr1"))  # built while 2 was in flight... and it named 1
    assert (p.action, p.predecessor_uid, p.rebuild) == (DeliveryAction.SEND, "sr2", True)
    assert plan(v(1, D), v(2, P, "sr1")).rebuild is False


def test_versions_never_reach_the_pacs_out_of_order():
    p = plan(v(3, D), v(2, P))
    assert (p.action, p.supersede) == (DeliveryAction.NOTHING, (2,))
    assert plan(v(1, D)).action is DeliveryAction.NOTHING
    assert plan().action is DeliveryAction.NOTHING


def test_an_older_version_waits_for_a_newer_one_on_its_way():
    p = plan(v(1, P), v(2, PL))
    assert p.action is DeliveryAction.WAIT and "on its way" in p.reason
    assert plan(v(2, P), v(1, PL)).action is DeliveryAction.SEND  # an older plan does not block


def test_when_the_newer_version_fails_the_older_one_goes_marked_partial():
    p = plan(v(1, P), v(2, AB))
    assert p.action is DeliveryAction.SEND and p.rebuild
    assert p.incomplete == Incompleteness(IncompleteReason.NEWER_INSTANCES)
    assert plan(v(1, P, incomplete=True), v(2, AB)).rebuild is False


def test_the_cap_holds_further_versions_with_a_warning_until_released():
    p = plan(v(1, D), v(2, D, "sr1"), v(3, P, "sr2"), cap=2)
    assert (p.action, p.version.version, p.predecessor_uid) == (DeliveryAction.HOLD, 3, "sr2")
    assert p.cap.audit_detail() == {"family": "head_ct", "delivered": 2, "cap": 2, "held_version": 3}
    released = plan(v(1, D), v(2, D, "sr1"), v(3, H, "sr2"), cap=2, released={3})
    assert (released.action, released.version.version) == (DeliveryAction.SEND, 3)
    newer = plan(v(1, D), v(2, D, "sr1"), v(3, H, "sr2"), v(4, P, "sr2"), cap=2)
    assert (newer.action, newer.version.version, newer.supersede) == (DeliveryAction.HOLD, 4, (3,))


def test_plan_write_skips_a_version_a_newer_one_superseded_and_names_the_one_in_flight():
    assert plan_write([v(1, D), v(2, S)], 3).predecessor_uid == "sr2"
    assert plan_write([v(1, D), v(2, VersionState.SUPERSEDED)], 3).predecessor_uid == "sr1"
    skipped = plan_write([v(1, D), v(3, P)], 2)
    assert (skipped.write, skipped.superseded_by) == (False, 3)
    assert plan_write([v(3, PL)], 2).write and plan_write([], 1) == WritePlan(True, "")


def test_incompleteness_becomes_incomplete_series_quality_flags():
    mark = Incompleteness(IncompleteReason.MISSING_INSTANCES, 3, ("se2",))
    [flag] = mark.quality_flags(["se1", "se2"])
    assert flag.key == "incomplete_series" and flag.series_instance_uid == "se2"
    assert (flag.score, flag.threshold) == (3.0, 1.0) and "3 missing" in flag.detail
    unknown = Incompleteness(IncompleteReason.DISCONTINUED)
    assert [f.series_instance_uid for f in unknown.quality_flags(["se1", "se2"])] == ["se1", "se2"]
    assert "discontinued" in unknown.describe() and Incompleteness.from_json(mark.to_json()) == mark


# ---------------------------------------------- a storm, replayed against the rules
EVENTS = st.lists(st.sampled_from(["new_version", "write", "deliver_step", "fail_step"]), max_size=60)


def _apply(versions: dict[int, SRVersion], event: str, cap: int, log: list[tuple[int, str]]) -> None:
    if event == "new_version":
        n = max(versions, default=0) + 1
        versions[n] = SRVersion(n, PL)
    elif event == "write":
        planned = [x for x in versions.values() if x.state is PL]
        if planned:
            w = plan_write(versions.values(), planned[0].version)
            state = P if w.write else VersionState.SUPERSEDED
            versions[planned[0].version] = SRVersion(
                planned[0].version, state, f"sr{planned[0].version}", w.predecessor_uid
            )
    else:
        sending = [x for x in versions.values() if x.state is S]
        if sending:
            done = D if event == "deliver_step" else AB
            versions[sending[0].version] = replace(sending[0], state=done)
            if done is D:
                log.append((sending[0].version, sending[0].predecessor_uid))
            return
        p = plan_delivery("st", "f", versions.values(), cap)
        for n in p.supersede:
            versions[n] = replace(versions[n], state=VersionState.SUPERSEDED)
        if p.action is DeliveryAction.SEND:
            versions[p.version.version] = replace(p.version, state=S, predecessor_uid=p.predecessor_uid)
        elif p.action is DeliveryAction.HOLD:
            versions[p.version.version] = replace(p.version, state=H)


@settings(max_examples=300, deadline=None)
@given(EVENTS, st.integers(1, 4))
def test_any_interleaving_keeps_one_in_flight_an_ordered_unforked_chain_and_the_cap(events, cap):
    versions: dict[int, SRVersion] = {}
    log: list[tuple[int, str]] = []
    for event in events:
        _apply(versions, event, cap, log)
        assert sum(1 for x in versions.values() if x.state is S) <= 1
    delivered = [n for n, _ in log]
    assert delivered == sorted(set(delivered)) and len(delivered) <= cap
    expected_predecessors = ([""] + [f"sr{n}" for n in delivered[:-1]])[: len(delivered)]
    assert [pred for _, pred in log] == expected_predecessors  # each names the previous delivered
