"""The `pacsai` command as an operator uses it: check-config, up (with SIGTERM), status, ai, replay."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from demo.dcmtk import storescu
from demo.orthanc import free_port
from synthetic.synthetic_dicom import make_cxr_study, save_study
from tests.integration.conftest import needs_peers

pytestmark = [pytest.mark.integration, needs_peers]
ROOT = Path(__file__).resolve().parents[2]


def pacsai(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "actors.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def read_until(proc: subprocess.Popen[str], seen: str, text: str, timeout_s: float) -> str:
    """``seen`` and what ``proc`` prints after it, up to the line with ``text`` (asserted)."""
    deadline = time.monotonic() + timeout_s
    while text not in seen and time.monotonic() < deadline:
        line = proc.stdout.readline() if proc.stdout else ""
        if not line and proc.poll() is not None:
            break
        seen += line
    assert text in seen, seen[-2000:]
    return seen


def test_check_config_names_every_bad_field(tmp_path):
    good = pacsai("check-config", "configs/default.yaml")
    assert good.returncode == 0 and "OK" in good.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("listener: {ae_title: WAY_TOO_LONG_FOR_DICOM, port: nope}\nretry: {max_attempts: 0}\n")
    res = pacsai("check-config", str(bad))
    assert res.returncode == 2
    for field in ("listener.ae_title", "listener.port", "retry.max_attempts"):
        assert field in res.stderr
    missing = pacsai("check-config", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr


def test_up_serves_until_sigterm_and_status_reports_the_ledger(tmp_path):
    port = free_port()
    cfg = {
        "site_name": "cli-test",
        "storage": {"var_dir": str(tmp_path / "var")},
        "ray": {"num_cpus": 2, "namespace": "pacsai-cli-test"},
        "listener": {"port": port, "min_free_bytes": 0},
        "assembly": {"quiet_period_s": 0.3},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, RAY_ADDRESS="")  # a Ray of its own, like a fresh `pacsai up`
    proc = subprocess.Popen(
        [sys.executable, "-m", "actors.cli", "up", "--config", str(path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        ready = read_until(proc, "", "pacsai up: listener", 120)
        # the early listener (before Ray) makes it durable; the listener actors take the port over
        files = save_study(make_cxr_study(seed=5), tmp_path / "in")
        assert storescu(files, "127.0.0.1", port, "PACSAI").returncode == 0
        ready = read_until(proc, ready, "took the port over", 120)
        later = save_study(make_cxr_study(seed=6), tmp_path / "in2")
        assert storescu(later, "127.0.0.1", port, "PACSAI").returncode == 0
        second = pacsai("up", "--config", str(path))  # the port is held: refused before Ray starts
        assert second.returncode == 2 and f"127.0.0.1:{port} is in use" in second.stderr, second.stderr[
            -800:
        ]  # a config error

        def status():
            res = pacsai("status", "--config", str(path), "--json")
            assert res.returncode == 0, res.stderr
            return json.loads(res.stdout)

        # The stages start after the listener actors took the port over; on a loaded machine (CI
        # with two test workers) that took 20 s and more, which the old 30 s budget for the
        # whole wait did not always cover: wait for the stages' line, then for the two studies.
        ready = read_until(proc, ready, "every stage up", 120)
        deadline = time.monotonic() + 60
        while status()["instances"]["skipped"] != 2 and time.monotonic() < deadline:
            time.sleep(0.5)
        report = status()
        assert report["instances"]["skipped"] == 2  # no model configured: skipped, with a reason
        assert {s["health"]["actor"] for s in report["stages"]} >= {"listener", "validator", "router"}
        assert all(s["status"] == "ok" for s in report["stages"])  # every loop's thread runs
        text = pacsai("status", "--config", str(path)).stdout
        assert "skipped" in text and "queue depth: 0" in text
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out[-2000:]
    assert "stopping" in out


def test_up_refuses_to_start_with_missing_or_wrong_weights(tmp_path):
    raw = yaml.safe_load((ROOT / "configs" / "test.yaml").read_text())
    raw["storage"]["var_dir"] = str(tmp_path / "var")
    raw["models"]["chest_xray"]["weights"] = str(tmp_path / "nowhere.pt")
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    res = pacsai("up", "--config", str(path))
    assert res.returncode == 1
    assert "nowhere.pt" in res.stderr and "ModelWeightsError" in res.stderr
    wrong = tmp_path / "wrong.pt"
    wrong.write_bytes(b"not the weights")
    raw["models"]["chest_xray"].update(weights=str(wrong), sha256="0" * 64)
    path.write_text(yaml.safe_dump(raw))
    res = pacsai("up", "--config", str(path))
    assert res.returncode == 1 and "wrong.pt" in res.stderr and "0" * 64 in res.stderr


def test_up_refuses_an_alert_policy_naming_a_finding_no_model_has_before_ray(tmp_path):
    raw = yaml.safe_load((ROOT / "configs" / "test.yaml").read_text())
    raw["storage"]["var_dir"] = str(tmp_path / "var")
    policy = tmp_path / "roles.yaml"
    policy.write_text(yaml.safe_dump({"roles": {"er": {"critical_only": True, "critical_findings": ["pnuemothorax"]}}}))
    raw["clinical"] = {"policy_file": str(policy)}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    res = pacsai("up", "--config", str(path))
    assert res.returncode != 0 and "pnuemothorax" in res.stderr and "roles.er" in res.stderr, res.stderr[-2000:]
    assert "Ray" not in res.stdout  # refused before Ray started


def test_review_flags_are_listed_shown_and_resolved_by_who_may_with_why(tmp_path):
    from core.audit import AuditEvent
    from core.config import StorageConfig
    from core.ledger import RaiseReviewFlag
    from core.review import FlagKind
    from core.types import AuditEventType
    from state.ledger import open_ledger

    path = tmp_path / "cfg.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "storage": {"var_dir": str(tmp_path / "var")},
                "review": {"reviewers": {"rita": ["radiologist"], "ada": ["pacs_admin"]}},
            }
        )
    )
    ledger = open_ledger(StorageConfig(var_dir=str(tmp_path / "var")))
    flag = RaiseReviewFlag(FlagKind.PRIOR_ISSUER_MISMATCH, "1.2.3", "1.2.0", {"differing": ["IssuerOfPatientID"]})
    ledger.reviews.raise_flag(None, flag, AuditEvent(AuditEventType.PRIOR_ISSUER_MISMATCH, "t", "1.2.3"), 100.0)
    [raised] = ledger.reviews.flags()
    listed = pacsai("review", "--config", str(path), "list")
    assert listed.returncode == 0 and f"R{raised.flag_id}" in listed.stdout and "prior_issuer_mismatch" in listed.stdout
    shown = pacsai("review", "--config", str(path), "show", f"R{raised.flag_id}")
    assert "IssuerOfPatientID" in shown.stdout and "1.2.0" in shown.stdout
    # A radiologist may not declare a pair with another issuer the same patient ...
    denied = pacsai(
        "review",
        "--config",
        str(path),
        "resolve",
        str(raised.flag_id),
        "--resolution",
        "same_patient",
        "--reason",
        "looks alike",
        "--user",
        "rita",
    )
    assert denied.returncode == 1 and "AccessDenied" in denied.stderr
    stranger = pacsai(
        "review",
        "--config",
        str(path),
        "resolve",
        str(raised.flag_id),
        "--resolution",
        "acknowledged",
        "--reason",
        "seen",
        "--user",
        "mallory",
    )
    assert stranger.returncode == 1 and "review.reviewers" in stranger.stderr
    # ... the PACS administrator may, and must say why.
    done = pacsai(
        "review",
        "--config",
        str(path),
        "resolve",
        str(raised.flag_id),
        "--json",
        "--resolution",
        "different_patient",
        "--reason",
        "issuer HOSP-B is the other site",
        "--user",
        "ada",
    )
    assert done.returncode == 0, done.stderr
    [out] = json.loads(done.stdout)
    assert (out["state"], out["resolved_by"], out["reason"]) == (
        "resolved",
        "user:ada",
        "issuer HOSP-B is the other site",
    )
    assert pacsai("review", "--config", str(path), "list").stdout.strip() == "review: nothing"
    [event] = [e for e in ledger.audit.events("1.2.3") if e.type == "review_flag_resolved"]
    assert event.actor == "user:ada" and event.detail["resolution"] == "different_patient"
    ledger.close()


def test_purge_dry_run_shows_what_retention_would_delete_and_deletes_nothing(tmp_path):
    from state.ledger import open_ledger
    from tests.unit.test_retention_purge import _instance

    var = tmp_path / "var"
    config = tmp_path / "site.yaml"
    config.write_text(yaml.safe_dump({"storage": {"var_dir": str(var), "retention": {"spool_after_delivery_days": 1}}}))
    ledger = open_ledger(parse_storage(config))
    now = time.time()
    old = ledger.db.run(lambda tx: _instance(tx, var, "1.1", "delivered", now - 2 * 86400))
    young = ledger.db.run(lambda tx: _instance(tx, var, "1.2", "delivered", now - 3600))
    ledger.close()

    shown = pacsai("purge", "--dry-run", "--json", "--config", str(config))
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == {"counts": {"spool": 1}, "file_bytes": 4, "purging": ["spool"]}
    text = pacsai("purge", "--dry-run", "--config", str(config))
    assert text.returncode == 0 and "spool       1" in text.stdout and "nothing was deleted" in text.stdout
    assert old.exists() and young.exists()  # a dry run
    refused = pacsai("purge", "--config", str(config))
    assert refused.returncode == 2 and "only --dry-run" in refused.stderr and "first listener" in refused.stderr
    assert old.exists()


def test_purge_dry_run_of_a_cluster_cell_sees_that_cells_instances_and_files(tmp_path, storage_for):
    """On a cluster each cell's first listener purges the cell's own instances and files
    (``<var_dir>/cells/<cell>``); ``--cell`` previews that cell's round. The config's own
    storage is the cell ``''``, which holds nothing on a cluster; an unknown cell is refused
    naming ``cluster.cells``."""
    from core.config import cell_storage, parse_config
    from state.data_keys import rotated, write_key_file
    from state.ledger import open_ledger
    from tests.unit.test_retention_purge import _instance

    var = tmp_path / "var"
    storage = storage_for("postgresql", var).model_dump(mode="json")
    storage["retention"] = {"spool_after_delivery_days": 1}
    write_key_file(tmp_path / "data-keys.json", rotated(None))  # one key for every node (a cluster's rule)
    storage["encryption"]["key_file"] = str(tmp_path / "data-keys.json")
    raw = {"storage": storage, "cluster": {"cells": ["a", "b"]}}
    config = tmp_path / "cluster.yaml"
    config.write_text(yaml.safe_dump(raw))
    cell_a = cell_storage(parse_config(raw), "a")
    ledger = open_ledger(cell_a)
    old = ledger.db.run(lambda tx: _instance(tx, Path(cell_a.var_dir), "2.1", "delivered", time.time() - 2 * 86400))
    ledger.db.run(lambda tx: tx.execute("UPDATE instances SET cell = 'a' WHERE sop_instance_uid = '2.1'"))
    ledger.close()

    def dry_run(*cell: str) -> dict:
        shown = pacsai("purge", "--dry-run", "--json", *cell, "--config", str(config))
        assert shown.returncode == 0, shown.stderr
        return json.loads(shown.stdout)["counts"]

    assert dry_run("--cell", "a") == {"spool": 1}
    assert dry_run("--cell", "b") == {} and dry_run() == {}
    unknown = pacsai("purge", "--dry-run", "--cell", "c", "--config", str(config))
    assert unknown.returncode == 2 and "cluster.cells" in unknown.stderr and "'c'" in unknown.stderr
    assert old.exists()


def parse_storage(config: Path):
    from core.config import parse_config

    return parse_config(yaml.safe_load(config.read_text())).storage
