"""Versioned schemas, applied at start with yoyo-migrations (SQLite and PostgreSQL alike).

Each store has its own migrations per dialect under ``state/migrations/<store>/<dialect>/``,
numbered ``NNNN_<what>.sql``. Opening a store applies those not yet applied, under yoyo's lock,
so several processes starting at once apply each migration exactly once. A migration is never
edited after it shipped: a change is a new file. The first migration of the ledger is the
schema as it stood before migrations existed (every statement ``IF NOT EXISTS``), so a ledger
written by an earlier release is adopted as it is.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from state.db import Database

__all__ = ["MIGRATIONS", "migrate", "migrate_store", "pending", "up_to_date"]

MIGRATIONS = Path(__file__).with_name("migrations")
"""Root of the migration files."""

logging.getLogger("yoyo").setLevel(logging.WARNING)  # one line per applied step is noise


def _source(store: str, dialect: str) -> Path:
    path = MIGRATIONS / store / dialect
    if not path.is_dir():
        raise ValueError(f"store/dialect: got {store}/{dialect}; no migrations under {path}")
    return path


def _ids(store: str, dialect: str) -> set[str]:
    """The migration ids yoyo reads from the store's directory (file names without suffix)."""
    return {
        p.stem
        for p in _source(store, dialect).iterdir()
        if p.is_file() and p.suffix in (".sql", ".py") and ".rollback" not in p.name
    }


def up_to_date(db: Database, store: str) -> bool:
    """Whether every migration of ``store`` is applied, read from yoyo's own table without yoyo.

    Every actor and every ``pacsai`` run opens the ledger; importing yoyo (and sqlparse) to learn
    that nothing is pending cost each of those processes ~0.15 s of CPU. A store never migrated
    has no table (the query fails): then it is not up to date.
    """
    try:
        with db.read() as tx:
            applied = {str(r["migration_id"]) for r in tx.all("SELECT migration_id FROM _yoyo_migration")}
    except Exception:  # noqa: BLE001 - no table yet, or another backend's error for it
        return False
    return _ids(store, db.dialect) <= applied


def migrate_store(db: Database, store: str) -> list[str]:
    """Apply the store's pending migrations, checking cheaply first (``up_to_date``)."""
    return [] if up_to_date(db, store) else migrate(db.url, store, db.dialect)


def migrate(url: str, store: str, dialect: str) -> list[str]:
    """Apply the store's pending migrations; return their ids (empty when up to date).

    Args:
        url: The store as yoyo wants it (``sqlite:///...`` or ``postgresql+psycopg://...``).
        store: ``ledger``, ``context`` or ``ehr``.
        dialect: ``sqlite`` or ``postgresql``.
    """
    from yoyo import get_backend, read_migrations  # only when something may be pending

    backend = get_backend(url)
    try:
        migrations = read_migrations(str(_source(store, dialect)))
        with backend.lock():
            todo = backend.to_apply(migrations)
            backend.apply_migrations(todo)
        return [m.id for m in todo]
    finally:
        backend.connection.close()


def pending(url: str, store: str, dialect: str) -> list[str]:
    """The ids of migrations not yet applied (``pacsai status`` and tests)."""
    from yoyo import get_backend, read_migrations

    backend = get_backend(url)
    try:
        return [m.id for m in backend.to_apply(read_migrations(str(_source(store, dialect))))]
    finally:
        backend.connection.close()
