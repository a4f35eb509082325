"""The shared backend: PostgreSQL through psycopg 3 and a connection pool.

A cluster shares one database: every node's actors lease from the same tables. Each store
(ledger, context, EHR outbox) lives in its own schema (``search_path``), so PHI tables can be
granted apart. Leasing uses ``SELECT ... FOR UPDATE SKIP LOCKED``; a stage that finds nothing to
do waits on ``LISTEN`` and is woken by the ``NOTIFY`` of the commit that made work for it.

The DSN comes from an environment variable named in the config and is never logged: errors
name the host and database only.

The server may restart under us. Every checkout sends an empty query first, so a connection
the server dropped is discarded and replaced before a transaction uses it. Once a connection
cannot be had, the store is *unreachable*: checkouts wait at most ``OUTAGE_CHECKOUT_S`` and
fail with ``DependencyUnavailable`` (a C-STORE is refused at once instead of hanging), and the
pool retries each lost connection for ``RECONNECT_S`` before it gives the slot up, so the next
checkout connects afresh instead of waiting out psycopg_pool's back-off of up to minutes. The
first connection that answers ends the outage.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from core.errors import DependencyUnavailable
from state.db import Row

__all__ = ["PostgresDatabase", "PostgresTx", "describe_dsn"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_AUDIT_LOCK = 0x50414353  # "PACS": one advisory lock key for the audit chain's appends
_RETRIED = (pg_errors.DeadlockDetected, pg_errors.SerializationFailure, pg_errors.UniqueViolation)
_ATTEMPTS = 5
_SCHEMA = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

CONNECT_TIMEOUT_S = 5
"""libpq ``connect_timeout`` of every connection: a host that does not answer fails, not hangs."""
OUTAGE_CHECKOUT_S = 2.0
"""Longest a checkout waits while the server is unreachable (the pool's own timeout otherwise)."""
RECONNECT_S = 2.0
"""How long the pool retries one lost connection (about every second) before giving up its slot."""


@functools.lru_cache(maxsize=1024)
def _pg(sql: str) -> str:
    """``?`` placeholders to psycopg's ``%s`` (a literal ``%`` doubled first)."""
    return sql.replace("%", "%%").replace("?", "%s")


def describe_dsn(dsn: str) -> str:
    """Host, port and database of a DSN, without user or password (for messages)."""
    try:
        parts = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparsable DSN>"
    return f"{parts.get('host', 'localhost')}:{parts.get('port', 5432)}/{parts.get('dbname', '')}"


class PostgresTx:
    """A transaction (or a read) on one pooled connection."""

    dialect = "postgresql"
    for_update = " FOR UPDATE"
    skip_locked = " FOR UPDATE SKIP LOCKED"
    chains_inline = False
    integrity_error: type[Exception] = psycopg.IntegrityError

    def __init__(self, conn: psycopg.Connection[Row]) -> None:
        self._conn = conn

    def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        """Run one statement; return the number of rows it changed."""
        return self._conn.execute(_pg(sql), tuple(args)).rowcount

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run one statement for each argument tuple (pipelined)."""
        with self._conn.cursor() as cur:
            cur.executemany(_pg(sql), [tuple(r) for r in rows])

    def all(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        """Every row as a dict."""
        return self._conn.execute(_pg(sql), tuple(args)).fetchall()

    def one(self, sql: str, args: Sequence[Any] = ()) -> Row | None:
        """The first row, or ``None``."""
        return self._conn.execute(_pg(sql), tuple(args)).fetchone()

    def lock_chain(self) -> None:
        """Take the audit chainer's advisory lock until this transaction ends."""
        self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (_AUDIT_LOCK,))

    def notify(self, channel: str, payload: str) -> None:
        """``NOTIFY channel`` at commit (duplicates within a transaction are folded)."""
        self._conn.execute("SELECT pg_notify(%s, %s)", (channel, payload))


class PostgresDatabase:
    """A pool of connections to one schema of one PostgreSQL database."""

    dialect = "postgresql"
    notifies = True

    def __init__(self, dsn: str, schema: str, pool_max: int = 4, timeout_s: float = 30.0) -> None:
        """Connect (the schema is created if missing).

        Args:
            dsn: libpq connection string or URL (from the environment, never from a file).
            schema: The store's schema (``search_path``).
            pool_max: Most connections this process opens (plus one for ``LISTEN``).
            timeout_s: Connect and pool checkout timeout.

        Raises:
            DependencyUnavailable: The server cannot be reached (the DSN is not in the message).
        """
        if not _SCHEMA.match(schema):
            raise ValueError(f"schema: got {schema!r}; expected a lower-case SQL identifier")
        self.schema = schema
        self._dsn = dsn
        self._where = describe_dsn(dsn)
        self._create_schema(timeout_s)
        self._pool: ConnectionPool[psycopg.Connection[Row]] = ConnectionPool(
            make_conninfo(dsn, options=f"-c search_path={schema}"),
            min_size=1,
            max_size=max(1, pool_max),
            timeout=timeout_s,
            reconnect_timeout=RECONNECT_S,
            open=True,
            kwargs={"autocommit": True, "row_factory": dict_row, "connect_timeout": CONNECT_TIMEOUT_S},
            name=f"pacsai-{schema}",
        )
        self._timeout = timeout_s
        self._unreachable_since: float | None = None  # monotonic time of the outage's start
        self._outage_lock = threading.Lock()
        self._events: dict[str, threading.Event] = {}
        self._events_lock = threading.Lock()
        self._listener: threading.Thread | None = None
        self._closed = threading.Event()
        self._submitted: ThreadPoolExecutor | None = None
        self._pool_max = max(1, pool_max)

    @property
    def url(self) -> str:
        """The store as a URL for the migration tool (``postgresql+psycopg://...``)."""
        parts = conninfo_to_dict(self._dsn)
        user = parts.get("user", "")
        auth = f"{user}:{parts['password']}@" if parts.get("password") else f"{user}@" if user else ""
        host = parts.get("host", "localhost")
        if host.startswith("/"):  # a Unix socket directory goes in the query string
            return (
                f"postgresql+psycopg://{auth}/{parts.get('dbname', '')}?host={host}"
                f"&port={parts.get('port', 5432)}&schema={self.schema}"
            )
        return (
            f"postgresql+psycopg://{auth}{host}:{parts.get('port', 5432)}/"
            f"{parts.get('dbname', '')}?schema={self.schema}"
        )

    def _create_schema(self, timeout_s: float) -> None:
        try:
            with psycopg.connect(self._dsn, autocommit=True, connect_timeout=max(1, int(timeout_s))) as conn:
                conn.execute(f"CREATE SCHEMA IF NOT EXISTS {self.schema}")
        except pg_errors.UniqueViolation:
            pass  # another process created it at the same moment
        except psycopg.OperationalError as exc:
            raise DependencyUnavailable(
                "postgresql", f"cannot connect to {self._where}: {type(exc).__name__}"
            ) from None

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Row]]:
        """A pooled connection that has just answered an empty query.

        A connection the server dropped (it restarted) fails that check and goes back to the
        pool, which discards it and connects a new one; the next pooled connection is tried.

        Raises:
            DependencyUnavailable: No connection answers (the server is down or unreachable).
        """
        error: Exception | None = None
        for _ in range(self._pool_max + 1):
            timeout = self._timeout if self._unreachable_since is None else min(self._timeout, OUTAGE_CHECKOUT_S)
            try:
                conn = self._pool.getconn(timeout)
            except psycopg.OperationalError as exc:  # PoolTimeout: nothing could connect in time
                self._unreachable(exc)
                raise self._unavailable(exc) from None
            try:
                ConnectionPool.check_connection(conn)
            except psycopg.Error as exc:
                self._pool.putconn(conn)
                error = exc
                self._unreachable(exc)
                continue
            self._reachable()
            try:
                yield conn
            finally:
                if conn.broken:  # lost in use: the next checkout will say whether it is back
                    self._unreachable(psycopg.OperationalError("connection lost"))
                self._pool.putconn(conn)
            return
        raise self._unavailable(error)

    def _unavailable(self, exc: Exception | None) -> DependencyUnavailable:
        return DependencyUnavailable("postgresql", f"{self._where}: {type(exc).__name__}: {exc}"[:500])

    def _unreachable(self, exc: Exception) -> None:
        with self._outage_lock:
            if self._unreachable_since is None:
                self._unreachable_since = time.monotonic()
                logger.warning(
                    "PostgreSQL at %s unreachable (%s); failing fast until it answers", self._where, type(exc).__name__
                )

    def _reachable(self) -> None:
        if self._unreachable_since is None:
            return
        with self._outage_lock:
            if self._unreachable_since is not None:
                logger.warning(
                    "PostgreSQL at %s answers again after %.1f s",
                    self._where,
                    time.monotonic() - self._unreachable_since,
                )
                self._unreachable_since = None

    def run(self, fn: Callable[[PostgresTx], T]) -> T:
        """Run ``fn`` in a transaction; retry on deadlock, serialisation or insert races.

        A transaction cut off by a lost connection is not retried: whether its commit happened
        is unknown, and the caller decides (the listener answers a failure status and the
        sender's re-send finds the instance, or not; a stage's transition finds its lease).

        Raises:
            DependencyUnavailable: The server cannot be reached, or the connection was lost.
        """
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                with self._connection() as conn, conn.transaction():
                    return fn(PostgresTx(conn))
            except _RETRIED as exc:
                if attempt == _ATTEMPTS:
                    raise
                logger.info("transaction retried after %s (attempt %d)", type(exc).__name__, attempt)
                time.sleep(0.005 * attempt)
            except psycopg.OperationalError as exc:
                raise self._unavailable(exc) from None
        raise AssertionError("unreachable")

    def submit(self, fn: Callable[[PostgresTx], T]) -> Future[T]:
        """Run ``fn`` as ``run`` does, on one of ``pool_max`` threads, and return at once:
        transactions submitted together run side by side and the server groups their commits.
        The future fails as ``run`` raises.
        """
        with self._events_lock:
            if self._submitted is None:
                self._submitted = ThreadPoolExecutor(self._pool_max, thread_name_prefix=f"pg-{self.schema}")
            return self._submitted.submit(self.run, fn)

    @contextmanager
    def read(self) -> Iterator[PostgresTx]:
        """A pooled autocommit connection (each statement sees committed data).

        Raises:
            DependencyUnavailable: The server cannot be reached, or the connection was lost.
        """
        try:
            with self._connection() as conn:
                yield PostgresTx(conn)
        except psycopg.OperationalError as exc:
            raise self._unavailable(exc) from None

    # ------------------------------------------------------------ LISTEN / NOTIFY
    def wait(self, channel: str, timeout_s: float) -> bool:
        """Wait for a ``NOTIFY`` on ``channel`` (the listening thread starts on first use)."""
        with self._events_lock:
            event = self._events.get(channel)
            if event is None:
                event = self._events[channel] = threading.Event()
            if self._listener is None:
                self._listener = threading.Thread(target=self._listen, name="pg-listen", daemon=True)
                self._listener.start()
        woken = event.wait(timeout_s)
        event.clear()
        return woken

    def wake(self, channel: str) -> None:
        """End this process's waits on ``channel`` now (without a round trip to the server)."""
        with self._events_lock:
            event = self._events.setdefault(channel, threading.Event())
        event.set()

    def _listen(self) -> None:
        """Keep one connection listening on every channel asked for; reconnect on failure.

        A ``NOTIFY`` sent while no connection listened is lost, so every waiter is woken once
        after a reconnection and looks at the ledger itself.
        """
        lost = False
        while not self._closed.is_set():
            try:
                with psycopg.connect(self._dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as conn:
                    conn.execute(f"SET search_path TO {self.schema}")
                    listening: set[str] = set()
                    while not self._closed.is_set():
                        with self._events_lock:
                            wanted = set(self._events) - listening
                        for channel in sorted(wanted):
                            conn.execute(f'LISTEN "{channel}"')
                            listening.add(channel)
                        if lost:
                            lost = False
                            logger.warning("LISTEN connection to %s is back", self._where)
                            with self._events_lock:
                                for event in self._events.values():
                                    event.set()
                        for note in conn.notifies(timeout=0.5):
                            event = self._events.get(note.channel)
                            if event is not None:
                                event.set()
            except psycopg.Error as exc:
                if not lost:
                    logger.warning("LISTEN connection to %s lost (%s); reconnecting", self._where, type(exc).__name__)
                lost = True
                self._closed.wait(1.0)

    def channel(self, topic: str) -> str:
        """``<schema>_<topic>``: channels are per database, so the schema keeps stores apart."""
        return f"{self.schema}_{topic}"

    def checkpoint(self) -> int:
        """Nothing to do: the server checkpoints its WAL itself, off every commit's path."""
        return 0

    def close(self) -> None:
        """Finish what was submitted, close the pool and stop listening."""
        if self._submitted is not None:
            self._submitted.shutdown(wait=True)
        self._closed.set()
        self._pool.close()
