"""The embedded backend: one SQLite file per store, WAL, ``synchronous=FULL``.

Each process opens its own connection (``connect``: the one place that sets the pragmas);
SQLite serialises the processes' writers (``BEGIN IMMEDIATE``). A commit is on disk when it
returns (WAL + FULL fsyncs the log), which is what lets the listener answer C-STORE success
after its ledger commit.

Group commit: the threads of one process (a stage's workers, the listener's associations) that
want to write while another thread's commit is in progress queue up, and the next of them runs
all queued transactions in one ``BEGIN IMMEDIATE ... COMMIT``, each inside its own SAVEPOINT:
one fsync for many, each caller's changes still atomic (a failing one rolls back only itself),
and nobody returns before the commit that holds its changes. The end of a commit wakes each
caller it held (and only those: a caller whose work is done never waits behind the next
group's fsync) and hands the lead to the first caller queued meanwhile.

``submit(fn)`` queues a transaction without waiting for it (an event loop's way in: the HL7
listener). What is submitted is led by the store's writer thread, started on first use, which
settles each caller's future the moment the commit is done: no thread wakes per message, so a
listener's ACK waits for its commit and nothing else. ``group_max`` caps a group's size
(``hl7.batch_max``; 1: every transaction commits alone).

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
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from state.db import Row

__all__ = ["SqliteDatabase", "SqliteTx", "connect"]

T = TypeVar("T")


def _dict_row(cursor: sqlite3.Cursor, row: tuple[Any, ...]) -> Row:
    return {d[0]: v for d, v in zip(cursor.description, row, strict=True)}


def connect(path: Path, busy_timeout_s: float = 30.0, page_size: int | None = None) -> sqlite3.Connection:
    """Open a store file: WAL, ``synchronous=FULL``, a busy timeout, rows as dicts.

    The connection is in autocommit mode (``isolation_level=None``): transactions are explicit.
    ``page_size`` applies to a file this call creates (SQLite's default, 4096, when ``None``);
    a file that exists keeps the page size it was created with.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=busy_timeout_s)
    con.row_factory = _dict_row
    if page_size is not None:  # before WAL mode: the file's first write fixes it
        con.execute(f"PRAGMA page_size={int(page_size)}")
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


_WRITER = -1
"""``_leader`` while the store's writer thread leads (thread idents are positive)."""


class _Pending:
    """One caller's transaction function, waiting for (or done by) a group commit."""

    __slots__ = ("done", "error", "fn", "future", "thread", "value", "wake")

    def __init__(self, fn: Callable[[SqliteTx], Any], future: Future[Any] | None = None) -> None:
        self.fn = fn
        self.value: Any = None
        self.error: BaseException | None = None
        self.done = False
        self.future = future
        """``submit``: settled by the leader; the caller does not wait in a thread."""
        self.thread = _WRITER if future is not None else threading.get_ident()
        """Who leads when this is first in the queue: its own thread, or the writer."""
        self.wake = threading.Event() if future is None else None
        """``run``: set when the work is done, or when this caller is to lead the next group."""

    def fail(self, exc: BaseException) -> None:
        self.value, self.error, self.done = None, exc, True

    def settle(self) -> None:
        """Tell the caller: settle its future, or wake its thread."""
        if self.future is None:
            self.signal()
        elif self.error is not None:
            self.future.set_exception(self.error)
        else:
            self.future.set_result(self.value)

    def signal(self) -> None:
        """Wake the thread of a ``run`` caller."""
        if self.wake is not None:
            self.wake.set()

    def result(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.value


class SqliteDatabase:
    """One store file, one connection per process; its threads' writes are group-committed."""

    dialect = "sqlite"
    notifies = False

    def __init__(
        self,
        path: Path,
        busy_timeout_s: float = 30.0,
        *,
        autocheckpoint: bool = True,
        group_max: int = 0,
        page_size: int | None = None,
    ) -> None:
        """Open (and create) the file.

        Args:
            path: The SQLite file.
            busy_timeout_s: How long a writer waits for another process's transaction.
            autocheckpoint: Let commits checkpoint the WAL (SQLite's default); ``False``: the
                owner calls ``checkpoint()`` in the background (module docstring).
            group_max: Most transactions in one commit (0: no limit).
            page_size: The page size of a file created here (``connect``).
        """
        self.path = path
        self._lock = threading.RLock()
        self._queue_lock = threading.Lock()
        self._turn = threading.Lock()  # guards _queue, _leader and _writer
        self._queue: list[_Pending] = []
        self._leader: int | None = None  # who commits a group now: a thread, or _WRITER
        self._group_max = group_max or None
        self._writer: threading.Thread | None = None
        self._writer_wake = threading.Event()
        self._closing = False
        self._busy_timeout_s = busy_timeout_s
        self._con = connect(path, busy_timeout_s, page_size)
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
            if self._leader == pending.thread or (
                self._leader == _WRITER and threading.current_thread() is self._writer
            ):
                raise RuntimeError("Database.run called inside a transaction of the same store")
            self._queue.append(pending)
            leading = self._leader is None
            if leading:
                self._leader = pending.thread
        if not leading and pending.wake is not None:
            pending.wake.wait()
        if not pending.done:  # we lead: first in the queue, so in the group
            self._lead()
        return pending.result()  # type: ignore[no-any-return]

    def submit(self, fn: Callable[[SqliteTx], T]) -> Future[T]:
        """Queue ``fn`` for the next group commit and return at once (module docstring).

        The future gives what ``run`` would have returned or raised, after the commit.
        """
        future: Future[T] = Future()
        future.set_running_or_notify_cancel()  # queued work cannot be withdrawn
        pending = _Pending(fn, future)
        with self._turn:
            if self._closing:
                raise RuntimeError("the store is closed")
            self._queue.append(pending)
            if self._writer is None:
                self._writer = threading.Thread(target=self._write, name="sqlite-writer", daemon=True)
                self._writer.start()
            if self._leader is not None:
                return future  # the leader hands the lead to the writer when it comes up
            self._leader = _WRITER
        self._writer_wake.set()
        return future

    def _write(self) -> None:
        """The writer thread: lead while the lead is the writer's, else sleep."""
        while True:
            self._writer_wake.wait()
            self._writer_wake.clear()
            while True:
                with self._turn:
                    mine = self._leader == _WRITER and bool(self._queue)
                    if not mine and self._closing:
                        return
                if not mine:
                    break
                self._lead()

    def _lead(self) -> None:
        """Commit the queue's head (up to ``group_max``), tell each caller it held, and hand the
        lead to whoever is first in the queue now (only callers with news wake)."""
        with self._turn:
            cut = self._group_max or len(self._queue)
            group, self._queue = self._queue[:cut], self._queue[cut:]
        try:
            with self._lock:
                self._commit(group)
        finally:
            with self._turn:
                successor = self._queue[0] if self._queue else None
                self._leader = successor.thread if successor else None
            for p in group:
                p.settle()
            if successor is not None and successor.thread == _WRITER:
                self._writer_wake.set()
            elif successor is not None:
                successor.signal()

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

    def _alone(self, tx: SqliteTx, pending: _Pending) -> None:
        """One caller's transaction: commit it, or roll it back if its function raised."""
        try:
            pending.value = pending.fn(tx)
        except BaseException as exc:
            self._end("ROLLBACK")
            pending.fail(exc)
            return
        self._end("COMMIT")
        self.commits += 1
        self.items += 1
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

    def close(self, timeout_s: float = 10.0) -> None:
        """Commit what was submitted, stop the writer thread, close the connections."""
        with self._turn:
            self._closing = True
            writer = self._writer
        if writer is not None:
            self._writer_wake.set()
            writer.join(timeout_s)
        with self._turn:
            left, self._queue = self._queue, []
        for p in left:  # only if the writer did not finish in time
            p.fail(RuntimeError("the store was closed before this transaction committed"))
            p.settle()
        with self._checkpoint_lock:
            if self._checkpoint_con is not None:
                self._checkpoint_con.close()
                self._checkpoint_con = None
        with self._lock:
            self._con.close()
            os.close(self._writer_lock)
