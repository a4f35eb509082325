"""core.pacs_counts: reading count answers with hysteresis."""

from __future__ import annotations

import pytest

from core.pacs_counts import CountObservation, CountsState, PacsCounts, read_counts


def answer(at, held, **pacs):
    return CountObservation(at, PacsCounts(True, sum(pacs.values()), pacs), dict(held))


def read(observations, held, last=0.0, settle=5.0, own=(), scope="study"):
    return read_counts(observations, held, last, own, scope, settle)


def test_a_run_of_identical_fresh_matches_settles_after_the_window():
    held = {"a": 3}
    run = [answer(t, held, a=3) for t in (1.0, 3.0, 6.0)]
    assert read(run[:2], held).state is CountsState.UNSETTLED
    reading = read(run, held)
    assert (reading.state, reading.since, reading.settles_at) == (CountsState.SETTLED, 1.0, 6.0)


def test_the_run_breaks_on_changed_counts_an_arrival_or_a_stale_answer():
    held = {"a": 3}
    changed = [answer(1.0, held, a=3), answer(3.0, held, a=3, b=1), answer(4.0, held, a=3)]
    assert read(changed, held).since == 4.0  # the PACS's answer changed in between
    before_arrival = [answer(1.0, {"a": 2}, a=3), answer(4.0, held, a=3)]
    assert read(before_arrival, held).since == 4.0
    assert read([answer(1.0, held, a=3)], held, last=2.0).state is CountsState.NO_ANSWER  # asked before our last


@pytest.mark.parametrize(
    ("observations", "held", "state"),
    [
        ([], {"a": 1}, CountsState.NO_ANSWER),
        ([CountObservation(1.0, None, {"a": 1})], {"a": 1}, CountsState.CANNOT_TELL),  # unreachable
        ([answer(1.0, {"a": 1}, a=4)], {"a": 2}, CountsState.MORE_EXPECTED),  # stale, but still behind
        ([answer(1.0, {"a": 1}, a=1)], {"a": 2}, CountsState.NO_ANSWER),  # we grew past its answer
        ([answer(1.0, {"a": 2}, a=1)], {"a": 2}, CountsState.CANNOT_TELL),  # the PACS is behind us
        ([CountObservation(1.0, PacsCounts(False), {"a": 1})], {"a": 1}, CountsState.CANNOT_TELL),
    ],
)
def test_states(observations, held, state):
    assert read(observations, held).state is state


def test_missing_counts_what_the_pacs_holds_beyond_us_within_scope():
    obs = [answer(1.0, {"a": 1}, a=3, b=2, sr=1)]
    assert read(obs, {"a": 1}, own=("sr",)).missing == 4
    assert read(obs, {"a": 1}, own=("sr",), scope="series").missing == 2
    assert read([CountObservation(1.0, PacsCounts(True, 9, {}), {"a": 1})], {"a": 1}).missing == 8


def test_no_settle_window_trusts_one_fresh_match():
    assert read([answer(1.0, {"a": 1}, a=1)], {"a": 1}, settle=0.0).state is CountsState.SETTLED
