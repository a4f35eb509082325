"""PHI-bearing columns sealed at rest (state.column_seal) and re-sealed on rotation (state.data_keys_db).

SQLite files in a temporary var dir: the raw bytes of every store file (WAL included) must not
hold the patient's name, ID, birth date, accession or the indication in words.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from core.acks import AckError
from core.config import AppConfig, EncryptionConfig, StorageConfig
from core.envelope import EnvelopeError, Keyring
from core.hl7 import parse_message
from core.v2fhir import V2FhirMapper
from state.column_seal import TEXT_MARK, ColumnSealer, key_of, keyed_path, path_keys, sealer_of
from state.context_store import ContextReader, ContextWriter, InboxEntry, context_file, open_context
from state.data_keys import load_keyring, rotated, write_key_file
from state.data_keys_db import count_unsealed_current, reseal_counts, reseal_databases
from state.ehr_outbox import EhrOutbox
from state.layout import VarLayout
from state.ledger import open_database, open_ledger
from tests.hl7_messages import orm

PHI = (b"SYNTHETIC", b"MRN123", b"19700615", b"1970-06-15", b"ACC3003", b"Chest pain")
MAPPER = V2FhirMapper(b"k" * 16, {"HOSP": "http://hosp.example/mrn"}, validate_resources=False)


def entry(raw: str, now: float = 100.0) -> InboxEntry:
    message = parse_message(raw.encode())
    return InboxEntry(message.header, raw.encode(), "peer", now, MAPPER.map(message), None, message.digest)


def fill(storage: StorageConfig) -> None:
    """One ORM (applied), a conflicting copy, an AR head, a queued report and a job record."""
    db = open_context(storage, writer=True)
    writer = ContextWriter(db)
    writer.receive(entry(orm("S1"))).result()
    writer.receive(entry(orm("S1", mrn="MRN123", name="SYNTHETIC^OTHER"), 101.0)).result()  # a conflict
    writer.reject(orm("S2").encode(), "peer", None, AckError("100", "bad SYNTHETIC^PATIENT"), 102.0).result()
    db.close()
    ehr = EhrOutbox(open_database(storage.ledger, VarLayout.at(storage.var_dir), "ehr"))
    ehr.enqueue("1.2.3.4", 1, "1.2.3", 0, {"subject": {"display": "SYNTHETIC^PATIENT", "id": "MRN123"}}, 100.0)
    [queued] = ehr.reports()  # an EHR's refusal may quote the patient: its text is sealed too
    ehr.defer(queued.item_id, 101.0, "HTTP 422: no patient MRN123 (SYNTHETIC^PATIENT)", spent=True)
    ehr.close()
    ledger = open_ledger(storage)
    ledger.db.run(
        lambda tx: tx.execute(
            "INSERT INTO jobs (study_uid, version, state, not_before, created_at, updated_at, last_instance_at,"
            " data) VALUES ('1.2.3', 1, 'routed', 0, 0, 0, 0, ?)",
            (sealer_of(ledger.db).text('{"indication": "Chest pain, born 19700615"}'),),
        )
    )
    ledger.close()


def store_bytes(var: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(var.rglob("*.sqlite*")))


@pytest.fixture
def storage(tmp_path: Path) -> StorageConfig:
    return StorageConfig(var_dir=str(tmp_path / "var"))


def test_sealer_round_trips_and_leaves_clear_values_readable():
    ring = rotated(None)
    seal = ColumnSealer(ring)
    text = seal.text('{"name": "SYNTHETIC"}')
    assert text.startswith(TEXT_MARK) and "SYNTHETIC" not in text and key_of(text) == ring.current
    assert seal.open_text(text) == '{"name": "SYNTHETIC"}'
    blob = seal.blob(b"PID|1||MRN123")
    assert b"MRN123" not in blob and seal.open_blob(blob) == b"PID|1||MRN123" and key_of(blob) == ring.current
    assert seal.open_text("{}") == "{}" and seal.open_blob(b"MSH|") == b"MSH|"  # from before sealing
    assert key_of("{}") is None and seal.text("") == "" and seal.blob(b"") == b""
    assert ColumnSealer(None).text("clear") == "clear"
    with pytest.raises(EnvelopeError):
        ColumnSealer(None).open_text(text)  # encryption off: a sealed value cannot be read
    with pytest.raises(EnvelopeError):
        ColumnSealer(rotated(None)).open_blob(blob)  # another keyring


def test_a_parse_worker_gets_the_stores_keys_with_its_path(storage):
    db = open_context(storage, writer=True)
    path = context_file(db)
    assert path is not None
    copied = pickle.loads(pickle.dumps(path))  # as the forkserver hands it over
    ring, got = sealer_of(db).ring, path_keys(copied)
    assert copied == path and ring is not None and got is not None
    assert (dict(got.keys), got.current) == (dict(ring.keys), ring.current)
    assert path_keys(Path(path)) is None and path_keys(keyed_path(path, None)) is None
    db.close()


def test_no_store_file_holds_the_patient_in_clear_and_every_value_reads_back(storage):
    fill(storage)
    var = Path(storage.var_dir)
    raw = store_bytes(var)
    assert len(raw) > 10_000
    for phi in PHI:
        assert phi not in raw, phi
    db = open_context(storage)
    reader = ContextReader(db)
    [patient] = [r for r in [reader.resource("Patient", p) for p in _ids(db, "Patient")] if r]
    assert patient["birthDate"] == "1970-06-15"
    assert b"MRN123" in reader.conflicts()[0]["raw"]
    db.close()
    [report] = EhrOutbox(open_database(storage.ledger, VarLayout.at(storage.var_dir), "ehr")).reports()
    assert report.bundle["subject"]["display"] == "SYNTHETIC^PATIENT"
    assert report.last_error == "HTTP 422: no patient MRN123 (SYNTHETIC^PATIENT)"


def _ids(db, kind: str) -> list[str]:
    with db.read() as tx:
        return [r["id"] for r in tx.all("SELECT id FROM resources WHERE type = ?", (kind,))]


def test_rotation_reseals_every_value_under_the_new_key(storage, tmp_path):
    key_file = tmp_path / "keys.json"
    write_key_file(key_file, rotated(None, "k1"))
    storage = storage.model_copy(update={"encryption": EncryptionConfig(key_file=str(key_file))})
    fill(storage)
    cfg = AppConfig(storage=storage)
    new = rotated(load_keyring(storage.encryption, tmp_path), "k2")
    before = count_unsealed_current(cfg, new)
    counts = reseal_counts(cfg, new)
    assert before == sum(counts.values()) and counts["context.resources"] >= 3
    assert counts["context.hl7_inbox"] == counts["context.hl7_conflicts"] == 1  # raw (no error: applied)
    assert counts["ledger.jobs"] == 1 and counts["ehr.ehr_reports"] == 2 and counts["context.hl7_rejected"] == 2
    assert count_unsealed_current(cfg, new) == 0 and reseal_databases(cfg, new) == 0  # idempotent
    write_key_file(key_file, Keyring({"k2": new.keys["k2"]}, "k2"))  # the retired key dropped
    db = open_context(storage)
    assert ContextReader(db).conflicts()[0]["raw"].startswith(b"MSH|")
    db.close()
    ledger = open_ledger(storage)
    assert "Chest pain" in ledger.jobs.raw_record(1)
    ledger.close()


def test_the_reject_store_keeps_no_more_than_its_quota(storage):
    from core.errors import OutOfResources
    from state.context_store import Rejection

    db = open_context(storage, writer=True)
    try:
        writer = ContextWriter(db, rejected_max_rows=2)
        items = [Rejection(b"MSH|junk %d" % i, "peer", None, AckError("100", "bad"), 100.0 + i) for i in range(3)]
        results = writer.store_batch(items)
        assert [type(r).__name__ for r in results[:2]] == ["tuple", "tuple"]
        assert isinstance(results[2], OutOfResources) and "rejected_max_rows" in str(results[2])
        with pytest.raises(OutOfResources):  # the listener's own path refuses the same way
            writer.reject(b"MSH|more", "peer", None, AckError("100", "bad"), 200.0).result()
        with db.read() as tx:
            assert tx.one("SELECT COUNT(*) AS n FROM hl7_rejected")["n"] == 2
    finally:
        db.close()
