"""The context store's contract, run against both backends: SQLite (a real file) and PostgreSQL
(a real server started by the session fixture). Writes, reads, idempotency, conflicts, merges,
identities and the join must behave the same on both, and so must writers that run at once
(issue 9: a cluster shares its context store)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any, TypeVar

import pytest

from core.acks import AckError, Disposition
from core.config import StorageConfig
from core.hl7 import parse_message
from core.identifiers import hash_identifier
from core.order_status import OrderProgress
from core.ports import OrderStatusSource
from core.v2fhir import V2FhirMapper
from state.column_seal import sealer_of
from state.context_store import ContextReader, ContextWriter, InboxEntry, Rejection, open_context
from state.db import Database
from state.migrate import pending
from state.sqlite import SqliteDatabase
from tests.hl7_messages import a40, adt, omi, orm

pytestmark = pytest.mark.integration

KEY = b"contract-key"
MAPPER = V2FhirMapper(KEY, {"HOSP": "http://hosp.example/mrn"}, validate_resources=False)
T = TypeVar("T")


def entry(raw: str, now: float = 100.0, peer: str = "127.0.0.1:5000") -> InboxEntry:
    """A message as the listener hands it to the store: parsed and mapped."""
    message = parse_message(raw.encode())
    return InboxEntry(message.header, raw.encode(), peer, now, MAPPER.map(message), None, message.digest)


@pytest.fixture
def store(backend, storage_for) -> Iterator[tuple[ContextWriter, ContextReader, Database]]:
    """The writer on the listener's handle, the reader on a handle of its own (as the router)."""
    storage = storage_for(backend)
    db = open_context(storage, writer=True)
    reader = ContextReader(open_context(storage))
    yield ContextWriter(db), reader, db
    reader.close()
    db.close()


def resources(reader: ContextReader, kind: str) -> list[dict[str, Any]]:
    """Every stored resource of one type (its version as ``_version``), by id."""
    with reader.db.read() as tx:
        rows = tx.all("SELECT version, json FROM resources WHERE type = ? ORDER BY id", (kind,))
    seal = sealer_of(reader.db)  # the store seals the resources at rest
    return [{**json.loads(seal.open_text(r["json"])), "_version": int(r["version"])} for r in rows]


def at_once(calls: list[Callable[[], T]]) -> list[T]:
    """Run the calls in threads released together; their results in order."""
    gate = threading.Barrier(len(calls))
    out: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        gate.wait()
        try:
            out[i] = calls[i]()
        except Exception as exc:  # noqa: BLE001 - handed back to the test
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


# ----------------------------------------------------------------------------- schema
def test_the_store_is_migrated_on_open(store):
    _, reader, db = store
    assert pending(db.url, "context", db.dialect) == []  # type: ignore[attr-defined]
    assert reader.count("hl7_inbox") == 0


def test_an_existing_context_sqlite_is_adopted_as_it_is(tmp_path):
    """A store written before migrations (the schema applied by hand) keeps its rows."""
    from state.migrate import MIGRATIONS
    from state.sqlite import connect

    path = tmp_path / "var" / "context.sqlite"
    con = connect(path)
    con.executescript((MIGRATIONS / "context/sqlite/0001_initial.sql").read_text())
    con.execute(
        "INSERT INTO resources (type, id, version, updated_at, json)"
        " VALUES ('Patient', 'p1', 3, 1.0, '{\"id\": \"p1\"}')"
    )
    con.close()
    reader = ContextReader(open_context(StorageConfig(var_dir=str(tmp_path / "var"))))
    try:
        assert resources(reader, "Patient") == [{"id": "p1", "_version": 3}]
    finally:
        reader.close()


def test_a_new_context_file_has_small_pages_and_an_old_one_keeps_its_own(tmp_path):
    """Issue 14: the context store is created with 1 KB pages (each HL7 commit writes a third
    of the WAL bytes it wrote at 4 KB); the ledger keeps SQLite's 4 KB; a context file created
    before keeps 4 KB, still written and read."""
    from state.ledger import open_ledger
    from state.sqlite import connect

    storage = StorageConfig(var_dir=str(tmp_path / "new"))
    context, ledger = open_context(storage, writer=True), open_ledger(storage)
    try:
        for db, size in ((context, 1024), (ledger.db, 4096)):
            with db.read() as tx:
                assert tx.one("PRAGMA page_size") == {"page_size": size}
        assert ContextWriter(context).receive(entry(adt("A01", "PG1"))).result()[0] is Disposition.APPLIED
    finally:
        context.close()
        ledger.close()
    old = tmp_path / "old" / "var"
    connect(old / "context.sqlite").close()  # created as before: SQLite's page size
    db = open_context(StorageConfig(var_dir=str(old)), writer=True)
    try:
        assert ContextWriter(db).receive(entry(adt("A01", "PG2"))).result()[0] is Disposition.APPLIED
        with db.read() as tx:
            assert tx.one("PRAGMA page_size") == {"page_size": 4096}
        assert [r["control_id"] for r in ContextReader(db).inbox()] == ["PG2"]
    finally:
        db.close()


# ---------------------------------------------------------------- write and read back
def test_a_message_is_stored_raw_and_applied_and_the_join_finds_it(store):
    writer, reader, _ = store
    raw = orm("W1", accession="ACC-W1")
    assert writer.receive(entry(raw)).result() == (Disposition.APPLIED, None)
    [row] = reader.inbox()
    assert (row["control_id"], row["status"], row["resends"], row["audited"]) == ("W1", "applied", 0, 0)
    [patient] = resources(reader, "Patient")
    assert patient["_version"] == 1 and patient["birthDate"] == "1970-06-15"
    found = reader.find("", [hash_identifier("ACC-W1", KEY)], [], None, 1)
    assert found is not None and found.match == "accession"
    assert found.patient is not None and found.patient["id"] == patient["id"]
    assert found.service_request["subject"] == {"reference": f"Patient/{patient['id']}"}
    assert reader.resource("Patient", patient["id"])["id"] == patient["id"]
    with reader.db.read() as tx:
        stored = tx.one("SELECT raw FROM hl7_inbox WHERE control_id = 'W1'")
        values = [
            v for t in ("hl7_inbox", "resources", "orders") for r in tx.all(f"SELECT * FROM {t}") for v in r.values()
        ]
    assert sealer_of(reader.db).open_blob(stored["raw"]) == raw.encode()  # byte for byte, on both backends
    # sealed at rest (issue 13): no row value, read raw through the driver, names the patient
    stored_bytes = b"".join(
        v.encode() if isinstance(v, str) else bytes(v) for v in values if isinstance(v, (str, bytes, memoryview))
    )
    for phi in (b"SYNTHETIC", b"MRN123", b"19700615", b"1970-06-15", b"ACC-W1", b"Chest pain"):
        assert phi not in stored_bytes, phi


def test_a_resend_is_a_duplicate_and_changes_nothing(store):
    writer, reader, _ = store
    assert writer.receive(entry(orm("D1"))).result()[0] is Disposition.APPLIED
    assert writer.receive(entry(orm("D1"), now=200.0)).result() == (Disposition.DUPLICATE, None)
    assert [r["_version"] for r in resources(reader, "ServiceRequest")] == [1]
    [row] = reader.inbox()
    assert (row["status"], row["resends"]) == ("applied", 1)


def test_a_batch_is_one_commit_and_each_message_sees_the_ones_before_it(store):
    """A parse worker's batch (``store_batch``): one transaction, each message in a savepoint
    of its own, so a re-send and a conflict inside the batch are told apart as across
    batches, and a message that fails alone leaves the others stored."""
    writer, reader, _ = store
    broken = replace(entry(adt("A01", "B9")), header=None)  # fails inside its savepoint
    rejected = Rejection(b"garbage", "127.0.0.1:5000", None, AckError("100", "not HL7"), 100.0)
    out = writer.store_batch(
        [
            entry(orm("B1", priority="S")),
            entry(orm("B1", priority="S")),
            broken,
            entry(orm("B1", priority="R")),
            rejected,
        ]
    )
    assert out[:2] == [(Disposition.APPLIED, None), (Disposition.DUPLICATE, None)]
    assert isinstance(out[2], AttributeError)
    assert out[3][0] is Disposition.CONFLICT and out[4] == (Disposition.REJECTED, rejected.error)
    [row] = reader.inbox()
    assert (row["control_id"], row["status"], row["resends"]) == ("B1", "applied", 1)
    assert [c["control_id"] for c in reader.conflicts()] == ["B1"]
    assert reader.count("hl7_rejected") == 1 and reader.count("orders") == 1


def test_other_content_under_a_used_control_id_is_a_conflict(store):
    writer, reader, _ = store
    writer.receive(entry(orm("C1", priority="S"))).result()
    for _ in range(2):
        disposition, error = writer.receive(entry(orm("C1", priority="R"))).result()
        assert disposition is Disposition.CONFLICT and error is not None
        assert (error.code, error.location) == ("205", "MSH^1^10")
    [request] = resources(reader, "ServiceRequest")
    assert (request["priority"], request["_version"]) == ("stat", 1)  # nothing applied
    [conflict] = reader.conflicts()
    assert (conflict["control_id"], conflict["resends"]) == ("C1", 1)
    assert b"^^^^^R" in bytes(conflict["raw"])


def test_a_message_that_broke_a_rule_is_evaluated_afresh_when_resent(store):
    writer, reader, _ = store
    bad = replace(entry(orm("R1")), update=None, error=AckError("101", "OBR-4 missing", "OBR^1^4"))
    assert writer.receive(bad).result() == (Disposition.INVALID, bad.error)
    assert reader.count("resources") == 0
    assert writer.receive(entry(orm("R1"))).result()[0] is Disposition.APPLIED
    [row] = reader.inbox()
    assert (row["status"], row["resends"], row["error_code"]) == ("applied", 1, "")


def test_a_constraint_violation_undoes_only_the_apply(store):
    """The apply runs in a SAVEPOINT: a NOT NULL violation (the backend's integrity error) keeps
    the inbox row and none of the resources written before it; the answer is AE 207."""
    writer, reader, _ = store
    good = entry(orm("I1"))
    assert good.update is not None
    [order] = good.update.orders
    broken = replace(good, update=replace(good.update, orders=(replace(order, status=None),)))
    disposition, error = writer.receive(broken).result()
    assert disposition is Disposition.INVALID and error is not None and error.code == "207"
    assert reader.count("resources") == 0 and reader.count("orders") == 0
    assert [(r["control_id"], r["status"]) for r in reader.inbox()] == [("I1", "invalid")]
    assert writer.receive(good).result()[0] is Disposition.APPLIED  # the store still takes writes


def test_rejected_heads_and_audit_marks(store):
    writer, reader, _ = store
    writer.receive(entry(orm("A1"))).result()
    writer.reject(b"\x0bnot hl7\x00\xff", "peer", None, AckError("100", "no MSH"), 100.0).result()
    inbox, rejected, conflicts = reader.unaudited()
    assert [r["control_id"] for r in inbox] == ["A1"] and len(rejected) == 1 and conflicts == []
    writer.receive(entry(orm("A1"))).result()  # re-sent after it was read: stays unaudited
    writer.mark_audited([(r["seq"], r["resends"]) for r in inbox], [r["seq"] for r in rejected]).result()
    inbox, rejected, _ = reader.unaudited()
    assert [(r["control_id"], r["resends"]) for r in inbox] == [("A1", 1)] and rejected == []
    writer.mark_audited([(r["seq"], r["resends"]) for r in inbox], []).result()
    assert reader.unaudited() == ([], [], [])
    with pytest.raises(ValueError, match="expected one of"):
        reader.count("jobs")


def test_retention_purges_audited_raw_messages_and_rejected_heads_a_page_at_a_time(store):
    """``state.retention_purge.purge_context``: pages of ``seq`` after the last, on both
    backends; only audited rows at or before the cutoff; an inbox row keeps its digest."""
    from state.retention_purge import context_due, purge_context

    writer, reader, db = store
    for n in range(5):
        writer.receive(entry(orm(f"R{n}"), now=100.0 + n)).result()
        writer.reject(b"MSH|garbage", "peer", None, AckError("100", "no"), 100.0 + n).result()
    writer.receive(entry(orm("LATE"), now=500.0)).result()
    inbox, rejected, _ = reader.unaudited()
    writer.mark_audited(
        [(r["seq"], 0) for r in inbox if r["control_id"] != "R4"], [r["seq"] for r in rejected]
    ).result()
    assert context_due(db, 400.0, 400.0) == {"hl7_raw": 4, "rejected": 5}
    pages = []
    assert purge_context(db, 400.0, 400.0, page=2, between=lambda: pages.append(1) or True) == {
        "hl7_raw": 4,
        "rejected": 5,
    }
    assert len(pages) == 7  # before each page: raw 2, 2, 0; conflict copies 0; rejected heads 2, 2, 1
    with db.read() as tx:
        rows = tx.all("SELECT control_id, length(raw) AS n, sha256 FROM hl7_inbox ORDER BY seq")
    assert {r["control_id"]: r["n"] > 0 for r in rows} == {f"R{n}": n == 4 for n in range(5)} | {"LATE": True}
    assert all(r["sha256"] for r in rows) and context_due(db, 400.0, 400.0) == {"hl7_raw": 0, "rejected": 0}


# ------------------------------------------------------------- identities and merges
def test_a40_moves_orders_and_encounters_to_the_survivor(store):
    writer, reader, _ = store
    for raw in (
        adt("A04", "P1", mrn="MRN999"),
        orm("O1", mrn="MRN999", accession="ACCM"),
        adt("A01", "P2", mrn="MRN123"),
        a40("M1", survivor="MRN123", prior="MRN999"),
    ):
        assert writer.receive(entry(raw)).result()[0] is Disposition.APPLIED
    patients = {p["identifier"][0]["value"]: p for p in resources(reader, "Patient")}
    prior, survivor = patients["MRN999"], patients["MRN123"]
    assert prior["active"] is False and prior["_version"] == 3  # A04, ORM, A40
    assert prior["link"] == [{"other": {"reference": f"Patient/{survivor['id']}"}, "type": "replaced-by"}]
    assert {"other": {"reference": f"Patient/{prior['id']}"}, "type": "replaces"} in survivor["link"]
    found = reader.find("", [hash_identifier("ACCM", KEY)], [], None, 1)
    assert found.service_request["subject"] == {"reference": f"Patient/{survivor['id']}"}
    assert found.patient["id"] == survivor["id"]
    assert found.encounter is not None
    by_old_id = reader.find("", [], [hash_identifier("MRN999", KEY)], date(2025, 3, 1), 1)
    assert by_old_id is not None and by_old_id.patient["id"] == survivor["id"]


def test_a_known_identity_rebinds_and_two_authorities_are_two_people(store):
    writer, reader, _ = store
    for raw in (
        adt("A01", "ID1", pid3="4711^^^A^MR~X9^^^HOSP^PI", name="ALPHA^ANNA"),
        orm("ID2", pid3="X9^^^HOSP^PI", name="ALPHA^ANNA", accession="ACC-A"),
        adt("A01", "ID3", pid3="4711^^^B^MR", name="BRAVO^BERT", visit="V2^^^B^VN"),
    ):
        assert writer.receive(entry(raw)).result()[0] is Disposition.APPLIED
    patients = {p["name"][0]["family"]: p for p in resources(reader, "Patient")}
    assert set(patients) == {"ALPHA", "BRAVO"}
    assert patients["ALPHA"]["_version"] == 2  # the order found ALPHA by its second identity
    order = reader.find("", [hash_identifier("ACC-A", KEY)], [], None, 1)
    assert order.patient["id"] == patients["ALPHA"]["id"]
    # a study with only the bare Patient ID 4711 cannot tell A from B: no join
    assert reader.find("", [], [hash_identifier("4711", KEY)], date(2025, 3, 1), 1) is None


def test_the_join_prefers_study_uid_then_accession_then_patient_and_date(store):
    writer, reader, _ = store
    writer.receive(entry(omi("J1", accession="ACC-OMI", study_uid="1.2.3.99"))).result()
    writer.receive(entry(orm("J2", accession="ACC-ORM"))).result()
    acc = hash_identifier("ACC-ORM", KEY)
    assert reader.find("1.2.3.99", [acc], [], None, 1).match == "study_uid"
    assert reader.find("9.9", [acc], [], None, 1).match == "accession"
    by_date = reader.find("9.9", [], [hash_identifier("MRN123", KEY)], date(2025, 3, 2), 0)
    assert by_date.match == "patient+date"
    assert by_date.service_request["identifier"][-1]["value"] == "ACC-OMI"
    assert reader.find("9.9", [], [hash_identifier("MRN123", KEY)], date(2025, 4, 1), 1) is None


def test_the_order_status_is_the_latest_ris_report_of_the_study(store):
    """The assembler's order-status evidence (issue 18): ORC-5 as stored, read back mapped."""
    writer, reader, _ = store
    acc = hash_identifier("ACC-ST", KEY)
    assert reader.order_status("9.9", acc) is None
    writer.receive(entry(orm("S1", accession="ACC-ST"), now=100.0)).result()
    scheduled = reader.order_status("", acc)
    assert scheduled is not None and scheduled.progress is OrderProgress.IN_PROGRESS
    writer.receive(entry(orm("S2", accession="ACC-ST", control_code="XO", status="CM"), now=200.0)).result()
    done = reader.order_status("9.9", acc)
    assert done is not None and (done.progress, done.at) == (OrderProgress.COMPLETED, 200.0)
    assert done.source == "ServiceRequest.status=completed"
    writer.receive(entry(omi("S3", accession="ACC-OTHER", study_uid="1.2.3.7"), now=300.0)).result()
    assert reader.order_status("1.2.3.7", "").progress is OrderProgress.IN_PROGRESS
    assert reader.order_status("", hash_identifier("ACC-NONE", KEY)) is None
    assert isinstance(reader, OrderStatusSource)


# --------------------------------------------------------------- writers at once
def test_copies_of_one_message_racing_each_other_apply_once(store):
    writer, reader, _ = store
    results = at_once([lambda: writer.receive(entry(orm("RACE1"))).result()] * 8)
    assert sorted(r[0].value for r in results) == ["applied"] + ["duplicate"] * 7, results
    [row] = reader.inbox()
    assert row["resends"] == 7
    assert [r["_version"] for r in resources(reader, "ServiceRequest")] == [1]


def test_messages_creating_one_patient_at_once_lose_nothing(store):
    """An ADT without a birth date and an order with one, for a new patient, at the same time:
    whichever commits first, the patient keeps the birth date (no update is lost)."""
    writer, reader, _ = store
    for i in range(12):
        mrn = f"NEW{i}"
        at_once(
            [
                lambda m=mrn, i=i: writer.receive(entry(adt("A08", f"NA{i}", mrn=m, birth=""))).result(),
                lambda m=mrn, i=i: writer.receive(entry(orm(f"NO{i}", mrn=m, accession=f"ACN{i}"))).result(),
            ]
        )
    patients = resources(reader, "Patient")
    assert len(patients) == 12
    assert all(p.get("birthDate") == "1970-06-15" and p["_version"] == 2 for p in patients)
    assert reader.count("orders") == 12


def test_concurrent_messages_share_commits_on_sqlite(backend, store):
    if backend != "sqlite":
        pytest.skip("SQLite's group commit; PostgreSQL groups commits in the server")
    writer, reader, db = store
    assert isinstance(db, SqliteDatabase)
    before = db.commits
    results = at_once([lambda i=i: writer.receive(entry(adt("A01", f"G{i}", mrn=f"G{i}"))).result() for i in range(16)])
    assert all(r[0] is Disposition.APPLIED for r in results), results
    assert db.items >= 16 and db.commits - before < 16  # fewer fsyncs than messages
    assert reader.count("hl7_inbox") == 16


# ------------------------------------------------------------ checkpoints (SQLite)
def _fill(db: SqliteDatabase, pages: int) -> None:
    db.run(lambda tx: tx.execute("CREATE TABLE IF NOT EXISTS filler (b BLOB)"))
    for _ in range(pages // 50):
        db.run(lambda tx: tx.executemany("INSERT INTO filler VALUES (?)", [(b"x" * 4000,) for _ in range(50)]))


@pytest.mark.parametrize("autocheckpoint", [True, False])
def test_with_autocheckpoint_off_only_checkpoint_copies_the_wal(tmp_path: Path, autocheckpoint):
    """The context store's commits never checkpoint (the listener's loop does): the database
    file stays as it was until ``checkpoint()``; with SQLite's default a commit copies it."""
    path = tmp_path / "store.sqlite"
    db = SqliteDatabase(path, autocheckpoint=autocheckpoint)
    try:
        _fill(db, 1500)  # more than the 1,000 pages that trigger an autocheckpoint
        grown = path.stat().st_size > 4_000_000
        assert grown is autocheckpoint
        copied = db.checkpoint()
        assert path.stat().st_size > 4_000_000
        assert (copied > 1000) is not autocheckpoint
        assert db.checkpoint() == 0  # nothing new since
    finally:
        db.close()


def test_a_run_inside_a_run_is_refused_not_deadlocked(tmp_path: Path):
    """Group commit hands work between threads: a transaction that starts another on its own
    store would wait for itself, so it is an error."""
    db = SqliteDatabase(tmp_path / "store.sqlite")
    try:
        with pytest.raises(RuntimeError, match="inside a transaction"):
            db.run(lambda tx: db.run(lambda inner: 1))
        assert db.run(lambda tx: 2) == 2  # the store still takes work
    finally:
        db.close()


# ------------------------------------------------------ submit: the listener's way in
def test_submitted_transactions_settle_with_their_result_or_their_error(store):
    """``Database.submit`` on both backends: a future per transaction, an error only its own."""
    _, reader, db = store
    futures = [
        db.submit(
            lambda tx, i=i: tx.execute(
                "INSERT INTO patient_keys (patient_key, patient_id) VALUES (?, ?)", (f"k{i}", "p")
            )
        )
        for i in range(20)
    ]
    failing = db.submit(lambda tx: tx.execute("INSERT INTO patient_keys (patient_key, patient_id) VALUES (NULL, 'p')"))
    assert [f.result(30) for f in futures] == [1] * 20
    with pytest.raises(Exception) as info:
        failing.result(30)
    assert isinstance(info.value, db.run(lambda tx: tx.integrity_error))
    with reader.db.read() as tx:
        assert tx.one("SELECT COUNT(*) AS n FROM patient_keys")["n"] == 20


@pytest.mark.parametrize("group_max", [0, 1])
def test_threads_and_submissions_share_group_commits_on_sqlite(tmp_path: Path, group_max):
    """Blocking callers (``run``: a stage's workers) and submissions (``submit``: an event loop)
    join the same groups; every caller gets its own answer; ``group_max`` caps a group."""
    db = SqliteDatabase(tmp_path / "g.sqlite", group_max=group_max)
    try:
        db.run(lambda tx: tx.execute("CREATE TABLE t (v INTEGER)"))
        start = (db.commits, db.items)
        submitted = [
            db.submit(lambda tx, v=v: tx.one("INSERT INTO t VALUES (?) RETURNING v", (v,))["v"])
            for v in range(100, 130)
        ]
        threads = at_once(
            [lambda v=v: db.run(lambda tx: tx.execute("INSERT INTO t VALUES (?)", (v,))) for v in range(12)]
        )
        assert threads == [1] * 12
        assert [f.result(30) for f in submitted] == list(range(100, 130))
        commits, items = db.commits - start[0], db.items - start[1]
        assert items == 42
        assert commits == items if group_max == 1 else commits < items
    finally:
        db.close()
    with pytest.raises(RuntimeError, match="closed"):
        db.submit(lambda tx: 0)
