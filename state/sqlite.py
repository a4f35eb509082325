"""The embedded backend: one SQLite file per store, WAL, ``synchronous=FULL``.

Each process opens its own connection (``connect``: the one place that sets the pragmas);
SQLite serialises the processes' writers (``BEGIN IMMEDIATE``). A commit is on disk when it
returns (WAL + FULL fsyncs the log), which is what lets the listener answer C-STORE success
after its ledger commit.

Group commit: the threads of one process (a stage's workers, the listener's associations) that
want to write while another thread's commit is in progress queue up, and the next of them runs
all queued transactions in one ``BEGIN IMMEDIATE ... COMMIT``, each inside its own SAVEPOINT:
one fsync for many, each caller's changes still atomic (a failing one rolls back only itself),
and nobody returns before the commit that holds its changes. The end of a commit wakes every
queued caller at once: those it committed return, and one of the others leads the next group
(a caller whose work is done never waits behind the next group's fsync).

Checkpoints: by default a commit that finds the WAL over 1,000 pages copies it back into the
database file itself (SQLite's autocheckpoint), so now and then one caller waits for that copy
and its fsync. A store whose commits are acknowledged to a peer (the HL7 context store: the ACK
waits for the commit) opens with ``autocheckpoint=False`` and calls ``checkpoint()`` from a
background loop instead: a PASSIVE checkpoint on a connection of its own, which neither waits
for nor blocks the writers.
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
    integrity_error: type[Exception] = sqlite3.IntegrityError

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

    def __init__(
        self, path: Path, busy_timeout_s: float = 30.0, *, autocheckpoint: bool = True
    ) -> None:
        """Open (and create) the file.

        Args:
            path: The SQLite file.
            busy_timeout_s: How long a writer waits for another process's transaction.
            autocheckpoint: Let commits checkpoint the WAL (SQLite's default); ``False``: the
                owner calls ``checkpoint()`` in the background (module docstring).
        """
        self.path = path
        self._lock = threading.RLock()
        self._queue_lock = threading.Lock()
        self._turn = threading.Condition(threading.Lock())  # guards _queue and _leader
        self._queue: list[_Pending] = []
        self._leader: int | None = None  # the thread committing a group now
        self._busy_timeout_s = busy_timeout_s
        self._con = connect(path, busy_timeout_s)
        self._con.execute("PRAGMA busy_timeout=0")  # writers wait in _begin; readers never block
        self._writer_lock = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        self._events: dict[str, threading.Event] = {}
        if not autocheckpoint:
            self._con.execute("PRAGMA wal_autocheckpoint=0")
        self._checkpoint_lock = threading.Lock()
        self._checkpoint_con: sqlite3.Connection | None = None
        self._checkpointed = 0
        self.commits = 0
        """Commits of this process (each one fsync), for benchmarks and tests."""
        self.items = 0
        """Transactions (``run`` calls) those commits held: ``items / commits`` is the group size."""

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
            RuntimeError: Called from inside ``fn`` of this store (one transaction at a time).
            Whatever ``fn`` raised (only its own changes are rolled back), or the commit's
            ``sqlite3`` error (nothing of the group is stored).
        """
        pending = _Pending(fn)
        with self._turn:
            if self._leader == threading.get_ident():
                raise RuntimeError("Database.run called inside a transaction of the same store")
            self._queue.append(pending)
            while self._leader is not None and not pending.done:
                self._turn.wait()
            if pending.done:  # a leader before us committed it in its group
                return pending.result()  # type: ignore[no-any-return]
            self._leader = threading.get_ident()
            group, self._queue = self._queue, []
        try:
            with self._lock:
                self._commit(group)
        finally:
            with self._turn:
                self._leader = None
                self._turn.notify_all()
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
            self.commits += 1
            self.items += len(group)
        except BaseException as exc:
            if self._con.in_transaction:
                self._end("ROLLBACK")
            for p in group:
                p.fail(exc)
            return
        for p in group:
            p.done = True

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

    def checkpoint(self) -> int:
        """Copy committed WAL frames into the database file (PASSIVE, on a connection of its
        own: it neither waits for nor blocks this process's writers); return how many frames
        were copied since the last call.

        Raises:
            sqlite3.Error: The checkpoint failed (the next one tries again).
        """
        with self._checkpoint_lock:
            if self._checkpoint_con is None:
                self._checkpoint_con = connect(self.path, self._busy_timeout_s)
            row = self._checkpoint_con.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            done = max(0, int(row["checkpointed"])) if row else 0
            # the count is of the WAL as it stands; a writer restarts the WAL once it is all copied
            fresh = done - self._checkpointed if done >= self._checkpointed else done
            self._checkpointed = done
        return fresh

    def close(self) -> None:
        """Close the connections."""
        with self._checkpoint_lock:
            if self._checkpoint_con is not None:
                self._checkpoint_con.close()
                self._checkpoint_con = None
        with self._lock:
            self._con.close()
            os.close(self._writer_lock)
