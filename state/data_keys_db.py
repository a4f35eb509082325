"""Re-sealing the sealed columns of every store under the current data key (``pacsai keys rotate``).

``state.column_seal`` seals values as they are written; after a rotation new values are sealed
under the new key, and this walks the rows once to re-seal those under a retired key (and those
still in clear, when encryption was switched on later), so the retired key can be dropped.
Keyset pages of ``PAGE`` rows, one transaction each: idempotent, a crash midway loses nothing
and the next run goes on. The CLI is ``actors/_cli_keys.py`` (``state.sealed_files`` re-seals the
files); this module only knows the stores and their sealed columns.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from core.config import AppConfig
from core.envelope import Keyring
from state.column_seal import ColumnSealer, key_of
from state.db import Database, Tx
from state.layout import VarLayout
from state.ledger import open_database

__all__ = ["SEALED", "SealedTable", "count_unsealed_current", "reseal_counts", "reseal_databases"]

PAGE = 500


@dataclass(frozen=True, slots=True)
class SealedTable:
    """One table's sealed columns: ``blobs`` hold envelope bytes, ``texts`` base64 envelopes."""

    store: str
    table: str
    key: tuple[str, ...]
    blobs: tuple[str, ...] = ()
    texts: tuple[str, ...] = ()


SEALED = (
    SealedTable("context", "hl7_inbox", ("seq",), ("raw",), ("error",)),
    SealedTable("context", "hl7_rejected", ("seq",), ("head",), ("error",)),
    SealedTable("context", "hl7_conflicts", ("seq",), ("raw",)),
    SealedTable("context", "resources", ("type", "id"), (), ("json",)),
    # the report Bundles, and the EHR's refusals, which may quote the patient
    SealedTable("ehr", "ehr_reports", ("item_id",), (), ("bundle", "last_error")),
    SealedTable("ledger", "jobs", ("job_id",), (), ("data",)),
    SealedTable("ledger", "blobs", ("sha256",), ("data",)),  # PostgreSQL's blob store (heatmaps, big sections)
)
"""Every PHI-bearing column sealed at rest (the writers: ``state.context_store``,
``state.ehr_outbox``, ``state.ledger._codec``)."""

_TRIVIAL = ("", "{}")
"""Values never sealed: an empty job record names nobody."""


def reseal_databases(cfg: AppConfig, ring: Keyring) -> int:
    """Re-seal every sealed (or clear) column value not under ``ring.current``; the total."""
    return sum(reseal_counts(cfg, ring).values())


def reseal_counts(cfg: AppConfig, ring: Keyring) -> dict[str, int]:
    """``reseal_databases`` per ``store.table`` (counts only, no PHI)."""
    return _each(cfg, lambda db, spec: _reseal_table(db, spec, ColumnSealer(ring)))


def count_unsealed_current(cfg: AppConfig, ring: Keyring) -> int:
    """Values sealed under a key other than ``ring.current`` (0: the retired keys may go).

    Values in clear need no key and are not counted.
    """
    return sum(_each(cfg, lambda db, spec: _count_table(db, spec, ring.current)).values())


def _each(cfg: AppConfig, fn: Callable[[Database, SealedTable], int]) -> dict[str, int]:
    layout = VarLayout.at(cfg.storage.var_dir)
    files = {"ledger": layout.ledger, "context": layout.context, "ehr": layout.ehr_outbox}
    out: dict[str, int] = {}
    for store in ("context", "ehr", "ledger"):
        if cfg.storage.ledger.backend == "sqlite" and not files[store].exists():
            continue  # never opened here: nothing sealed (opening would create it)
        db = open_database(cfg.storage.ledger, layout, store)
        try:
            for spec in (s for s in SEALED if s.store == store):
                out[f"{store}.{spec.table}"] = fn(db, spec)
        finally:
            db.close()
    return out


def _stale(value: Any, current: str, *, clear_too: bool) -> bool:
    if value is None or (isinstance(value, str) and value in _TRIVIAL) or value == b"":
        return False
    kid = key_of(value)
    return kid != current if kid is not None else clear_too


def _pages(db: Database, spec: SealedTable) -> Any:
    """Yield pages of rows (key columns and sealed columns) in key order."""
    cols = ", ".join((*spec.key, *spec.blobs, *spec.texts))
    order = ", ".join(spec.key)
    after: Sequence[Any] | None = None
    while True:
        where = f" WHERE ({order}) > ({', '.join('?' * len(spec.key))})" if after is not None else ""
        with db.read() as tx:
            rows = tx.all(f"SELECT {cols} FROM {spec.table}{where} ORDER BY {order} LIMIT {PAGE}", after or ())
        if not rows:
            return
        yield rows
        after = [rows[-1][k] for k in spec.key]


def _count_table(db: Database, spec: SealedTable, current: str) -> int:
    n = 0
    for rows in _pages(db, spec):
        n += sum(_stale(r[c], current, clear_too=False) for r in rows for c in (*spec.blobs, *spec.texts))
    return n


def _reseal_table(db: Database, spec: SealedTable, seal: ColumnSealer) -> int:
    """Re-seal one table page by page; each row's update is compare-and-set on the old value."""
    assert seal.ring is not None
    current = seal.ring.current
    done = 0
    for rows in _pages(db, spec):
        updates: list[tuple[str, Any, Any, list[Any]]] = []
        for r in rows:
            key = [r[k] for k in spec.key]
            for col in spec.blobs:
                if _stale(r[col], current, clear_too=True):
                    updates.append((col, seal.blob(seal.open_blob(r[col])), r[col], key))
            for col in spec.texts:
                if _stale(r[col], current, clear_too=True):
                    updates.append((col, seal.text(seal.open_text(r[col])), r[col], key))
        if updates:
            done += db.run(lambda tx, u=updates: _apply(tx, spec, u))
    return done


def _apply(tx: Tx, spec: SealedTable, updates: list[tuple[str, Any, Any, list[Any]]]) -> int:
    where = " AND ".join(f"{k} = ?" for k in spec.key)
    n = 0
    for col, new, old, key in updates:  # a value rewritten meanwhile is left as its writer sealed it
        n += tx.execute(f"UPDATE {spec.table} SET {col} = ? WHERE {where} AND {col} = ?", (new, *key, old))
    return n
