"""``state.group_commit``: one commit for many threads' items, each told its own outcome."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest

from state.group_commit import GroupCommit


class FakeStore:
    """A commit function that records its groups; the first commit can be held open."""

    def __init__(self, fail_items: Sequence[str] = (), raise_on: str = "") -> None:
        self.groups: list[list[str]] = []
        self.hold = threading.Event()
        self.hold.set()
        self.entered = threading.Event()
        self._fail = set(fail_items)
        self._raise_on = raise_on

    def commit(self, items: list[str]) -> list[str | BaseException]:
        self.entered.set()
        self.hold.wait(5)
        self.groups.append(list(items))
        if self._raise_on in items:
            raise ConnectionError("ledger down")
        return [ValueError(i) if i in self._fail else i.upper() for i in items]


def _submit_all(group: GroupCommit[str, str], items: Sequence[str]) -> dict[str, object]:
    """Submit each item from its own thread; every caller's outcome (a value or its error)."""
    out: dict[str, object] = {}

    def one(item: str) -> None:
        try:
            out[item] = group.submit(item)
        except Exception as exc:  # noqa: BLE001  (the outcome under test)
            out[item] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in items]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    return out


def _queued(group: GroupCommit[str, str], n: int) -> None:
    """Wait until ``n`` callers wait behind the commit in progress."""
    for _ in range(500):
        if len(group._queue) >= n:
            return
        threading.Event().wait(0.01)
    raise AssertionError(f"{len(group._queue)} queued, expected {n}")


def test_a_lone_item_commits_at_once_alone():
    store = FakeStore()
    group = GroupCommit(store.commit, max_size=8)
    assert group.submit("a") == "A"
    assert store.groups == [["a"]] and (group.commits, group.items) == (1, 1)


def test_items_that_arrive_during_a_commit_share_the_next_one():
    store = FakeStore()
    store.hold.clear()
    group = GroupCommit(store.commit, max_size=8)
    first = threading.Thread(target=group.submit, args=("a",))
    first.start()
    assert store.entered.wait(5)
    out: dict[str, object] = {}
    waiting = threading.Thread(target=lambda: out.update(_submit_all(group, ["b", "c", "d"])))
    waiting.start()
    _queued(group, 3)
    store.hold.set()
    first.join(5)
    waiting.join(5)
    assert out == {"b": "B", "c": "C", "d": "D"}
    assert store.groups[0] == ["a"] and sorted(store.groups[1]) == ["b", "c", "d"] and len(store.groups) == 2


def test_each_caller_gets_its_own_outcome_and_the_size_is_bounded():
    store = FakeStore(fail_items=["c"])
    store.hold.clear()
    group = GroupCommit(store.commit, max_size=2)
    first = threading.Thread(target=group.submit, args=("a",))
    first.start()
    assert store.entered.wait(5)
    out: dict[str, object] = {}
    waiting = threading.Thread(target=lambda: out.update(_submit_all(group, ["b", "c", "d", "e"])))
    waiting.start()
    _queued(group, 4)
    store.hold.set()
    first.join(5)
    waiting.join(5)
    assert isinstance(out.pop("c"), ValueError)
    assert out == {"b": "B", "d": "D", "e": "E"}
    assert [len(g) for g in store.groups] == [1, 2, 2]


def test_a_failed_commit_fails_every_item_of_its_group_and_the_next_group_goes_on():
    store = FakeStore(raise_on="x")
    store.hold.clear()
    group = GroupCommit(store.commit, max_size=8)
    first: dict[str, object] = {}
    lead = threading.Thread(target=lambda: first.update(_submit_all(group, ["x"])))
    lead.start()
    assert store.entered.wait(5)
    out: dict[str, object] = {}
    waiting = threading.Thread(target=lambda: out.update(_submit_all(group, ["b", "c"])))
    waiting.start()
    _queued(group, 2)
    store.hold.set()
    lead.join(5)
    waiting.join(5)
    assert isinstance(first["x"], ConnectionError)
    assert out == {"b": "B", "c": "C"}  # led by the next caller after the failure
    assert group.submit("z") == "Z"


def test_a_commit_that_miscounts_its_outcomes_fails_its_group():
    group: GroupCommit[str, str] = GroupCommit(lambda items: [], max_size=4)
    with pytest.raises(RuntimeError, match="0 outcomes for 1 items"):
        group.submit("a")


def test_max_size_must_be_positive():
    with pytest.raises(ValueError, match="expected >= 1"):
        GroupCommit(FakeStore().commit, max_size=0)
