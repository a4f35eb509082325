"""Which held instances a research export takes (``pacsai export deid``): a study, or a filter.

Read-only. Discarded instances are never exported; the files are wherever the ledger says the
instance lives (this cell's spool, or another cell's when the caller can read it).
"""

from __future__ import annotations

from dataclasses import dataclass

from core.types import InstanceMeta
from state.db import Database
from state.ledger._rows import INSTANCE_COLUMNS, instance_of

__all__ = ["ExportQuery", "ExportReads"]


@dataclass(frozen=True, slots=True)
class ExportQuery:
    """Instances to export: one study, or a modality and a received-time window (all optional)."""

    study_uid: str | None = None
    modality: str | None = None
    received_from: float | None = None
    """Epoch seconds, inclusive."""
    received_until: float | None = None
    """Epoch seconds, exclusive."""


class ExportReads:
    """The ledger reads of the research export."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def instances(self, query: ExportQuery) -> list[InstanceMeta]:
        """The instances the query names, by study, series and arrival."""
        where = ["COALESCE(override, '') != 'discarded'"]
        args: list[object] = []
        for column, op, value in (
            ("study_uid", "=", query.study_uid),
            ("modality", "=", query.modality),
            ("received_at", ">=", query.received_from),
            ("received_at", "<", query.received_until),
        ):
            if value is not None:
                where.append(f"{column} {op} ?")
                args.append(value)
        with self._db.read() as tx:
            rows = tx.all(
                f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE {' AND '.join(where)}"
                " ORDER BY study_uid, series_uid, received_at, sop_instance_uid",
                args,
            )
        return [instance_of(r) for r in rows]
