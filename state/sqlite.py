"""The embedded backend: one SQLite file per store, WAL, ``synchronous=FULL``.

Each process opens its own connection (``connect``: the one place that sets the pragmas) and
serialises its threads on it; SQLite serialises the processes' writers (``BEGIN IMMEDIATE``,
``busy_timeout``). A commit is on disk when it returns (WAL + FULL fsyncs the log), which is what
lets the listener answer C-STORE success after its ledger commit.
"""

from __future__ import annotations

import sqlite3
import threading
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

    def lock_audit(self) -> None:
        """Nothing to do: ``BEGIN IMMEDIATE`` holds the database's write lock already."""

    def notify(self, channel: str, payload: str) -> None:
        """SQLite cannot wake other processes; waiters poll."""


class SqliteDatabase:
    """One store file, one connection per process, threads take turns."""

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
        self._con = connect(path, busy_timeout_s)
        self._idle = threading.Event()

    @property
    def url(self) -> str:
        """The store as a URL (for the migration tool)."""
        return f"sqlite:///{self.path}"

    def run(self, fn: Callable[[SqliteTx], T]) -> T:
        """Run ``fn`` in a ``BEGIN IMMEDIATE`` transaction; commit, or roll back if it raises."""
        with self._lock:
            self._con.execute("BEGIN IMMEDIATE")
            try:
                result = fn(SqliteTx(self._con))
            except BaseException:
                self._con.execute("ROLLBACK")
                raise
            self._con.execute("COMMIT")
            return result

    @contextmanager
    def read(self) -> Iterator[SqliteTx]:
        """Reads on this process's connection (each statement sees committed data)."""
        with self._lock:
            yield SqliteTx(self._con)

    def wait(self, channel: str, timeout_s: float) -> bool:
        """Sleep ``timeout_s``: SQLite has no notifications, so callers poll."""
        self._idle.wait(timeout_s)
        return False

    def channel(self, topic: str) -> str:
        """Channels are unused on SQLite; the topic itself."""
        return topic

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._con.close()
