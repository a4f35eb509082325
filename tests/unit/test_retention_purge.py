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
from state.retention_purge import Purger, context_opener
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
