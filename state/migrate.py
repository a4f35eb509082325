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

from yoyo import get_backend, read_migrations

__all__ = ["MIGRATIONS", "migrate", "pending"]

MIGRATIONS = Path(__file__).with_name("migrations")
"""Root of the migration files."""

logging.getLogger("yoyo").setLevel(logging.WARNING)  # one line per applied step is noise


def _source(store: str, dialect: str) -> Path:
    path = MIGRATIONS / store / dialect
    if not path.is_dir():
        raise ValueError(f"store/dialect: got {store}/{dialect}; no migrations under {path}")
    return path


def migrate(url: str, store: str, dialect: str) -> list[str]:
    """Apply the store's pending migrations; return their ids (empty when up to date).

    Args:
        url: The store as yoyo wants it (``sqlite:///...`` or ``postgresql+psycopg://...``).
        store: ``ledger``, ``context`` or ``ehr``.
        dialect: ``sqlite`` or ``postgresql``.
    """
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
    backend = get_backend(url)
    try:
        return [m.id for m in backend.to_apply(read_migrations(str(_source(store, dialect))))]
    finally:
        backend.connection.close()
