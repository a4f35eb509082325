"""The success measures (issue 12) from a real ledger on both backends: known results, views and
reviews give the right measures; the agreement alert is raised once, across restarts; ``pacsai
metrics export`` writes typed Parquet and is audited; the API answers the same rows."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from actors.agreement import AgreementWatch
from core.audit import AuditEvent
from core.auth import Scope
from core.config import ClinicalConfig, StorageConfig
from core.success_metrics import MonthlyMeasures
from core.types import AuditEventType
from state.db import Tx
from state.ledger import Ledger, open_ledger
from state.ledger.audit import append_events
from state.ledger.success import month_start
from tests.integration.api_harness import make_harness

ROOT = Path(__file__).resolve().parents[2]
JAN = month_start("2026-01") + 5 * 86400
FEB = month_start("2026-02") + 3 * 86400
V1, V2 = "chest_xray@1.0", "chest_xray@2.0"

# (job_id, study, sr_uid, model version, last instance at, delivered at or None, alert items:
#  (finding, present, critical, quality flag))
RESULTS = [
    (
        1,
        "1.2.1",
        "1.9.1",
        "1.0",
        JAN,
        JAN + 60,
        [("ptx", 1, 1, 0), ("effusion", 1, 0, 0), ("nodule", 0, 0, 0), ("motion", 1, 0, 1)],
    ),
    (2, "1.2.2", "1.9.2", "1.0", JAN + 100, JAN + 400, [("ptx", 0, 1, 0)]),
    (3, "1.2.3", "1.9.3", "1.0", JAN + 200, None, [("ptx", 1, 1, 0)]),  # not delivered: no result
    (4, "1.2.4", "1.9.4", "2.0", FEB, FEB + 30, [("ptx", 1, 1, 0)]),
]
VIEWS = [
    ("1.9.1", "dr-a", "1.2.1", JAN + 600),
    ("1.9.1", "dr-b", "1.2.1", JAN + 900),
    ("1.9.4", "dr-a", "1.2.4", FEB + 90),
]
# (sr_uid, finding, reader, assessment, final_present, reviewed_at)
REVIEWS = [
    ("1.9.1", "ptx", "dr-a", "agree", 1, JAN + 1200),
    ("1.9.1", "effusion", "dr-a", "disagree", 0, JAN + 1300),  # a false positive
    ("1.9.1", "nodule", "dr-a", "override", 1, JAN + 1300),
    ("1.9.2", "ptx", "dr-a", "disagree", 1, JAN + 5000),  # a missed critical finding
    ("1.9.4", "ptx", "dr-a", "agree", 1, FEB + 600),
]
JAN_V1 = MonthlyMeasures(
    model_version=V1,
    month="2026-01",
    studies_with_results=2,
    utilisation=0.5,
    findings_reviewed=4,
    false_positive_rate=0.5,
    critical_sensitivity=0.5,
    agreement_rate=0.25,
    turnaround_archive_to_sr_p50_s=60.0,
    turnaround_archive_to_sr_p90_s=300.0,
    turnaround_sr_to_review_p50_s=1140.0,
    uptime=0.75,
)
FEB_V2 = MonthlyMeasures(V2, "2026-02", 1, 1.0, 1, 0.0, 1.0, 1.0, 30.0, 30.0, 570.0, None)


def seed(ledger: Ledger) -> None:
    """What the stages and the review routes would have written (their write paths are theirs)."""

    def write(tx: Tx) -> None:
        for job_id, study, sr, version, last_at, delivered, items in RESULTS:
            tx.execute(
                "INSERT INTO jobs (job_id, study_uid, version, state, not_before, created_at, updated_at,"
                " last_instance_at) VALUES (?,?,1,?,0,?,?,?)",
                (job_id, study, "delivered" if delivered else "written", last_at, last_at, last_at),
            )
            tx.execute(
                "INSERT INTO sr_results (sop_instance_uid, sop_class_uid, series_uid, study_uid, job_id, job_version,"
                " family, model_name, model_version, created_at, state, updated_at) VALUES (?,?,?,?,?,1,?,?,?,?,?,?)",
                (sr, "1.2.840.10008.5.1.4.1.1.88.22", sr + ".0", study, job_id, "chest_xray", "cxr", version,
                 last_at + 10, "delivered" if delivered else "pending", last_at + 10),
            )  # fmt: skip
            tx.execute(
                "INSERT INTO outbox (job_id, sop_instance_uid, sop_class_uid, kind, family, path, state, created_at,"
                " delivered_at, series_uid) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (job_id, sr, "1.2.840.10008.5.1.4.1.1.88.22", "sr", "chest_xray", "x.dcm",
                 "delivered" if delivered else "pending", last_at + 10, delivered, sr + ".0"),
            )  # fmt: skip
            tx.executemany(
                "INSERT INTO alert_items (sr_uid, study_uid, family, finding, probability, present, critical,"
                " quality_flag, created_at) VALUES (?,?,?,?,?,?,?,?,?)",
                [(sr, study, "chest_xray", f, 0.9 if p else 0.1, p, c, q, last_at + 10) for f, p, c, q in items],
            )
        tx.executemany(
            "INSERT INTO result_views (sr_uid, reader, study_uid, first_at, last_at) VALUES (?,?,?,?,?)",
            [(sr, reader, study, at, at) for sr, reader, study, at in VIEWS],
        )
        studies = {r[2]: r[1] for r in RESULTS}
        tx.executemany(
            "INSERT INTO finding_reviews (sr_uid, finding, reader, submission_id, study_uid, family, model_version,"
            " assessment, final_present, reviewed_at) VALUES (?,?,?,1,?,?,?,?,?,?)",
            [(sr, f, who, studies[sr], "chest_xray", "whatever", a, p, at) for sr, f, who, a, p, at in REVIEWS],
        )

    ledger.db.run(write)
    inferred = AuditEvent(AuditEventType.INFERRED, "stage:inference", detail={"family": "chest_xray", "version": "1.0"})
    failed = AuditEvent(
        AuditEventType.INFERENCE_FAILED,
        "stage:inference",
        detail={"family": "chest_xray", "version": "1.0", "shadow": True, "error": "x"},
    )
    prior = AuditEvent(
        AuditEventType.INFERENCE_FAILED, "stage:inference", detail={"family": "chest_xray", "prior": True}
    )
    ledger.db.run(lambda tx: append_events(tx, [inferred, inferred, inferred, failed, prior], JAN + 50))


class At:
    def __init__(self, now: float) -> None:
        self.at = now

    def now(self) -> float:
        return self.at


@pytest.fixture
def storage(backend, storage_for) -> StorageConfig:
    cfg: StorageConfig = storage_for(backend)
    ledger = open_ledger(cfg)
    seed(ledger)
    ledger.close()
    return cfg


def agreement_events(ledger: Ledger) -> list:
    return [e for e in ledger.audit.events() if e.type == AuditEventType.AGREEMENT_BELOW_FLOOR.value]


def test_known_results_and_reviews_give_the_measures_and_one_agreement_alert(storage):
    ledger = open_ledger(storage)
    try:
        assert ledger.success.monthly() == [JAN_V1, FEB_V2]
        results, reviews = ledger.success.records(month_start("2026-02"))
        assert [(r.study_uid, r.model_version, r.opened_at) for r in results] == [("1.2.4", V2, FEB + 90)]
        assert [(r.finding, r.assessment) for r in reviews] == [("ptx", "agree")]
        clinical = ClinicalConfig(agreement_floor=0.8, agreement_min_reviews=3)
        watch = AgreementWatch(ledger, clinical, At(FEB + 86400))
        assert watch.round() == 1 and watch.round() == 0
        [event] = agreement_events(ledger)
        assert event.detail == {
            "model_version": V1,
            "month": "2026-01",
            "agreement_rate": 0.25,
            "reviews": 4,
            "floor": 0.8,
        }
        assert ledger.success.alerted() == {(V1, "2026-01")}
    finally:
        ledger.close()
    again = open_ledger(storage)  # a restart: the alert is not raised a second time
    try:
        assert AgreementWatch(again, clinical, At(FEB + 2 * 86400)).round() == 0
        assert len(agreement_events(again)) == 1
        assert again.audit.verify() is None
    finally:
        again.close()


@pytest.mark.parametrize("backend", ["sqlite"])
def test_metrics_export_writes_typed_parquet_is_audited_and_the_api_answers_the_same(storage, tmp_path):
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump({"storage": {"var_dir": storage.var_dir}}))
    out = tmp_path / "success.parquet"
    run = subprocess.run(
        [sys.executable, "-m", "actors.cli", "metrics", "export", "--config", str(config), "--out", str(out),
         "--user", "ann"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    table = pq.read_table(out)
    assert table.schema.field("studies_with_results").type == pa.int64()
    assert not table.schema.field("studies_with_results").nullable and table.schema.field("utilisation").nullable
    assert table.schema.field("uptime").type == pa.float64() and table.schema.field("month").type == pa.string()
    rows = table.to_pylist()
    assert [MonthlyMeasures(**r) for r in rows] == [JAN_V1, FEB_V2]
    assert rows[1]["uptime"] is None  # nothing measured: null, not 0
    since = subprocess.run(
        [sys.executable, "-m", "actors.cli", "metrics", "export", "--config", str(config), "--out", str(out),
         "--since", "2026-13"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert since.returncode == 2 and "--since" in since.stderr

    api = make_harness(tmp_path, storage, clinical={"agreement_floor": 0.5, "agreement_min_reviews": 4})
    try:
        [exported] = [e for e in api.ctx.ledger.audit.events() if e.type == AuditEventType.METRICS_EXPORTED.value]
        assert exported.actor == "user:ann" and exported.detail["rows"] == 2
        assert api.client.get("/api/v1/clinical/success").status_code == 401
        answer = api.client.get("/api/v1/clinical/success?months=120", headers=api.headers(Scope.READ))
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert [MonthlyMeasures(**r) for r in body["rows"]] == [JAN_V1, FEB_V2]
        assert body["alerts"] == [
            {"model_version": V1, "month": "2026-01", "agreement_rate": 0.25, "reviews": 4, "floor": 0.5}
        ]
    finally:
        api.close()
