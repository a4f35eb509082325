"""One contract over SQLite and PostgreSQL: transactions, rows as dicts, wake-ups.

Repositories (``state.ledger``) write SQL once, with ``?`` placeholders and the portable subset
both databases share (``INSERT ... ON CONFLICT``, ``UPDATE ... RETURNING``, ``CASE``). What
differs is named here and nowhere else:

- ``Tx.for_update`` / ``Tx.skip_locked``: row locks for leasing on PostgreSQL (``SELECT ... FOR
  UPDATE SKIP LOCKED``); empty on SQLite, whose ``BEGIN IMMEDIATE`` already serialises writers.
- ``Tx.chains_inline``: SQLite chains audit events inside each transaction (its writers are
  serialised anyway); PostgreSQL inserts them unchained and ``AuditLog.chain`` links them in
  commit order, so no lock is held through a commit's fsync.
- ``Tx.notify`` / ``Database.wait``: PostgreSQL wakes waiting stages with ``LISTEN/NOTIFY`` at
  commit; SQLite has no such thing, so waiting there is a short sleep (polling).
- ``Tx.integrity_error``: the exception a constraint violation raises, for a store that undoes
  one step in a ``SAVEPOINT`` and goes on (the context store).
- ``Database.checkpoint``: SQLite's WAL copied back in the background by a store that turned
  autocheckpoint off; nothing to do on PostgreSQL, whose server checkpoints on its own.

Savepoints are portable SQL: ``SAVEPOINT s``, ``ROLLBACK TO SAVEPOINT s``, ``RELEASE SAVEPOINT s``.

``Database.run(fn)`` runs ``fn(tx)`` in one write transaction and commits; on PostgreSQL a
deadlock, serialisation failure or a lost insert race is retried with a fresh transaction, so
``fn`` must be repeatable (everything it changes is in the transaction). ``Database.submit(fn)``
does the same without waiting (a future), for an event loop that must not block: SQLite
group-commits it with whatever else is queued, PostgreSQL runs it on a small thread pool.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import AbstractContextManager
from typing import Any, Protocol, TypeVar

__all__ = ["Database", "Row", "Tx", "chunks", "marks"]

Row = dict[str, Any]
T = TypeVar("T")


class Tx(Protocol):
    """One transaction (or, for ``Database.read``, one consistent read)."""

    dialect: str
    """``"sqlite"`` or ``"postgresql"``."""
    for_update: str
    """`` FOR UPDATE`` on PostgreSQL, empty on SQLite."""
    skip_locked: str
    """`` FOR UPDATE SKIP LOCKED`` on PostgreSQL, empty on SQLite."""
    chains_inline: bool
    """Whether audit events are chained inside the transaction that appends them."""
    integrity_error: type[Exception]
    """What a constraint violation raises (``sqlite3.IntegrityError``, psycopg's)."""

    def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        """Run one statement; return the number of rows it changed."""
        ...

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run one statement for each argument tuple."""
        ...

    def all(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        """Run a query (or a statement with ``RETURNING``); every row as a dict."""
        ...

    def one(self, sql: str, args: Sequence[Any] = ()) -> Row | None:
        """The first row of a query, or ``None``."""
        ...

    def lock_chain(self) -> None:
        """Serialise chaining of audit events until this transaction ends (the chainer)."""
        ...

    def notify(self, channel: str, payload: str) -> None:
        """Wake waiters on ``channel`` once this transaction commits (no-op on SQLite)."""
        ...


class Database(Protocol):
    """A connection (pool) to one store: the ledger, the context store or the EHR outbox."""

    dialect: str
    notifies: bool
    """Whether ``wait`` is woken by ``Tx.notify`` (else it only sleeps)."""
    url: str
    """The store as a URL for the migration tool (may hold a password: never log it)."""

    def run(self, fn: Callable[[Tx], T]) -> T:
        """Run ``fn`` in a write transaction and commit; retried on transient conflicts."""
        ...

    def submit(self, fn: Callable[[Tx], T]) -> Future[T]:
        """Like ``run``, but return at once; the future settles after the commit."""
        ...

    def read(self) -> AbstractContextManager[Tx]:
        """A read-only view (autocommit; each statement sees committed data)."""
        ...

    def wait(self, channel: str, timeout_s: float) -> bool:
        """Wait until ``channel`` is notified or ``timeout_s`` passes; return whether notified."""
        ...

    def channel(self, topic: str) -> str:
        """The notification channel of ``topic`` for this store (unique per store)."""
        ...

    def wake(self, channel: str) -> None:
        """Wake this process's waiters on ``channel`` now (e.g. a stage slot came free)."""
        ...

    def checkpoint(self) -> int:
        """Copy the write-ahead log into the database now; return how much was copied.

        Only SQLite with autocheckpoint off needs it (``state.sqlite``); 0 elsewhere.
        """
        ...

    def close(self) -> None:
        """Release connections."""
        ...


def chunks(items: Sequence[T], size: int = 500) -> Iterator[Sequence[T]]:
    """Split ``items`` for ``IN (...)`` lists (SQLite binds at most 999 parameters)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def marks(n: int) -> str:
    """``?,?,...`` for ``n`` parameters.

    >>> marks(3)
    '?,?,?'
    """
    return ",".join("?" * n)
