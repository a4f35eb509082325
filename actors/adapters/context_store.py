"""The context store: the HL7 inbox and the current FHIR R4 resources per patient and order.

One SQLite file (``var/context.sqlite``), apart from the ledger: it is the PHI vault. The HL7
listener is its only writer, through a ``GroupCommitter``: the raw message, its idempotency
row and the resources it changes commit in one transaction, and the ACK goes out after that
commit. Other processes (the router) open it read-only for the join; every such read is
audited in the ledger by the caller.

Patients are found again by their identities (ID, assigning authority, type:
``patient_identities``); ``patient_keys`` holds the bare IDs only for the join of a study whose
DICOM Patient ID has no authority, and that join refuses an ID that names two people.

Idempotency: ``(MSH-3, MSH-4, MSH-10)`` is unique, and each inbox row keeps its content
digest (``core.hl7.content_digest``). A re-sent message with the content of an applied one is
acknowledged and not applied again; one with other content under that control ID is a
conflict: kept whole in ``hl7_conflicts`` for review, audited, answered AE (issue #16). A
message whose first copy broke a rule is evaluated afresh (nothing of it was applied).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from actors.adapters.group_commit import GroupCommitter, connect
from core.acks import AckError, Disposition, conflict_error
from core.context import (
    ContextUpdate,
    OrderIndex,
    PatientMerge,
    choose_order,
    merge_patients,
    merge_resource,
    rebind_patient,
    relink_subject,
)
from core.hl7 import MessageHeader

__all__ = ["ContextMatch", "ContextReader", "ContextWriter", "InboxEntry"]

_SCHEMA = (Path(__file__).with_name("context_schema.sql")).read_text()


@dataclass(frozen=True, slots=True)
class InboxEntry:
    """One message to store: the bytes, who sent it, and what it changes (or what is wrong)."""

    header: MessageHeader
    raw: bytes
    peer: str
    received_at: float
    update: ContextUpdate | None
    error: AckError | None = None
    digest: str = ""
    """The content digest (``Hl7Message.digest``); empty: the SHA-256 of the raw bytes."""

    @property
    def content(self) -> str:
        """The digest idempotency compares."""
        return self.digest or hashlib.sha256(self.raw).hexdigest()


@dataclass(frozen=True, slots=True)
class ContextMatch:
    """The stored resources that belong to a study, and how they were found."""

    match: str
    service_request: dict[str, Any]
    patient: dict[str, Any] | None
    encounter: dict[str, Any] | None


def _load(cur: sqlite3.Cursor, kind: str, rid: str) -> dict[str, Any] | None:
    row = cur.execute(
        "SELECT json FROM resources WHERE type = ? AND id = ?", (kind, rid)
    ).fetchone()
    return json.loads(row[0]) if row else None


def _save(cur: sqlite3.Cursor, resource: dict[str, Any], now: float) -> None:
    cur.execute(
        "INSERT INTO resources (type, id, version, updated_at, json) VALUES (?,?,1,?,?)"
        " ON CONFLICT (type, id) DO UPDATE SET version = version + 1,"
        " updated_at = excluded.updated_at, json = excluded.json",
        (resource["resourceType"], resource["id"], now, json.dumps(resource, sort_keys=True)),
    )


def _survivor(cur: sqlite3.Cursor, patient_id: str) -> str:
    """Follow A40 merges from a patient to the one that survives (cycles stop)."""
    seen = {patient_id}
    while True:
        row = cur.execute(
            "SELECT survivor_id FROM patient_merges WHERE prior_id = ?", (patient_id,)
        ).fetchone()
        if row is None or row[0] in seen:
            return patient_id
        patient_id = row[0]
        seen.add(patient_id)


def _known_patient(
    cur: sqlite3.Cursor, identity_keys: Sequence[str]
) -> tuple[str | None, dict[str, str]]:
    """The stored (surviving) patient of the first identity that is known, if any, and the
    stored rows of those identities (identity key -> patient id).

    Identities are (ID, assigning authority, type): a bare ID never finds a patient here.
    """
    if not identity_keys:
        return None, {}
    marks = ",".join("?" * len(identity_keys))
    found = dict(cur.execute(
        f"SELECT identity_key, MIN(patient_id) FROM patient_identities"
        f" WHERE identity_key IN ({marks}) GROUP BY identity_key", list(identity_keys),
    ).fetchall())
    first = next((found[k] for k in identity_keys if k in found), None)
    return (_survivor(cur, first) if first is not None else None), found


def _insert_pairs(
    cur: sqlite3.Cursor, table: str, key: str, pairs: Sequence[tuple[str, str]]
) -> None:
    """``INSERT ... ON CONFLICT DO NOTHING`` of (key, patient_id) rows, in one statement."""
    if pairs:
        cur.execute(
            f"INSERT INTO {table} ({key}, patient_id) VALUES {','.join(['(?,?)'] * len(pairs))}"
            f" ON CONFLICT ({key}, patient_id) DO NOTHING", [v for pair in pairs for v in pair],
        )


def _index_patient(
    cur: sqlite3.Cursor, bare: Sequence[tuple[str, str]], identities: Sequence[tuple[str, str]],
    stored: dict[str, str] | None = None,
) -> None:
    """Record which patient the bare IDs (the join's index) and the identities belong to;
    ``stored``: identity rows known to exist already (not written again)."""
    _insert_pairs(cur, "patient_keys", "patient_key", list(dict.fromkeys(bare)))
    fresh = [(k, p) for k, p in dict.fromkeys(identities) if (stored or {}).get(k) != p]
    _insert_pairs(cur, "patient_identities", "identity_key", fresh)


class ContextWriter:
    """The HL7 listener's side: durable inbox plus the resources, group-committed."""

    def __init__(self, path: Path, batch_max: int = 256) -> None:
        """Args:
        path: The context store file.
        batch_max: Most messages in one commit.
        """
        self._committer = GroupCommitter(path, _SCHEMA, batch_max)

    @property
    def committer(self) -> GroupCommitter:
        """The group committer (its counters show the batching)."""
        return self._committer

    def close(self) -> None:
        """Commit what is queued and close."""
        self._committer.close()

    def receive(self, entry: InboxEntry) -> Future[tuple[Disposition, AckError | None]]:
        """Store a parsed message durably and apply it; resolves after the commit.

        The future gives ``(APPLIED | DUPLICATE | INVALID, error)``; it raises
        ``TransientIOError`` when nothing could be stored.
        """
        return self._committer.submit(lambda cur: self._receive(cur, entry))

    def reject(
        self, raw: bytes, peer: str, header: MessageHeader | None, error: AckError, now: float
    ) -> Future[None]:
        """Keep the head of a message answered AR, for inspection and the audit trail."""

        def work(cur: sqlite3.Cursor) -> None:
            cur.execute(
                "INSERT INTO hl7_rejected (received_at, peer, control_id, message_type, size,"
                " sha256, head, error_code, error_location, error) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (now, peer, header.control_id if header else "",
                 header.message_type if header else "", len(raw),
                 hashlib.sha256(raw).hexdigest(), raw[:4096], error.code, error.location,
                 error.text[:2000]),
            )

        return self._committer.submit(work)

    def mark_audited(
        self, inbox: Sequence[tuple[int, int]], rejected: Sequence[int],
        conflicts: Sequence[tuple[int, int]] = (),
    ) -> Future[None]:
        """Record that these rows' audit events are in the ledger.

        Args:
            inbox: ``(seq, resends)`` as audited; a row re-sent since stays unaudited.
            rejected: Sequence numbers of rejected rows.
            conflicts: ``(seq, resends)`` of conflict rows, as audited.
        """

        def work(cur: sqlite3.Cursor) -> None:
            for table, rows in (("hl7_inbox", list(inbox)), ("hl7_conflicts", list(conflicts))):
                cur.executemany(  # a row re-sent since it was read stays unaudited
                    f"UPDATE {table} SET audited = 1 WHERE seq = ? AND resends = ?", rows
                )
            cur.executemany(
                "UPDATE hl7_rejected SET audited = 1 WHERE seq = ?", [(s,) for s in rejected]
            )

        return self._committer.submit(work)

    def _receive(
        self, cur: sqlite3.Cursor, entry: InboxEntry
    ) -> tuple[Disposition, AckError | None]:
        h = entry.header
        key = (h.sending_application, h.sending_facility, h.control_id)
        row = cur.execute(
            "SELECT seq, status, sha256 FROM hl7_inbox WHERE sending_app = ?"
            " AND sending_facility = ? AND control_id = ?", key,
        ).fetchone()
        if row is not None and row["status"] == "applied":
            # rows from before content digests hold the SHA-256 of the raw bytes
            if row["sha256"] not in (entry.content, hashlib.sha256(entry.raw).hexdigest()):
                return self._conflict(cur, entry, row["seq"])
            cur.execute(
                "UPDATE hl7_inbox SET resends = resends + 1, audited = 0 WHERE seq = ?",
                (row["seq"],),
            )
            return Disposition.DUPLICATE, None
        error = entry.error
        if entry.update is not None:
            try:
                cur.execute("SAVEPOINT apply")
                self._apply(cur, entry.update, entry.received_at)
                cur.execute("RELEASE apply")
            except (sqlite3.IntegrityError, KeyError, ValueError, TypeError) as exc:
                cur.execute("ROLLBACK TO apply")
                cur.execute("RELEASE apply")
                error = AckError("207", f"could not apply the message: {type(exc).__name__}")
        status = "invalid" if error is not None else "applied"
        warnings = entry.update.warnings if entry.update else ()
        noted = error or (AckError.of(warnings[0]) if warnings else None)  # ERR severity W
        self._inbox_row(cur, entry, row["seq"] if row else None, status, noted)
        return (Disposition.INVALID, error) if error else (Disposition.APPLIED, noted)

    @staticmethod
    def _conflict(
        cur: sqlite3.Cursor, entry: InboxEntry, inbox_seq: int
    ) -> tuple[Disposition, AckError]:
        """Keep a message that reuses an applied message's control ID, for review."""
        h = entry.header
        cur.execute(
            "INSERT INTO hl7_conflicts (received_at, peer, sending_app, sending_facility,"
            " control_id, message_type, sha256, raw, inbox_seq) VALUES (?,?,?,?,?,?,?,?,?)"
            " ON CONFLICT (sending_app, sending_facility, control_id, sha256) DO UPDATE SET"
            " resends = hl7_conflicts.resends + 1, received_at = excluded.received_at,"
            " peer = excluded.peer, audited = 0",
            (entry.received_at, entry.peer, h.sending_application, h.sending_facility,
             h.control_id, h.message_type, entry.content, entry.raw, inbox_seq),
        )
        return Disposition.CONFLICT, conflict_error(h.control_id)

    @staticmethod
    def _inbox_row(
        cur: sqlite3.Cursor, entry: InboxEntry, seq: int | None, status: str,
        error: AckError | None,
    ) -> None:
        h, u = entry.header, entry.update
        values = (
            h.message_type, entry.received_at, entry.peer, entry.content, entry.raw, status,
            error.code if error else "", error.location if error else "",
            error.text[:2000] if error else "", u.patient_key if u else "",
            u.accession_key if u else "",
        )
        if seq is None:
            cur.execute(
                "INSERT INTO hl7_inbox (message_type, received_at, peer, sha256, raw, status,"
                " error_code, error_location, error, patient_key, accession_key, sending_app,"
                " sending_facility, control_id) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (*values, h.sending_application, h.sending_facility, h.control_id),
            )
        else:  # a re-send of a message that broke a rule: evaluated afresh
            cur.execute(
                "UPDATE hl7_inbox SET message_type = ?, received_at = ?, peer = ?, sha256 = ?,"
                " raw = ?, status = ?, error_code = ?, error_location = ?, error = ?,"
                " patient_key = ?, accession_key = ?, resends = resends + 1, audited = 0"
                " WHERE seq = ?",
                (*values, seq),
            )

    def _apply(self, cur: sqlite3.Cursor, update: ContextUpdate, now: float) -> None:
        stored_identities: dict[str, str] = {}
        for patient in [r for r in update.resources if r["resourceType"] == "Patient"]:
            keys = [k for k, p in update.identity_keys if p == patient["id"]]
            known, found = _known_patient(cur, keys)
            stored_identities.update(found)
            if known is not None:
                update = rebind_patient(update, patient["id"], known)
        for resource in update.resources:
            stored = _load(cur, resource["resourceType"], resource["id"])
            _save(cur, merge_resource(stored, resource), now)
        _index_patient(cur, update.patient_keys, update.identity_keys, stored_identities)
        cur.executemany(
            "INSERT INTO encounters (encounter_id, patient_id, updated_at) VALUES (?,?,?)"
            " ON CONFLICT (encounter_id) DO UPDATE SET patient_id = excluded.patient_id,"
            " updated_at = excluded.updated_at",
            [(e, p, now) for e, p in update.encounters],
        )
        for order in update.orders:
            self._index_order(cur, order, now)
        for merge in update.merges:
            self._merge(cur, merge, now)

    @staticmethod
    def _index_order(cur: sqlite3.Cursor, order: OrderIndex, now: float) -> None:
        cur.execute(
            "INSERT INTO orders (service_request_id, accession_key, study_uid, patient_id,"
            " encounter_id, order_date, status, updated_at) VALUES (?,?,?,?,?,?,?,?)"
            " ON CONFLICT (service_request_id) DO UPDATE SET accession_key ="
            " excluded.accession_key, study_uid = COALESCE(NULLIF(excluded.study_uid, ''),"
            " orders.study_uid), patient_id = excluded.patient_id, encounter_id ="
            " COALESCE(NULLIF(excluded.encounter_id, ''), orders.encounter_id), order_date ="
            " COALESCE(NULLIF(excluded.order_date, ''), orders.order_date), status ="
            " excluded.status, updated_at = excluded.updated_at",
            (order.service_request_id, order.accession_key, order.study_uid, order.patient_id,
             order.encounter_id, order.order_date, order.status, now),
        )

    @staticmethod
    def _merge(cur: sqlite3.Cursor, merge: PatientMerge, now: float) -> None:
        """A40: the prior patient's keys, orders and encounters move to the survivor."""
        survivor_id = _survivor(cur, merge.survivor_id)
        prior_id = _known_patient(cur, merge.prior_identity_keys)[0] or merge.prior_id
        if prior_id == survivor_id:
            return
        survivor = _load(cur, "Patient", survivor_id) or {
            "resourceType": "Patient", "id": survivor_id
        }
        prior, survivor = merge_patients(_load(cur, "Patient", prior_id), survivor, merge)
        for resource in (prior, survivor):
            if resource is not None:
                _save(cur, resource, now)
        cur.execute(
            "INSERT INTO patient_merges (prior_id, survivor_id, merged_at) VALUES (?,?,?)"
            " ON CONFLICT (prior_id) DO UPDATE SET survivor_id = excluded.survivor_id,"
            " merged_at = excluded.merged_at",
            (prior_id, survivor_id, now),
        )
        _index_patient(cur, [(k, survivor_id) for k in merge.prior_keys],
                       [(k, survivor_id) for k in merge.prior_identity_keys])
        for table, kind, column in (("orders", "ServiceRequest", "service_request_id"),
                                    ("encounters", "Encounter", "encounter_id")):
            query = f"SELECT {column} FROM {table} WHERE patient_id = ?"
            ids = [r[0] for r in cur.execute(query, (prior_id,))]
            for rid in ids:
                old = _load(cur, kind, rid)
                if old is not None:
                    _save(cur, relink_subject(old, prior_id, survivor_id), now)
            cur.execute(
                f"UPDATE {table} SET patient_id = ? WHERE patient_id = ?", (survivor_id, prior_id)
            )


class ContextReader:
    """Read side for the join (router) and the EHR reports; the caller audits each read."""

    def __init__(self, path: Path) -> None:
        """Args:
        path: The context store file (created, empty, if it does not exist yet).
        """
        self._con = connect(path, _SCHEMA)

    def close(self) -> None:
        """Close the connection."""
        self._con.close()

    def resource(self, kind: str, rid: str) -> dict[str, Any] | None:
        """One stored resource by type and id."""
        return _load(self._con.cursor(), kind, rid)

    def count(self, table: str) -> int:
        """Rows in one of the store's tables (for status and tests)."""
        if table not in ("hl7_inbox", "hl7_rejected", "hl7_conflicts", "resources", "orders",
                         "patient_merges", "patient_identities"):
            raise ValueError(f"table: got {table!r}; expected a context store table")
        return int(self._con.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])

    def inbox(self, limit: int = 1000) -> list[dict[str, Any]]:
        """Inbox rows without the raw bytes, oldest first (PHI: callers audit)."""
        rows = self._con.execute(
            "SELECT seq, sending_app, sending_facility, control_id, message_type, status,"
            " error_code, error_location, error, resends, audited FROM hl7_inbox ORDER BY seq"
            " LIMIT ?", (limit,),
        ).fetchall()
        return [dict(r) for r in rows]

    def conflicts(self, limit: int = 1000) -> list[dict[str, Any]]:
        """Messages that reused an applied message's control ID, with their raw bytes, oldest
        first (PHI: for review; callers audit)."""
        rows = self._con.execute(
            "SELECT seq, received_at, peer, sending_app, sending_facility, control_id,"
            " message_type, sha256, raw, inbox_seq, resends, audited FROM hl7_conflicts"
            " ORDER BY seq LIMIT ?", (limit,),
        ).fetchall()
        return [dict(r) for r in rows]

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
        cur = self._con.cursor()
        order, how = self._by_study_or_accession(cur, study_uid, accession_keys)
        if order is None:
            how = "patient+date"
            order = self._by_patient_and_date(cur, patient_keys, study_date, window_days)
        if order is None:
            return None
        request = _load(cur, "ServiceRequest", order.service_request_id)
        if request is None:
            return None
        patient_id = _survivor(cur, order.patient_id)
        return ContextMatch(how, request, _load(cur, "Patient", patient_id),
                            self._encounter(cur, order, patient_id))

    @staticmethod
    def _order(row: sqlite3.Row) -> OrderIndex:
        return OrderIndex(row["service_request_id"], row["accession_key"], row["study_uid"],
                          row["patient_id"], row["encounter_id"], row["order_date"], row["status"])

    def _by_study_or_accession(
        self, cur: sqlite3.Cursor, study_uid: str, accession_keys: Sequence[str]
    ) -> tuple[OrderIndex | None, str]:
        if study_uid:
            row = cur.execute("SELECT * FROM orders WHERE study_uid = ? ORDER BY updated_at DESC"
                              " LIMIT 1", (study_uid,)).fetchone()
            if row is not None:
                return self._order(row), "study_uid"
        keys = [k for k in accession_keys if k]
        if keys:
            marks = ",".join("?" * len(keys))
            row = cur.execute(f"SELECT * FROM orders WHERE accession_key IN ({marks})"
                              " ORDER BY updated_at DESC LIMIT 1", keys).fetchone()
            if row is not None:
                return self._order(row), "accession"
        return None, ""

    def _by_patient_and_date(
        self, cur: sqlite3.Cursor, patient_keys: Sequence[str], study_date: date | None,
        window_days: int,
    ) -> OrderIndex | None:
        patients = {p for k in patient_keys if k for p in self._patients(cur, k)}
        if not patients or study_date is None:
            return None
        if len({_survivor(cur, p) for p in patients}) > 1:
            return None  # the bare ID names more than one person (issue #16): no guess
        marks = ",".join("?" * len(patients))
        rows = cur.execute(f"SELECT * FROM orders WHERE patient_id IN ({marks})", list(patients))
        return choose_order([(self._order(r), float(r["updated_at"])) for r in rows],
                            study_date, window_days)

    @staticmethod
    def _patients(cur: sqlite3.Cursor, key: str) -> set[str]:
        """Every patient id a key names, before and after merges (orders keep either)."""
        ids = {r[0] for r in cur.execute(
            "SELECT patient_id FROM patient_keys WHERE patient_key = ?", (key,))}
        return ids | {_survivor(cur, p) for p in ids}

    @staticmethod
    def _encounter(
        cur: sqlite3.Cursor, order: OrderIndex, patient_id: str
    ) -> dict[str, Any] | None:
        if order.encounter_id:
            found = _load(cur, "Encounter", order.encounter_id)
            if found is not None:
                return found
        row = cur.execute(
            "SELECT encounter_id FROM encounters WHERE patient_id = ? ORDER BY updated_at DESC"
            " LIMIT 1", (patient_id,),
        ).fetchone()
        return _load(cur, "Encounter", row[0]) if row else None

    # ------------------------------------------------------------- audit pump
    def unaudited(self, limit: int = 500) -> tuple[list[dict[str, Any]], ...]:
        """Inbox, rejected and conflict rows not yet in the ledger's audit trail (no PHI)."""
        queries = (
            "SELECT seq, sending_app, sending_facility, control_id, message_type, status,"
            " error_code, error_location, resends, patient_key, accession_key, peer"
            " FROM hl7_inbox WHERE audited = 0 ORDER BY seq LIMIT ?",
            "SELECT seq, control_id, message_type, size, sha256, error_code, error_location, peer"
            " FROM hl7_rejected WHERE audited = 0 ORDER BY seq LIMIT ?",
            "SELECT seq, sending_app, sending_facility, control_id, message_type, inbox_seq,"
            " resends, peer FROM hl7_conflicts WHERE audited = 0 ORDER BY seq LIMIT ?",
        )
        return tuple([dict(r) for r in self._con.execute(q, (limit,))] for q in queries)
