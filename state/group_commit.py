"""Leader/follower group commit: many threads' items made durable by one commit.

The threads of one process (the listener's associations, STOW-RS parts) each hand one item to
``GroupCommit.submit`` and wait. A thread that finds no commit in progress leads: it takes
every item queued (its own first, at most ``max_size``), runs the commit function once for all
of them and tells each waiter its own outcome. Items queued while a commit runs wait for the
next one, which the first of them leads. So a lone item is committed at once (no timer waits
for company), and under load one commit (one directory fsync, one ledger transaction) serves
every instance that arrived during the previous one.

Nobody returns before the commit that holds their item has finished, and the end of a commit
wakes only the callers it held, plus the one that leads next. It is ``state.sqlite``'s group
commit one level up: there the unit is a transaction, here a whole durable intake step.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["GroupCommit"]

T = TypeVar("T")
R = TypeVar("R")


class _Waiter(Generic[T, R]):
    """One caller's item, waiting for (or done by) a group commit."""

    __slots__ = ("done", "error", "item", "value", "wake")

    def __init__(self, item: T) -> None:
        self.item = item
        self.value: R | None = None
        self.error: BaseException | None = None
        self.done = False
        self.wake = threading.Event()
        """Set when the item's commit is over, or when this caller is to lead the next group."""

    def result(self) -> R:
        if self.error is not None:
            raise self.error
        return self.value  # type: ignore[return-value]


class GroupCommit(Generic[T, R]):
    """Commits the items of many threads together (module docstring)."""

    def __init__(self, commit: Callable[[list[T]], Sequence[R | BaseException]], max_size: int = 32) -> None:
        """Args:
        commit: Makes a group durable; returns one outcome per item, in order: a value, or
            the exception that item's caller is to raise. If it raises, every item of the
            group gets that exception.
        max_size: Most items in one commit (1: every item commits alone).
        """
        if max_size < 1:
            raise ValueError(f"max_size: got {max_size}; expected >= 1")
        self._commit = commit
        self._max = max_size
        self._lock = threading.Lock()  # guards _queue and _leading
        self._queue: list[_Waiter[T, R]] = []
        self._leading = False
        self.commits = 0
        """Groups committed (for benchmarks and tests)."""
        self.items = 0
        """Items those groups held: ``items / commits`` is the mean group size."""

    def submit(self, item: T) -> R:
        """Queue ``item``, lead or wait for its commit; return its outcome.

        Raises:
            Whatever the commit function gave or raised for this item.
        """
        waiter: _Waiter[T, R] = _Waiter(item)
        with self._lock:
            self._queue.append(waiter)
            leading = not self._leading
            self._leading = True
        if not leading:
            waiter.wake.wait()
        if not waiter.done:  # first in the queue: lead the group that holds this item
            self._lead()
        return waiter.result()

    def _lead(self) -> None:
        """Commit the queue's head, settle each of its items, and wake the next leader."""
        with self._lock:
            group, self._queue = self._queue[: self._max], self._queue[self._max :]
        try:
            outcomes = list(self._commit([w.item for w in group]))
            if len(outcomes) != len(group):
                raise RuntimeError(f"group commit gave {len(outcomes)} outcomes for {len(group)} items")
        except BaseException as exc:  # every item of the group fails with it
            outcomes = [exc] * len(group)
        finally:
            with self._lock:
                successor = self._queue[0] if self._queue else None
                self._leading = successor is not None
        self.commits += 1
        self.items += len(group)
        for waiter, outcome in zip(group, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                waiter.error = outcome
            else:
                waiter.value = outcome
            waiter.done = True
            waiter.wake.set()
        if successor is not None:
            successor.wake.set()
