"""Group commit: many writers' transactions share one SQLite commit, so one fsync.

Durability before acknowledgement costs an fsync; doing one per message caps the rate at the
disk's fsync rate and makes every message wait for the ones before it. Here one writer thread
owns the connection (WAL, ``synchronous=FULL``: every commit fsyncs the WAL). Work submitted
from any thread (the MLLP event loop, the audit pump) queues up while the previous commit's
fsync runs and then commits together in the next one. Each item runs inside its own
SAVEPOINT, so one item's failure rolls back only that item. A future resolves only after the
COMMIT returned, i.e. after the data is on disk: that is the point where an ACK may go out.

The writer connection does not checkpoint the WAL itself (``wal_autocheckpoint=0``); a
background thread runs PASSIVE checkpoints, so no acknowledgement waits for one.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from core.errors import TransientIOError

__all__ = ["GroupCommitter", "connect"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
_STOP = object()


def connect(path: Path, schema: str = "", busy_timeout_s: float = 30.0) -> sqlite3.Connection:
    """Open a WAL connection with ``synchronous=FULL`` (and create ``schema`` if given)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(
        str(path), isolation_level=None, check_same_thread=False, timeout=busy_timeout_s
    )
    con.row_factory = sqlite3.Row
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=FULL")
    con.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
    if schema:
        con.executescript(schema)
    return con


class GroupCommitter:
    """The single writer of one SQLite file; ``submit`` returns when the work is durable."""

    def __init__(
        self, path: Path, schema: str = "", batch_max: int = 256, checkpoint_s: float = 1.0
    ) -> None:
        """Open the file and start the writer and checkpoint threads.

        Args:
            path: The SQLite file.
            schema: DDL run once at open (idempotent ``CREATE ... IF NOT EXISTS``).
            batch_max: Most work items in one commit.
            checkpoint_s: Period of the background WAL checkpoint.
        """
        self._con = connect(path, schema)
        self._con.execute("PRAGMA wal_autocheckpoint=0")
        self._path = path
        self._batch_max = batch_max
        self._checkpoint_s = checkpoint_s
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._stop = threading.Event()
        self.commits = 0
        self.items = 0
        self._writer = threading.Thread(target=self._loop, name="group-commit", daemon=True)
        self._checkpointer = threading.Thread(
            target=self._checkpoint_loop, name="wal-checkpoint", daemon=True
        )
        self._writer.start()
        self._checkpointer.start()

    def submit(self, work: Callable[[sqlite3.Cursor], T]) -> Future[T]:
        """Queue ``work(cursor)``; the future resolves after the commit that includes it.

        The future raises what ``work`` raised (only that item is rolled back), or
        ``TransientIOError`` when the commit itself failed (nothing of the batch is stored).
        """
        future: Future[T] = Future()
        if self._stop.is_set():
            future.set_exception(TransientIOError("the store is closed"))
            return future
        self._queue.put((work, future))
        return future

    def close(self, timeout_s: float = 10.0) -> None:
        """Commit what is queued, then stop both threads and close the connection."""
        self._stop.set()
        self._queue.put(_STOP)
        self._writer.join(timeout_s)
        self._checkpointer.join(timeout_s)
        self._con.close()

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch = [first]
            while len(batch) < self._batch_max:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    self._commit(batch)
                    return
                batch.append(item)
            self._commit(batch)

    def _commit(self, batch: list[tuple[Callable[[sqlite3.Cursor], Any], Future[Any]]]) -> None:
        outcomes: list[tuple[Future[Any], Any, BaseException | None]] = []
        cur = self._con.cursor()
        try:
            cur.execute("BEGIN IMMEDIATE")
            for work, future in batch:
                outcomes.append((future, *self._run(cur, work)))
            cur.execute("COMMIT")  # synchronous=FULL: the WAL is fsynced here
        except sqlite3.Error as exc:
            logger.error("group commit of %d item(s) failed: %s", len(batch), exc)
            if self._con.in_transaction:
                self._con.execute("ROLLBACK")
            error = TransientIOError(f"the store could not commit: {exc}")
            for _, future in batch:
                future.set_exception(error)
            return
        self.commits += 1
        self.items += len(batch)
        for future, result, exc in outcomes:
            if exc is None:
                future.set_result(result)
            else:
                future.set_exception(exc)

    @staticmethod
    def _run(
        cur: sqlite3.Cursor, work: Callable[[sqlite3.Cursor], Any]
    ) -> tuple[Any, BaseException | None]:
        cur.execute("SAVEPOINT item")
        try:
            result = work(cur)
        except Exception as exc:  # handed to the submitter's future, not swallowed
            cur.execute("ROLLBACK TO item")
            cur.execute("RELEASE item")
            return None, exc
        cur.execute("RELEASE item")
        return result, None

    def _checkpoint_loop(self) -> None:
        con = connect(self._path)
        try:
            while not self._stop.wait(self._checkpoint_s):
                try:
                    con.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as exc:  # busy or I/O: the next round tries again
                    logger.warning("WAL checkpoint failed: %s", exc)
        finally:
            con.close()
