"""The context store: the HL7 inbox and the current FHIR R4 resources per patient and order.

A store of its own, apart from the ledger: it is the PHI vault. ``storage.ledger`` picks its
backend as for every store (``open_context``): ``var/context.sqlite``, or the schema
``<prefix>_context`` on PostgreSQL, so every node of a cluster sees the same context. The HL7
listener is its only writer (with its parse workers, each on a connection of its own:
``open_context_file``): the raw message, its idempotency row and the resources it changes
commit in one transaction (``Database.run``), and the ACK goes out after that commit. Messages
that arrive together share a commit (a worker's ``store_batch``; SQLite group-commits the
threads of one process; PostgreSQL groups concurrent commits). Other processes read it for
the join, each read audited by the caller. PHI columns are sealed (``state.column_seal``).

Patients are found again by their identities (ID, assigning authority, type:
``patient_identities``); ``patient_keys`` holds the bare IDs only for the join of a study whose
DICOM Patient ID has no authority, and that join refuses an ID that names two people.

Idempotency: ``(MSH-3, MSH-4, MSH-10)`` is unique, and each inbox row keeps its content
digest (``core.hl7.content_digest``). A re-sent message with the content of an applied one is
acknowledged and not applied again; one with other content under that control ID is a
conflict: kept whole in ``hl7_conflicts`` for review, audited, answered AE (issue #16). A
message whose first copy broke a rule is evaluated afresh (nothing of it was applied).

Writers at once (PostgreSQL): a resource is read ``FOR UPDATE`` before it is merged; of two
copies of one control ID racing, one is applied and the other is found to be a re-send. The
reject store has a quota (``hl7.listener.rejected_max_rows``): past it, AR but not kept.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from core.acks import AckError, Disposition, conflict_error
from core.config import StorageConfig
from core.context import (
    ContextUpdate,
    OrderIndex,
    PatientMerge,
    merge_patients,
    merge_resource,
    rebind_patient,
    relink_subject,
)
from core.errors import OutOfResources
from core.hl7 import MessageHeader
from state._context_read import ContextMatch, ContextReader, Resource, load, survivor
from state.column_seal import ColumnSealer, bind, keyed_path, path_keys, sealer_of
from state.data_keys import load_keyring
from state.db import Database, Tx, marks
from state.layout import VarLayout
from state.ledger import open_database
from state.sqlite import SqliteDatabase

__all__ = [
    "AuditMarks",
    "ContextMatch",
    "ContextReader",
    "ContextWriter",
    "InboxEntry",
    "Rejection",
    "context_file",
    "open_context",
    "open_context_file",
]

Outcome = tuple[Disposition, AckError | None]
"""What became of one message in the store, and the ERR its ACK carries."""
_Change = Callable[[Resource | None], Resource | None]


def open_context(storage: StorageConfig, *, writer: bool = False, group_max: int = 0) -> Database:
    """Open the context store where ``storage.ledger`` says, with its migrations applied.

    Args:
        storage: The storage config (the backend of every store).
        writer: The HL7 listener's handle. On SQLite its commits never checkpoint the WAL;
            the listener's checkpoint loop does (``Database.checkpoint``), so no ACK waits.
        group_max: SQLite: most messages in one commit (``hl7.batch_max``; 0: no limit).

    Raises:
        ConfigError: PostgreSQL is configured but its DSN variable is not set.
        DependencyUnavailable: The PostgreSQL server cannot be reached.
    """
    layout = VarLayout.at(storage.var_dir)
    db = open_database(storage.ledger, layout, "context", wal_autocheckpoint=not writer, group_max=group_max)
    bind(db, load_keyring(storage.encryption, layout.root))  # raw HL7 and resources are sealed
    return db


def context_file(db: Database) -> Path | None:
    """The SQLite file behind a context store handle, for a process that opens a connection
    of its own to it (the HL7 listener's parse workers); ``None`` on PostgreSQL. The path
    carries the store's data keys, so a worker seals as the listener does."""
    path = getattr(db, "path", None)
    if db.dialect != "sqlite" or path is None:
        return None
    return keyed_path(path, sealer_of(db).ring)


def open_context_file(path: Path) -> Database:
    """Open a context store file that ``open_context`` created and migrated already (a parse
    worker's own connection); like the listener's, its commits never checkpoint the WAL.

    Writers of the file in several processes queue on its advisory lock (``state.sqlite``).
    """
    db = SqliteDatabase(path, autocheckpoint=False)
    ring = path_keys(path)
    if ring is not None:
        bind(db, ring)
    return db


@dataclass(frozen=True, slots=True)
class Rejection:
    """The head of a message answered AR, kept for inspection and the audit trail."""

    raw: bytes
    peer: str
    header: MessageHeader | None
    error: AckError
    received_at: float


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
class AuditMarks:
    """Rows whose audit events are in the ledger (``ContextWriter.mark_audited``), as an
    item of ``store_batch``: the listener's marks join the committer's next commit."""

    inbox: tuple[tuple[int, int], ...]
    rejected: tuple[int, ...]
    conflicts: tuple[tuple[int, int], ...] = ()


def _write(
    tx: Tx, seal: ColumnSealer, kind: str, rid: str, change: _Change, now: float, opened: _Opened | None = None
) -> None:
    """Change one resource under its row lock and store it: version 1 when new, else + 1.

    ``change`` gets the stored resource (``None``: none yet) and returns the new one (``None``:
    leave it). When another transaction created the resource meanwhile (PostgreSQL), the
    insert finds its row: that row, committed by then, is read and changed instead. A change
    that leaves the resource as it was counts a version and keeps the sealed JSON as stored.

    ``opened``: stored values this writer opened or sealed before (for a ``change`` that does
    not alter its argument): a value read again is not decrypted and parsed again.
    """
    stored = _load(tx, seal, kind, rid, opened)
    if stored is None:
        new = change(None)
        if new is None:
            return
        sealed = seal.text(_dump(new))
        if (
            tx.execute(
                "INSERT INTO resources (type, id, version, updated_at, json) VALUES (?,?,1,?,?)"
                " ON CONFLICT (type, id) DO NOTHING",
                (kind, rid, now, sealed),
            )
            == 1
        ):
            if opened is not None:
                opened.keep(sealed, new)
            return
        stored = load(tx, seal, kind, rid, lock=True)
    new = change(stored)
    if new is None:
        return
    if new == stored:  # nothing new (a Location, a Patient re-sent unchanged)
        tx.execute(
            "UPDATE resources SET version = version + 1, updated_at = ? WHERE type = ? AND id = ?", (now, kind, rid)
        )
        return
    sealed = seal.text(_dump(new))
    tx.execute(
        "UPDATE resources SET version = version + 1, updated_at = ?, json = ? WHERE type = ? AND id = ?",
        (now, sealed, kind, rid),
    )
    if opened is not None:
        opened.keep(sealed, new)


def _load(tx: Tx, seal: ColumnSealer, kind: str, rid: str, opened: _Opened | None) -> Resource | None:
    """``load(lock=True)``, through ``opened`` when given."""
    if opened is None:
        return load(tx, seal, kind, rid, lock=True)
    row = tx.one("SELECT json FROM resources WHERE type = ? AND id = ?" + tx.for_update, (kind, rid))
    if row is None:
        return None
    stored = opened.get(row["json"])
    if stored is None:
        stored = json.loads(seal.open_text(row["json"]))
        opened.keep(row["json"], stored)
    return stored


class _Opened:
    """Stored resources by their stored (sealed) text, as this writer last read or wrote them:
    the same sealed text is the same resource, so it is not opened and parsed again. Bounded,
    oldest forgotten first; the resources are shared, so only for changes that copy."""

    __slots__ = ("_by_text",)

    MAX = 4096

    def __init__(self) -> None:
        self._by_text: OrderedDict[str, Resource] = OrderedDict()

    def get(self, text: str) -> Resource | None:
        return self._by_text.get(text)

    def keep(self, text: str, resource: Resource) -> None:
        if len(self._by_text) >= self.MAX:
            self._by_text.popitem(last=False)  # O(1); a dict's first key is not, after many deletions
        self._by_text[text] = resource


def _mark(tx: Tx, marks: AuditMarks) -> None:
    for table, rows in (("hl7_inbox", marks.inbox), ("hl7_conflicts", marks.conflicts)):
        if rows:  # a row re-sent since it was read stays unaudited
            tx.executemany(f"UPDATE {table} SET audited = 1 WHERE seq = ? AND resends = ?", list(rows))
    if marks.rejected:
        tx.executemany("UPDATE hl7_rejected SET audited = 1 WHERE seq = ?", [(s,) for s in marks.rejected])


def _dump(resource: Resource) -> str:
    return json.dumps(resource, sort_keys=True)


def _known_patient(tx: Tx, identity_keys: Sequence[str]) -> tuple[str | None, dict[str, str]]:
    """The stored (surviving) patient of the first identity that is known, if any, and the
    stored rows of those identities (identity key -> patient id).

    Identities are (ID, assigning authority, type): a bare ID never finds a patient here.
    """
    if not identity_keys:
        return None, {}
    rows = tx.all(
        f"SELECT identity_key, MIN(patient_id) AS patient_id FROM patient_identities"
        f" WHERE identity_key IN ({marks(len(identity_keys))}) GROUP BY identity_key",
        list(identity_keys),
    )
    found = {r["identity_key"]: r["patient_id"] for r in rows}
    first = next((found[k] for k in identity_keys if k in found), None)
    return (survivor(tx, first) if first is not None else None), found


def _insert_pairs(tx: Tx, table: str, key: str, pairs: Sequence[tuple[str, str]]) -> None:
    """``INSERT ... ON CONFLICT DO NOTHING`` of (key, patient_id) rows, in one statement."""
    if pairs:
        tx.execute(
            f"INSERT INTO {table} ({key}, patient_id) VALUES {','.join(['(?,?)'] * len(pairs))}"
            f" ON CONFLICT ({key}, patient_id) DO NOTHING",
            [v for pair in pairs for v in pair],
        )


def _index_patient(
    tx: Tx,
    bare: Sequence[tuple[str, str]],
    identities: Sequence[tuple[str, str]],
    stored: dict[str, str] | None = None,
) -> None:
    """Record which patient the bare IDs (the join's index) and the identities belong to;
    ``stored``: identity rows known to exist already (not written again)."""
    _insert_pairs(tx, "patient_keys", "patient_key", list(dict.fromkeys(bare)))
    fresh = [(k, p) for k, p in dict.fromkeys(identities) if (stored or {}).get(k) != p]
    _insert_pairs(tx, "patient_identities", "identity_key", fresh)


class ContextWriter:
    """The HL7 listener's side: durable inbox plus the resources, one transaction a message;
    each method's future settles once the commit is durable (messages together share commits)."""

    def __init__(self, db: Database, sealer: ColumnSealer | None = None, rejected_max_rows: int = 100_000) -> None:
        """Args:
        db: The context store (``open_context(storage, writer=True)``).
        sealer: Seals the PHI columns; default: the keys bound to ``db`` (``open_context``).
        rejected_max_rows: Quota of the reject store (``OutOfResources`` past it: answered AR, not kept).
        """
        self._db = db
        self._seal = sealer or sealer_of(db)
        self._quota = rejected_max_rows
        self._opened = _Opened()

    def receive(self, entry: InboxEntry) -> Future[tuple[Disposition, AckError | None]]:
        """Store a parsed message durably and apply it.

        Returns:
            A future of ``(APPLIED | DUPLICATE | INVALID | CONFLICT, error or warning)``,
            settled after the commit. It raises ``TransientIOError`` when the store cannot
            be reached (PostgreSQL), or the backend's error when the commit failed; either
            way nothing of the message is stored.
        """
        return self._db.submit(lambda tx: self._receive(tx, entry))

    def reject(self, raw: bytes, peer: str, header: MessageHeader | None, error: AckError, now: float) -> Future[int]:
        """Keep the head of a message answered AR, for inspection and the audit trail."""
        return self._db.submit(lambda tx: self._reject(tx, Rejection(raw, peer, header, error, now)))

    def store_batch(self, items: Sequence[InboxEntry | Rejection | AuditMarks]) -> list[Outcome | Exception]:
        """Store several messages in one transaction: one commit (one fsync) for all of them.

        Each message runs in a savepoint of its own, as in ``SqliteDatabase``'s group commit:
        one that fails rolls back only itself and comes back as its exception. ``AuditMarks``
        (the audit pump's, through the HL7 committer) are recorded as ``mark_audited`` does
        and come back as ``(APPLIED, None)``. Blocks until the commit is durable (the HL7
        committer's way in; it has no event loop to keep free).

        Raises:
            TransientIOError: The store cannot be reached (PostgreSQL).
            sqlite3.Error: The commit failed: nothing of the batch is stored.
        """

        def work(tx: Tx) -> list[Outcome | Exception]:
            out: list[Outcome | Exception] = []
            for item in items:
                tx.execute("SAVEPOINT message")
                try:
                    if isinstance(item, InboxEntry):
                        out.append(self._receive(tx, item))
                    elif isinstance(item, AuditMarks):
                        _mark(tx, item)
                        out.append((Disposition.APPLIED, None))
                    else:
                        self._reject(tx, item)
                        out.append((Disposition.REJECTED, item.error))
                    tx.execute("RELEASE SAVEPOINT message")
                except Exception as exc:  # noqa: BLE001 - only this message is undone
                    tx.execute("ROLLBACK TO SAVEPOINT message")
                    tx.execute("RELEASE SAVEPOINT message")
                    out.append(exc)
            return out

        return self._db.run(work)

    def _reject(self, tx: Tx, item: Rejection) -> int:
        held = tx.one("SELECT COUNT(*) AS n FROM hl7_rejected")
        if held is not None and int(held["n"]) >= self._quota:
            raise OutOfResources(f"HL7 reject store holds {held['n']} rows (hl7.listener.rejected_max_rows)")
        h, error = item.header, item.error
        return tx.execute(
            "INSERT INTO hl7_rejected (received_at, peer, control_id, message_type, size,"
            " sha256, head, error_code, error_location, error) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (
                item.received_at,
                item.peer,
                h.control_id if h else "",
                h.message_type if h else "",
                len(item.raw),
                hashlib.sha256(item.raw).hexdigest(),
                self._seal.blob(item.raw[:4096]),
                error.code,
                error.location,
                self._seal.text(error.text[:2000]),
            ),
        )

    def mark_audited(
        self,
        inbox: Sequence[tuple[int, int]],
        rejected: Sequence[int],
        conflicts: Sequence[tuple[int, int]] = (),
    ) -> Future[None]:
        """Record that these rows' audit events are in the ledger.

        Args:
            inbox: ``(seq, resends)`` as audited; a row re-sent since stays unaudited.
            rejected: Sequence numbers of rejected rows.
            conflicts: ``(seq, resends)`` of conflict rows, as audited.
        """

        marks = AuditMarks(tuple(inbox), tuple(rejected), tuple(conflicts))
        return self._db.submit(lambda tx: _mark(tx, marks))

    def _receive(self, tx: Tx, entry: InboxEntry) -> tuple[Disposition, AckError | None]:
        h = entry.header
        row = tx.one(
            "SELECT seq, status, sha256 FROM hl7_inbox WHERE sending_app = ?"
            " AND sending_facility = ? AND control_id = ?" + tx.for_update,
            (h.sending_application, h.sending_facility, h.control_id),
        )
        if row is not None and row["status"] == "applied":
            # rows from before content digests hold the SHA-256 of the raw bytes
            if row["sha256"] not in (entry.content, hashlib.sha256(entry.raw).hexdigest()):
                return self._conflict(tx, entry, row["seq"])
            tx.execute("UPDATE hl7_inbox SET resends = resends + 1, audited = 0 WHERE seq = ?", (row["seq"],))
            return Disposition.DUPLICATE, None
        error = entry.error
        if entry.update is not None:
            tx.execute("SAVEPOINT apply")
            try:
                self._apply(tx, entry.update, entry.received_at)
                tx.execute("RELEASE SAVEPOINT apply")
            except (tx.integrity_error, KeyError, ValueError, TypeError) as exc:
                tx.execute("ROLLBACK TO SAVEPOINT apply")
                tx.execute("RELEASE SAVEPOINT apply")
                error = AckError("207", f"could not apply the message: {type(exc).__name__}")
        status = "invalid" if error is not None else "applied"
        warnings = entry.update.warnings if entry.update else ()
        noted = error or (AckError.of(warnings[0]) if warnings else None)  # ERR severity W
        self._inbox_row(tx, entry, row["seq"] if row else None, status, noted)
        return (Disposition.INVALID, error) if error else (Disposition.APPLIED, noted)

    def _conflict(self, tx: Tx, entry: InboxEntry, inbox_seq: int) -> tuple[Disposition, AckError]:
        """Keep a message that reuses an applied message's control ID, for review."""
        h = entry.header
        tx.execute(
            "INSERT INTO hl7_conflicts (received_at, peer, sending_app, sending_facility,"
            " control_id, message_type, sha256, raw, inbox_seq) VALUES (?,?,?,?,?,?,?,?,?)"
            " ON CONFLICT (sending_app, sending_facility, control_id, sha256) DO UPDATE SET"
            " resends = hl7_conflicts.resends + 1, received_at = excluded.received_at,"
            " peer = excluded.peer, audited = 0",
            (
                entry.received_at,
                entry.peer,
                h.sending_application,
                h.sending_facility,
                h.control_id,
                h.message_type,
                entry.content,
                self._seal.blob(entry.raw),
                inbox_seq,
            ),
        )
        return Disposition.CONFLICT, conflict_error(h.control_id)

    def _inbox_row(self, tx: Tx, entry: InboxEntry, seq: int | None, status: str, error: AckError | None) -> None:
        h, u = entry.header, entry.update
        values = (
            h.message_type,
            entry.received_at,
            entry.peer,
            entry.content,
            self._seal.blob(entry.raw),
            status,
            error.code if error else "",
            error.location if error else "",
            self._seal.text(error.text[:2000]) if error else "",
            u.patient_key if u else "",
            u.accession_key if u else "",
        )
        if seq is None:  # a copy racing this one (PostgreSQL) makes this fail: retried
            tx.execute(
                "INSERT INTO hl7_inbox (message_type, received_at, peer, sha256, raw, status,"
                " error_code, error_location, error, patient_key, accession_key, sending_app,"
                " sending_facility, control_id) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (*values, h.sending_application, h.sending_facility, h.control_id),
            )
        else:  # a re-send of a message that broke a rule: evaluated afresh
            tx.execute(
                "UPDATE hl7_inbox SET message_type = ?, received_at = ?, peer = ?, sha256 = ?,"
                " raw = ?, status = ?, error_code = ?, error_location = ?, error = ?,"
                " patient_key = ?, accession_key = ?, resends = resends + 1, audited = 0"
                " WHERE seq = ?",
                (*values, seq),
            )

    def _apply(self, tx: Tx, update: ContextUpdate, now: float) -> None:
        stored_identities: dict[str, str] = {}
        for patient in [r for r in update.resources if r["resourceType"] == "Patient"]:
            keys = [k for k, p in update.identity_keys if p == patient["id"]]
            known, found = _known_patient(tx, keys)
            stored_identities.update(found)
            if known is not None:
                update = rebind_patient(update, patient["id"], known)
        for resource in update.resources:
            _write(
                tx,
                self._seal,
                resource["resourceType"],
                resource["id"],
                lambda stored, new=resource: merge_resource(stored, new),  # copies: ``_Opened`` may share
                now,
                self._opened,
            )
        _index_patient(tx, update.patient_keys, update.identity_keys, stored_identities)
        if update.encounters:
            tx.executemany(
                "INSERT INTO encounters (encounter_id, patient_id, updated_at) VALUES (?,?,?)"
                " ON CONFLICT (encounter_id) DO UPDATE SET patient_id = excluded.patient_id,"
                " updated_at = excluded.updated_at",
                [(e, p, now) for e, p in update.encounters],
            )
        for order in update.orders:
            self._index_order(tx, order, now)
        for merge in update.merges:
            self._merge(tx, merge, now)

    @staticmethod
    def _index_order(tx: Tx, order: OrderIndex, now: float) -> None:
        tx.execute(
            "INSERT INTO orders (service_request_id, accession_key, study_uid, patient_id,"
            " encounter_id, order_date, status, updated_at) VALUES (?,?,?,?,?,?,?,?)"
            " ON CONFLICT (service_request_id) DO UPDATE SET accession_key ="
            " excluded.accession_key, study_uid = COALESCE(NULLIF(excluded.study_uid, ''),"
            " orders.study_uid), patient_id = excluded.patient_id, encounter_id ="
            " COALESCE(NULLIF(excluded.encounter_id, ''), orders.encounter_id), order_date ="
            " COALESCE(NULLIF(excluded.order_date, ''), orders.order_date), status ="
            " excluded.status, updated_at = excluded.updated_at",
            (
                order.service_request_id,
                order.accession_key,
                order.study_uid,
                order.patient_id,
                order.encounter_id,
                order.order_date,
                order.status,
                now,
            ),
        )

    def _merge(self, tx: Tx, merge: PatientMerge, now: float) -> None:
        """A40: the prior patient's keys, orders and encounters move to the survivor."""
        survivor_id = survivor(tx, merge.survivor_id)
        prior_id = _known_patient(tx, merge.prior_identity_keys)[0] or merge.prior_id
        if prior_id == survivor_id:
            return
        # merge_patients changes each side from that side alone: prior, then survivor
        _write(tx, self._seal, "Patient", prior_id, lambda prior: merge_patients(prior, {}, merge)[0], now)
        _write(
            tx,
            self._seal,
            "Patient",
            survivor_id,
            lambda stored: merge_patients(None, stored or {"resourceType": "Patient", "id": survivor_id}, merge)[1],
            now,
        )
        tx.execute(
            "INSERT INTO patient_merges (prior_id, survivor_id, merged_at) VALUES (?,?,?)"
            " ON CONFLICT (prior_id) DO UPDATE SET survivor_id = excluded.survivor_id,"
            " merged_at = excluded.merged_at",
            (prior_id, survivor_id, now),
        )
        _index_patient(
            tx, [(k, survivor_id) for k in merge.prior_keys], [(k, survivor_id) for k in merge.prior_identity_keys]
        )
        for table, kind, column in (
            ("orders", "ServiceRequest", "service_request_id"),
            ("encounters", "Encounter", "encounter_id"),
        ):
            rows = tx.all(f"SELECT {column} AS rid FROM {table} WHERE patient_id = ?" + tx.for_update, (prior_id,))
            for row in rows:
                _write(
                    tx,
                    self._seal,
                    kind,
                    row["rid"],
                    lambda old: None if old is None else relink_subject(old, prior_id, survivor_id),
                    now,
                )
            tx.execute(f"UPDATE {table} SET patient_id = ? WHERE patient_id = ?", (survivor_id, prior_id))
