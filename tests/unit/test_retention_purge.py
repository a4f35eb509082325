"""The purge loop's round (state.retention_purge): only what is past its retention and settled
goes (a spool file only after its study's results were delivered), and each round is audited."""

from __future__ import annotations

import json
import os
from pathlib import Path

from core.acks import AckError
from core.config import RetentionConfig, StorageConfig
from core.hl7 import parse_message
from core.retention import DAY_S
from core.v2fhir import V2FhirMapper
from state.context_store import ContextReader, ContextWriter, InboxEntry, open_context
from state.ledger import open_ledger
from state.retention_purge import PAGE, Purger, context_opener
from tests.hl7_messages import orm

NOW = 100 * DAY_S
MAPPER = V2FhirMapper(b"k" * 16, {"HOSP": "http://hosp.example/mrn"}, validate_resources=False)


def _instance(tx, var: Path, uid: str, job_state: str, at: float) -> Path:
    path = var / "spool" / "1.2" / f"{uid}.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"DICM")
    tx.execute(
        "INSERT INTO jobs (study_uid, version, state, not_before, created_at, updated_at, last_instance_at)"
        " VALUES (?, 1, ?, 0, 0, ?, 0)",
        (f"study-{uid}", job_state, at),
    )
    job = tx.one("SELECT job_id FROM jobs WHERE study_uid = ?", (f"study-{uid}",))["job_id"]
    tx.execute(
        "INSERT INTO instances (sop_instance_uid, sop_class_uid, study_uid, series_uid, path, sha256, size,"
        " received_at, job_id) VALUES (?, '1.2.840', ?, 's', ?, '', 4, 0, ?)",
        (uid, f"study-{uid}", str(path), job),
    )
    return path


def test_a_round_purges_only_what_is_due_and_settled_and_audits_it(tmp_path):
    var = tmp_path / "var"
    retention = RetentionConfig(spool_after_delivery_days=1, rejected_days=2, hl7_raw_days=0)
    storage = StorageConfig(var_dir=str(var), retention=retention)
    ledger = open_ledger(storage)
    paths = ledger.db.run(
        lambda tx: {
            "old-delivered": _instance(tx, var, "1.1", "delivered", NOW - 2 * DAY_S),
            "young-delivered": _instance(tx, var, "1.2", "delivered", NOW - 0.5 * DAY_S),
            "old-in-work": _instance(tx, var, "1.3", "routed", NOW - 50 * DAY_S),
            "old-skipped": _instance(tx, var, "1.4", "skipped", NOW - 50 * DAY_S),
        }
    )
    (var / "rejected").mkdir()
    for name, age in (("old.dcm", 3), ("young.dcm", 1)):
        (var / "rejected" / name).write_bytes(b"x")
        os.utime(var / "rejected" / name, (NOW - age * DAY_S, NOW - age * DAY_S))
    context = open_context(storage, writer=True)
    writer = ContextWriter(context)
    for control in ("R1", "R2"):
        message = parse_message(orm(control).encode())
        writer.receive(InboxEntry(message.header, orm(control).encode(), "p", 10.0, MAPPER.map(message))).result()
    writer.reject(b"MSH|garbage", "p", None, AckError("100", "no"), 10.0).result()
    inbox, rejected, _ = ContextReader(context).unaudited()
    writer.mark_audited([(inbox[0]["seq"], 0)], [r["seq"] for r in rejected]).result()  # R2 not yet audited

    purger = Purger(storage, ledger, context_opener(storage))
    preview = purger.preview(NOW)  # what the round will take, found the same way, nothing touched
    assert preview.counts == {"hl7_raw": 1, "rejected": 2, "spool": 1} and preview.file_bytes == 4 + 1
    assert preview.purging == ("hl7_raw", "rejected", "spool")
    assert all(p.exists() for p in paths.values()) and len(list((var / "rejected").iterdir())) == 2
    with context.read() as tx:
        assert tx.one("SELECT COUNT(*) AS n FROM hl7_inbox WHERE length(raw) > 0")["n"] == 2
    assert purger.active and purger.round(NOW) == 4  # spool 1, rejected file 1 + row 1, hl7 raw 1
    assert [k for k, p in paths.items() if not p.exists()] == ["old-delivered"]
    assert sorted(p.name for p in (var / "rejected").iterdir()) == ["young.dcm"]
    with context.read() as tx:
        raws = {r["control_id"]: bytes(r["raw"]) for r in tx.all("SELECT control_id, raw FROM hl7_inbox")}
        assert tx.one("SELECT COUNT(*) AS n FROM hl7_rejected")["n"] == 0
    assert raws["R1"] == b"" and raws["R2"] != b""  # the idempotency row stays; unaudited raw stays
    with ledger.db.read() as tx:
        events = tx.all("SELECT type, actor, study_uid, sop_instance_uid, detail FROM audit WHERE type = 'data_purged'")
        marked = tx.all("SELECT sop_instance_uid, override FROM instances WHERE purged_at IS NOT NULL")
    assert [(e["actor"], e["study_uid"], e["sop_instance_uid"]) for e in events] == [("system:retention", "", "")]
    assert json.loads(events[0]["detail"]) == {"kind": "retention", "counts": {"hl7_raw": 1, "rejected": 2, "spool": 1}}
    assert purger.preview(NOW).counts == {}  # nothing left that is due
    assert [(m["sop_instance_uid"], m["override"]) for m in marked] == [("1.1", "discarded")]
    assert purger.round(NOW) == 0  # nothing more is due: no second event
    assert purger.preview(NOW + DAY_S).counts == {"rejected": 1, "spool": 1}
    assert purger.round(NOW + DAY_S) == 2  # a day later: the young delivered study and rejected file
    purger.close()
    context.close()
    ledger.close()


def test_nothing_is_purged_without_retention_configured(tmp_path):
    storage = StorageConfig(var_dir=str(tmp_path / "var"))
    ledger = open_ledger(storage)
    assert not Purger(storage, ledger, context_opener(storage)).active
    ledger.close()


def _study(tx, var: Path, study: str, size: int, at: float, job_state: str = "delivered") -> list[Path]:
    """One job of ``size`` spool files (a CT series: one study, hundreds of instances)."""
    tx.execute(
        "INSERT INTO jobs (study_uid, version, state, not_before, created_at, updated_at, last_instance_at)"
        " VALUES (?, 1, ?, 0, 0, ?, 0)",
        (study, job_state, at),
    )
    job = tx.one("SELECT job_id FROM jobs WHERE study_uid = ?", (study,))["job_id"]
    paths = []
    for n in range(size):
        uid = f"{study}.{n}"
        path = var / "spool" / study / f"{uid}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"DICM")
        tx.execute(
            "INSERT INTO instances (sop_instance_uid, sop_class_uid, study_uid, series_uid, path, sha256, size,"
            " received_at, job_id) VALUES (?, '1.2.840', ?, 's', ?, '', 4, 0, ?)",
            (uid, study, str(path), job),
        )
        paths.append(path)
    return paths


def _purge_events(ledger) -> list[dict]:
    with ledger.db.read() as tx:
        rows = tx.all("SELECT detail FROM audit WHERE type = 'data_purged' ORDER BY seq")
    return [json.loads(r["detail"]) for r in rows]


def test_a_round_purges_everything_due_in_audited_steps_not_a_page_per_period(tmp_path):
    """Three delivered 400-slice CTs, 1,200 files: one round purges them all (the round took at
    most 1,000 files per store until the next period: 24,000 a day, fewer than a CT-heavy site
    receives), in steps of at most ``page`` files, each step's marks and audit event in one
    transaction, and the dry run counts them all beforehand."""
    var = tmp_path / "var"
    storage = StorageConfig(var_dir=str(var), retention=RetentionConfig(spool_after_delivery_days=1))
    ledger = open_ledger(storage)
    paths = ledger.db.run(
        lambda tx: [p for s in ("7.1", "7.2", "7.3") for p in _study(tx, var, s, 400, NOW - 2 * DAY_S)]
    )
    purger = Purger(storage, ledger, pause_s=0)
    assert purger.preview(NOW).counts == {"spool": 1200}
    assert purger.round(NOW) == 1200
    assert not any(p.exists() for p in paths)
    steps = [e["counts"]["spool"] for e in _purge_events(ledger)]
    assert steps == [PAGE, PAGE, 1200 - 2 * PAGE]  # a page of jobs, its files a step of PAGE at a time
    with ledger.db.read() as tx:
        assert tx.one("SELECT COUNT(*) AS n FROM instances WHERE purged_at IS NULL")["n"] == 0
    assert purger.round(NOW) == 0 and len(_purge_events(ledger)) == 3
    ledger.close()


def test_a_round_stops_between_steps_when_asked_and_the_next_round_goes_on(tmp_path):
    var = tmp_path / "var"
    storage = StorageConfig(var_dir=str(var), retention=RetentionConfig(spool_after_delivery_days=1))
    ledger = open_ledger(storage)
    for n in range(5):
        ledger.db.run(lambda tx, n=n: _instance(tx, var, f"3.{n}", "delivered", NOW - 2 * DAY_S - n))
    purger = Purger(storage, ledger, page=2, pause_s=0)
    asked = []
    assert purger.round(NOW, stopping=lambda: asked.append(1) or len(asked) > 1) == 2  # one step, then stop
    assert [e["counts"] for e in _purge_events(ledger)] == [{"spool": 2}]
    assert purger.round(NOW) == 3  # the rest, oldest first, in two more steps
    assert [e["counts"] for e in _purge_events(ledger)] == [{"spool": 2}, {"spool": 2}, {"spool": 1}]
    ledger.close()


def test_a_file_that_cannot_be_deleted_is_counted_once_and_does_not_stall_the_round(tmp_path):
    var = tmp_path / "var"
    storage = StorageConfig(var_dir=str(var), retention=RetentionConfig(spool_after_delivery_days=1))
    ledger = open_ledger(storage)
    stuck = ledger.db.run(lambda tx: _instance(tx, var, "4.0", "delivered", NOW - 9 * DAY_S))
    others = [ledger.db.run(lambda tx, n=n: _instance(tx, var, f"4.{n}", "delivered", NOW - 2 * DAY_S)) for n in (1, 2)]
    stuck.unlink()
    stuck.mkdir()  # unlink() of a directory fails
    (stuck / "x").write_bytes(b"")
    purger = Purger(storage, ledger, page=1, pause_s=0)
    assert purger.round(NOW) == 2
    assert not any(p.exists() for p in others) and stuck.is_dir()
    events = _purge_events(ledger)
    assert sum(e.get("failed", 0) for e in events) == 1 and sum(e["counts"].get("spool", 0) for e in events) == 2
    with ledger.db.read() as tx:
        left = tx.all("SELECT sop_instance_uid FROM instances WHERE purged_at IS NULL")
    assert [r["sop_instance_uid"] for r in left] == ["4.0"]  # tried again next round
    ledger.close()


def test_delivered_pages_take_every_job_once_also_where_they_were_delivered_at_the_same_time(tmp_path):
    var = tmp_path / "var"
    storage = StorageConfig(var_dir=str(var))
    ledger = open_ledger(storage)
    for n in range(5):  # the same updated_at: the page key's job_id breaks the tie
        ledger.db.run(lambda tx, n=n: _study(tx, var, f"5.{n}", 2, NOW))
    ledger.db.run(lambda tx: _study(tx, var, "5.9", 2, NOW + 1))  # not yet due
    seen, after, pages = [], None, 0
    while True:
        items, after = ledger.retention.delivered(NOW, after, jobs=2)
        if after is None:
            break
        pages += 1
        seen += [i.sop_instance_uid for i in items]
    assert pages == 3 and sorted(seen) == sorted(f"5.{n}.{k}" for n in range(5) for k in range(2))
    ledger.close()


def test_context_rows_are_purged_a_page_at_a_time_until_none_is_due(tmp_path):
    var = tmp_path / "var"
    storage = StorageConfig(var_dir=str(var), retention=RetentionConfig(hl7_raw_days=0, rejected_days=0))
    ledger = open_ledger(storage)
    context = open_context(storage, writer=True)
    writer = ContextWriter(context)
    for n in range(5):
        message = parse_message(orm(f"P{n}").encode())
        writer.receive(InboxEntry(message.header, orm(f"P{n}").encode(), "p", 10.0, MAPPER.map(message))).result()
        writer.reject(b"MSH|garbage", "p", None, AckError("100", "no"), 10.0).result()
    inbox, rejected, _ = ContextReader(context).unaudited()
    writer.mark_audited([(r["seq"], 0) for r in inbox], [r["seq"] for r in rejected]).result()
    asked = []
    purger = Purger(storage, ledger, context_opener(storage), page=2, pause_s=0)
    assert purger.round(NOW, stopping=lambda: asked.append(1) or len(asked) > 2) == 4  # two pages, then stop
    assert [e["counts"] for e in _purge_events(ledger)] == [{"hl7_raw": 4}]  # what went is audited
    asked.clear()
    assert purger.round(NOW, stopping=lambda: asked.append(1) and False) == 6  # the rest, next round
    assert len(asked) == 5  # before each page: raw 1; conflict copies 0; rejected heads 2, 2, 1
    with context.read() as tx:
        assert tx.one("SELECT COUNT(*) AS n FROM hl7_inbox WHERE length(raw) > 0")["n"] == 0
        assert tx.one("SELECT COUNT(*) AS n FROM hl7_rejected")["n"] == 0
    assert [e["counts"] for e in _purge_events(ledger)] == [{"hl7_raw": 4}, {"hl7_raw": 1, "rejected": 5}]
    purger.close()
    context.close()
    ledger.close()
