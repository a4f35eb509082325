"""The context store's read side: the join of a study to its order, inbox views, the audit pump.

Private: ``state.context_store`` exports ``ContextReader`` and ``ContextMatch``. The row helpers
here (``load``, ``survivor``) serve the writer too.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from core.context import OrderIndex, choose_order
from core.order_status import OrderStatus, from_service_request, latest_order_status
from state.column_seal import ColumnSealer, sealer_of
from state.db import Database, Row, Tx, marks

__all__ = ["ContextMatch", "ContextReader", "Resource", "TABLES", "load", "survivor"]

TABLES = ("hl7_inbox", "hl7_rejected", "hl7_conflicts", "resources", "orders", "patient_merges", "patient_identities")
"""The tables ``ContextReader.count`` answers for."""

Resource = dict[str, Any]
"""A FHIR R4 resource as JSON."""


@dataclass(frozen=True, slots=True)
class ContextMatch:
    """The stored resources that belong to a study, and how they were found."""

    match: str
    service_request: Resource
    patient: Resource | None
    encounter: Resource | None


def load(tx: Tx, seal: ColumnSealer, kind: str, rid: str, *, lock: bool = False) -> Resource | None:
    """One stored resource (opened); ``lock``: hold its row until the transaction ends."""
    row = tx.one("SELECT json FROM resources WHERE type = ? AND id = ?" + (tx.for_update if lock else ""), (kind, rid))
    return json.loads(seal.open_text(row["json"])) if row else None


def survivor(tx: Tx, patient_id: str) -> str:
    """Follow A40 merges from a patient to the one that survives (cycles stop)."""
    seen = {patient_id}
    while True:
        row = tx.one("SELECT survivor_id FROM patient_merges WHERE prior_id = ?", (patient_id,))
        if row is None or row["survivor_id"] in seen:
            return patient_id
        patient_id = row["survivor_id"]
        seen.add(patient_id)


class ContextReader:
    """Read side for the join (router) and the EHR reports; the caller audits each read."""

    def __init__(self, db: Database, sealer: ColumnSealer | None = None) -> None:
        """Args:
        db: The context store (``open_context(storage)``); ``close`` closes it.
        sealer: Opens the sealed columns; default: the keys bound to ``db``.
        """
        self.db = db
        self._seal = sealer or sealer_of(db)

    def close(self) -> None:
        """Close the store."""
        self.db.close()

    def resource(self, kind: str, rid: str) -> Resource | None:
        """One stored resource by type and id."""
        with self.db.read() as tx:
            return load(tx, self._seal, kind, rid)

    def count(self, table: str) -> int:
        """Rows in one of the store's tables (for status and tests).

        Raises:
            ValueError: ``table`` is not one of ``TABLES``.
        """
        if table not in TABLES:
            raise ValueError(f"table: got {table!r}; expected one of {', '.join(TABLES)}")
        with self.db.read() as tx:
            row = tx.one(f"SELECT COUNT(*) AS n FROM {table}")
        return int(row["n"]) if row else 0

    def inbox(self, limit: int = 1000) -> list[Row]:
        """Inbox rows without the raw bytes, oldest first (PHI: callers audit)."""
        with self.db.read() as tx:
            rows = tx.all(
                "SELECT seq, sending_app, sending_facility, control_id, message_type, status,"
                " error_code, error_location, error, resends, audited FROM hl7_inbox"
                " ORDER BY seq LIMIT ?",
                (limit,),
            )
        return [{**r, "error": self._seal.open_text(r["error"])} for r in rows]

    def conflicts(self, limit: int = 1000) -> list[Row]:
        """Messages that reused an applied message's control ID, with their raw bytes, oldest
        first (PHI: for review; callers audit)."""
        with self.db.read() as tx:
            rows = tx.all(
                "SELECT seq, received_at, peer, sending_app, sending_facility, control_id,"
                " message_type, sha256, raw, inbox_seq, resends, audited FROM hl7_conflicts"
                " ORDER BY seq LIMIT ?",
                (limit,),
            )
        return [{**r, "raw": self._seal.open_blob(r["raw"])} for r in rows]

    def find(
        self,
        study_uid: str,
        accession_keys: Sequence[str],
        patient_keys: Sequence[str],
        study_date: date | None,
        window_days: int,
    ) -> ContextMatch | None:
        """Find the order of a study: by Study Instance UID (IPC-3), then accession, then
        Patient ID + date; with its patient (after merges) and encounter.

        A DICOM Patient ID carries no assigning authority we can trust, so the Patient ID +
        date step joins only when exactly one (surviving) patient holds that bare ID.
        """
        with self.db.read() as tx:
            order, how = self._by_study_or_accession(tx, study_uid, accession_keys)
            if order is None:
                how = "patient+date"
                order = self._by_patient_and_date(tx, patient_keys, study_date, window_days)
            if order is None:
                return None
            request = load(tx, self._seal, "ServiceRequest", order.service_request_id)
            if request is None:
                return None
            patient_id = survivor(tx, order.patient_id)
            return ContextMatch(
                how, request, load(tx, self._seal, "Patient", patient_id), self._encounter(tx, order, patient_id)
            )

    def order_status(self, study_uid: str, accession_key: str) -> OrderStatus | None:
        """The RIS's latest status of a study's order (``core.ports.OrderStatusSource``).

        Matched on Study Instance UID, else on the keyed hash of the accession number; the
        stored FHIR ``ServiceRequest.status`` maps back through ``core.order_status``, and
        statuses that say nothing about the examination are skipped. No patient identity is
        read, so the caller need not audit it.
        """
        if not study_uid and not accession_key:
            return None
        with self.db.read() as tx:
            rows = tx.all(
                "SELECT study_uid, accession_key, status, updated_at FROM orders"
                " WHERE (study_uid = ? AND study_uid <> '') OR (accession_key = ? AND accession_key <> '')"
                " ORDER BY updated_at DESC LIMIT 20",
                (study_uid, accession_key),
            )
        statuses = [
            from_service_request(r["study_uid"], r["accession_key"], r["status"], float(r["updated_at"])) for r in rows
        ]
        return latest_order_status(statuses, study_uid, accession_key)

    @staticmethod
    def _order(row: Row) -> OrderIndex:
        return OrderIndex(
            row["service_request_id"],
            row["accession_key"],
            row["study_uid"],
            row["patient_id"],
            row["encounter_id"],
            row["order_date"],
            row["status"],
        )

    def _by_study_or_accession(
        self, tx: Tx, study_uid: str, accession_keys: Sequence[str]
    ) -> tuple[OrderIndex | None, str]:
        if study_uid:
            row = tx.one("SELECT * FROM orders WHERE study_uid = ? ORDER BY updated_at DESC LIMIT 1", (study_uid,))
            if row is not None:
                return self._order(row), "study_uid"
        keys = [k for k in accession_keys if k]
        if keys:
            row = tx.one(
                f"SELECT * FROM orders WHERE accession_key IN ({marks(len(keys))}) ORDER BY updated_at DESC LIMIT 1",
                keys,
            )
            if row is not None:
                return self._order(row), "accession"
        return None, ""

    def _by_patient_and_date(
        self, tx: Tx, patient_keys: Sequence[str], study_date: date | None, window_days: int
    ) -> OrderIndex | None:
        patients = sorted({p for k in patient_keys if k for p in self._patients(tx, k)})
        if not patients or study_date is None:
            return None
        if len({survivor(tx, p) for p in patients}) > 1:
            return None  # the bare ID names more than one person (issue #16): no guess
        rows = tx.all(f"SELECT * FROM orders WHERE patient_id IN ({marks(len(patients))})", patients)
        return choose_order([(self._order(r), float(r["updated_at"])) for r in rows], study_date, window_days)

    @staticmethod
    def _patients(tx: Tx, key: str) -> set[str]:
        """Every patient id a key names, before and after merges (orders keep either)."""
        ids = {r["patient_id"] for r in tx.all("SELECT patient_id FROM patient_keys WHERE patient_key = ?", (key,))}
        return ids | {survivor(tx, p) for p in ids}

    def _encounter(self, tx: Tx, order: OrderIndex, patient_id: str) -> Resource | None:
        if order.encounter_id:
            found = load(tx, self._seal, "Encounter", order.encounter_id)
            if found is not None:
                return found
        row = tx.one(
            "SELECT encounter_id FROM encounters WHERE patient_id = ? ORDER BY updated_at DESC LIMIT 1", (patient_id,)
        )
        return load(tx, self._seal, "Encounter", row["encounter_id"]) if row else None

    # ------------------------------------------------------------- audit pump
    def unaudited(self, limit: int = 500) -> tuple[list[Row], list[Row], list[Row]]:
        """Inbox, rejected and conflict rows not yet in the ledger's audit trail (no PHI)."""
        with self.db.read() as tx:
            return (
                tx.all(
                    "SELECT seq, sending_app, sending_facility, control_id, message_type,"
                    " status, error_code, error_location, resends, patient_key,"
                    " accession_key, peer FROM hl7_inbox WHERE audited = 0 ORDER BY seq"
                    " LIMIT ?",
                    (limit,),
                ),
                tx.all(
                    "SELECT seq, control_id, message_type, size, sha256, error_code,"
                    " error_location, peer FROM hl7_rejected WHERE audited = 0 ORDER BY seq"
                    " LIMIT ?",
                    (limit,),
                ),
                tx.all(
                    "SELECT seq, sending_app, sending_facility, control_id, message_type,"
                    " inbox_seq, resends, peer FROM hl7_conflicts WHERE audited = 0"
                    " ORDER BY seq LIMIT ?",
                    (limit,),
                ),
            )
