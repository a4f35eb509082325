"""The embedded backend: one SQLite file per store, WAL, ``synchronous=FULL``.

Each process opens its own connection (``connect``: the one place that sets the pragmas);
SQLite serialises the processes' writers (``BEGIN IMMEDIATE``). A commit is on disk when it
returns (WAL + FULL fsyncs the log), which is what lets the listener answer C-STORE success
after its ledger commit.

Group commit: the threads of one process (a stage's workers, the listener's associations) that
want to write while another thread's commit is in progress queue up, and the next of them runs
all queued transactions in one ``BEGIN IMMEDIATE ... COMMIT``, each inside its own SAVEPOINT:
one fsync for many, each caller's changes still atomic (a failing one rolls back only itself),
and nobody returns before the commit that holds its changes.
"""

from __future__ import annotations

import fcntl
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from state.db import Row

__all__ = ["SqliteDatabase", "SqliteTx", "connect"]

T = TypeVar("T")


def _dict_row(cursor: sqlite3.Cursor, row: tuple[Any, ...]) -> Row:
    return {d[0]: v for d, v in zip(cursor.description, row, strict=True)}


def connect(path: Path, busy_timeout_s: float = 30.0) -> sqlite3.Connection:
    """Open a store file: WAL, ``synchronous=FULL``, a busy timeout, rows as dicts.

    The connection is in autocommit mode (``isolation_level=None``): transactions are explicit.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(
        str(path), isolation_level=None, check_same_thread=False, timeout=busy_timeout_s
    )
    con.row_factory = _dict_row
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=FULL")
    con.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
    return con


class SqliteTx:
    """A transaction (or a read) on one SQLite connection."""

    dialect = "sqlite"
    for_update = ""
    skip_locked = ""
    chains_inline = True

    def __init__(self, con: sqlite3.Connection) -> None:
        self._con = con

    def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        """Run one statement; return the number of rows it changed."""
        return self._con.execute(sql, tuple(args)).rowcount

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run one statement for each argument tuple."""
        self._con.executemany(sql, [tuple(r) for r in rows])

    def all(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        """Every row as a dict."""
        rows: list[Row] = self._con.execute(sql, tuple(args)).fetchall()
        return rows

    def one(self, sql: str, args: Sequence[Any] = ()) -> Row | None:
        """The first row, or ``None``."""
        row: Row | None = self._con.execute(sql, tuple(args)).fetchone()
        return row

    def lock_chain(self) -> None:
        """Nothing to do: ``BEGIN IMMEDIATE`` holds the database's write lock already."""

    def notify(self, channel: str, payload: str) -> None:
        """SQLite cannot wake other processes; waiters poll."""


class _Pending:
    """One caller's transaction function, waiting for (or done by) a group commit."""

    __slots__ = ("done", "error", "fn", "value")

    def __init__(self, fn: Callable[[SqliteTx], Any]) -> None:
        self.fn = fn
        self.value: Any = None
        self.error: BaseException | None = None
        self.done = False

    def fail(self, exc: BaseException) -> None:
        self.value, self.error, self.done = None, exc, True

    def result(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.value


class SqliteDatabase:
    """One store file, one connection per process; its threads' writes are group-committed."""

    dialect = "sqlite"
    notifies = False

    def __init__(self, path: Path, busy_timeout_s: float = 30.0) -> None:
        """Open (and create) the file.

        Args:
            path: The SQLite file.
            busy_timeout_s: How long a writer waits for another process's transaction.
        """
        self.path = path
        self._lock = threading.RLock()
        self._queue_lock = threading.Lock()
        self._queue: list[_Pending] = []
        self._busy_timeout_s = busy_timeout_s
        self._con = connect(path, busy_timeout_s)
        self._con.execute("PRAGMA busy_timeout=0")  # writers wait in _begin; readers never block
        self._writer_lock = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        self._events: dict[str, threading.Event] = {}

    @property
    def url(self) -> str:
        """The store as a URL (for the migration tool)."""
        return f"sqlite:///{self.path}"

    def _begin(self) -> None:
        """Take the writers' file lock, then ``BEGIN IMMEDIATE``.

        Every writer of the file queues on an advisory lock (``flock`` on ``<file>.lock``): the
        kernel hands it to the next waiter the moment it is released. SQLite's own busy handler
        sleeps 1, 2, 5, 10... ms between tries while a ledger transaction holds the lock for
        well under a millisecond, so with several stage processes the database would sit idle
        while they all slept. A writer that does not take the file lock (a migration, the
        ``sqlite3`` shell) is waited for in short, jittered steps, up to the busy timeout.
        """
        fcntl.flock(self._writer_lock, fcntl.LOCK_EX)
        deadline = time.monotonic() + self._busy_timeout_s
        while True:
            try:
                self._con.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    fcntl.flock(self._writer_lock, fcntl.LOCK_UN)
                    raise
                time.sleep(random.uniform(0.0001, 0.0006))

    def _end(self, sql: str) -> None:
        """``COMMIT`` or ``ROLLBACK``, then hand the writers' lock on."""
        try:
            self._con.execute(sql)
        finally:
            fcntl.flock(self._writer_lock, fcntl.LOCK_UN)

    def run(self, fn: Callable[[SqliteTx], T]) -> T:
        """Run ``fn`` in a write transaction and commit (group commit; module docstring).

        Raises:
            Whatever ``fn`` raised (only its own changes are rolled back), or the commit's
            ``sqlite3`` error (nothing of the group is stored).
        """
        pending = _Pending(fn)
        with self._queue_lock:
            self._queue.append(pending)
        with self._lock:
            if not pending.done:  # else a thread before us committed it in its group
                with self._queue_lock:
                    group, self._queue = self._queue, []
                self._commit(group)
        return pending.result()  # type: ignore[no-any-return]

    def _commit(self, group: list[_Pending]) -> None:
        try:
            self._begin()
        except BaseException as exc:
            for p in group:
                p.fail(exc)
            return
        try:
            tx = SqliteTx(self._con)
            if len(group) == 1:  # alone: the transaction is its own, no savepoint needed
                self._alone(tx, group[0])
                return
            for p in group:
                self._con.execute("SAVEPOINT item")
                try:
                    p.value = p.fn(tx)
                    self._con.execute("RELEASE item")
                except BaseException as exc:  # only this item is undone
                    self._con.execute("ROLLBACK TO item")
                    self._con.execute("RELEASE item")
                    p.error = exc
            self._end("COMMIT")
        except BaseException as exc:
            if self._con.in_transaction:
                self._end("ROLLBACK")
            for p in group:
                p.fail(exc)
            return
        for p in group:
            p.done = True

    def _alone(self, tx: SqliteTx, pending: _Pending) -> None:
        """One caller's transaction: commit it, or roll it back if its function raised."""
        try:
            pending.value = pending.fn(tx)
        except BaseException as exc:
            self._end("ROLLBACK")
            pending.fail(exc)
            return
        self._end("COMMIT")
        pending.done = True

    @contextmanager
    def read(self) -> Iterator[SqliteTx]:
        """Reads on this process's connection (each statement sees committed data)."""
        with self._lock:
            yield SqliteTx(self._con)

    def _event(self, channel: str) -> threading.Event:
        with self._queue_lock:
            return self._events.setdefault(channel, threading.Event())

    def wait(self, channel: str, timeout_s: float) -> bool:
        """Sleep up to ``timeout_s`` (SQLite cannot notify other processes, so callers poll);
        ``wake`` from this process ends the sleep early."""
        event = self._event(channel)
        woken = event.wait(timeout_s)
        event.clear()
        return woken

    def wake(self, channel: str) -> None:
        """End this process's waits on ``channel`` now."""
        self._event(channel).set()

    def channel(self, topic: str) -> str:
        """Channels are unused on SQLite; the topic itself."""
        return topic

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._con.close()
            os.close(self._writer_lock)
