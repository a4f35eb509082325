"""Latency from the last instance to inference and to the SR in the PACS: PACS counts vs quiet timer.

One run, one pipeline, one Orthanc (which knows our listener, as a hospital PACS would). Each
study is first stored in Orthanc (not timed: the modality stores to the PACS), then sent to our
listener by dcmtk ``storescu`` (TCP_NODELAY=1) under one of two calling AE titles:

- ``EVIDENCE``: ``assembly.sources`` says ``pacs_counts``: complete when the PACS's C-FIND
  instance counts equal ours;
- ``QUIET``: ``quiet_period``: complete after ``--quiet`` seconds without an instance (the
  baseline every peer uses).

Studies of 1 instance (DX radiograph, 256x256) and of 100 and 400 instances (CT-like series of
64x64 slices, routed to the chest X-ray demo model for this benchmark only: its output is
meaningless, it is there to make the job run the whole pipeline). Studies run one at a time.

Measured per study, from the ledger's audit trail (wall clock, same machine):

- ``t0``: the last instance received (the listener's clock when its C-STORE handler began; its
  success response follows the fsync'd write and ledger commit);
- ``to_complete``: STUDY_COMPLETE; ``to_inference_start``: the inference stage sent the study
  to the model (INFERRED ``started_at``); ``to_sr_stored``: Orthanc answered success to the
  SR's C-STORE (SR_DELIVERED).

Between ``to_complete`` and ``to_inference_start`` lie validation (every instance read), routing
and the prior linker (priors on: a C-FIND at the PACS, which has no history here).

    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_latency.py [--reps 6,3,2] [--quiet 2.0]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from _common import emit  # benchmarks/ is on sys.path when run as a script
from state.ledger import Ledger, open_ledger
from actors.pipeline import Pipeline, wait_until
from core.config import AppConfig, parse_config
from demo.dcmtk import storescu
from demo.orthanc import OrthancProcess, free_port
from synthetic.synthetic_dicom import make_ct_series, make_cxr_study, save_study

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {"pacs_counts": "EVIDENCE", "quiet_period": "QUIET"}


def config(var: Path, port: int, orthanc: OrthancProcess, quiet: float) -> AppConfig:
    raw = yaml.safe_load((ROOT / "configs" / "test.yaml").read_text())
    raw["models"]["chest_xray"]["weights"] = str(ROOT / raw["models"]["chest_xray"]["weights"])
    raw["site_name"] = f"bench-latency-{int(time.time()) % 100000}"
    raw["storage"]["var_dir"] = str(var)
    raw["listener"]["port"] = port
    raw["pacs"].update(port=orthanc.dicom_port, ae_title=orthanc.aet)
    raw["assembly"] = {"quiet_period_s": quiet, "sources": {ae: {"completion": c} for c, ae in VARIANTS.items()}}
    raw["priors"] = {"enabled": True}
    raw["routing"]["rules"].append({"name": "bench-ct-load", "family": "chest_xray", "modalities": ["CT"]})
    return parse_config(raw)


def make_study(size: int, seed: int) -> list[Any]:
    if size == 1:
        return make_cxr_study(seed=seed, n_images=1, patient_id=f"LAT{seed}", accession=f"L{seed}")
    return make_ct_series(seed=seed, n_slices=size, rows=64, cols=64, patient_id=f"LAT{seed}",
                          accession=f"L{seed}")


def run_one(pipeline: Pipeline, orthanc: OrthancProcess, ledger: Ledger, files: list[Path],
            study_uid: str, calling_ae: str, timeout_s: float) -> dict[str, Any]:
    """Send one study (already in Orthanc) to our listener; return its latencies in ms."""
    res = storescu(files, "127.0.0.1", pipeline.listener_port(), "PACSAI", calling_ae)
    if res.returncode != 0:
        raise RuntimeError(f"storescu failed: {res.stderr[-300:]}")

    def delivered() -> bool:
        jobs = ledger.jobs.for_study(study_uid)
        return bool(jobs) and jobs[-1].state.value in ("delivered", "dead", "skipped", "quarantined")

    if not wait_until(delivered, timeout_s, 0.1):
        raise RuntimeError(f"study {study_uid} not delivered in {timeout_s} s: {ledger.status.report(time.time())}")
    [job] = ledger.jobs.for_study(study_uid)
    t0 = max(i.received_at for i in ledger.intake.job_instances(job.job_id))
    events = {e.type: e for e in ledger.audit.events(study_uid, limit=100000)}
    return {
        "rule": events["study_complete"].detail["rule"],
        "to_complete": 1000 * (events["study_complete"].at - t0),
        "to_inference_start": 1000 * (events["inferred"].detail["started_at"] - t0),
        "to_inferred": 1000 * (events["inferred"].at - t0),
        "to_written": 1000 * (events["sr_built"].at - t0),
        "to_sr_stored": 1000 * (events["sr_delivered"].at - t0),
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[int(q) - 1]


def summarise(size: int, variant: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"name": "latency", "instances": size, "completion": variant, "n": len(runs),
                           "rules": sorted({r["rule"] for r in runs})}
    for metric in ("to_complete", "to_inference_start", "to_inferred", "to_written", "to_sr_stored"):
        values = [r[metric] for r in runs]
        out[f"{metric}_p50_ms"] = round(percentile(values, 50), 1)
        out[f"{metric}_p95_ms"] = round(percentile(values, 95), 1)
    return out


def bench(pipeline: Pipeline, orthanc: OrthancProcess, work: Path, sizes: list[int], reps: list[int]) -> None:
    ledger = open_ledger(pipeline.cfg.storage, pipeline.layout)
    seed = 5000
    warm = make_study(1, seed)  # warm-up: first model call, first associations
    seed_files = save_study(warm, work / "warm")
    storescu(seed_files, "127.0.0.1", orthanc.dicom_port, orthanc.aet, "MODALITY")
    run_one(pipeline, orthanc, ledger, seed_files, str(warm[0].StudyInstanceUID), "EVIDENCE", 120)
    for size, n in zip(sizes, reps, strict=True):
        results: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
        for _ in range(n):
            for variant, ae in VARIANTS.items():  # alternate, so drift hits both alike
                seed += 1
                study = make_study(size, seed)
                files = save_study(study, work / f"s{seed}")
                storescu(files, "127.0.0.1", orthanc.dicom_port, orthanc.aet, "MODALITY")
                results[variant].append(run_one(pipeline, orthanc, ledger, files,
                                                str(study[0].StudyInstanceUID), ae, 300))
        for variant, runs in results.items():
            emit(summarise(size, variant, runs) | {"quiet_period_s": pipeline.cfg.assembly.quiet_period_s})
        ev, qt = (summarise(size, v, results[v]) for v in VARIANTS)
        emit({"name": "latency", "instances": size, "variant": "summary",
              "inference_start_p95_ms": {"pacs_counts": ev["to_inference_start_p95_ms"],
                                         "quiet_period": qt["to_inference_start_p95_ms"]},
              "sr_stored_p50_ms": {"pacs_counts": ev["to_sr_stored_p50_ms"],
                                   "quiet_period": qt["to_sr_stored_p50_ms"]},
              "goal": "inference start <= 500 ms p95 with PACS counts"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1,100,400")
    parser.add_argument("--reps", default="6,3,2", help="studies per size and variant")
    parser.add_argument("--quiet", type=float, default=2.0, help="quiet period of the baseline, s")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    reps = [int(r) for r in args.reps.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        work, port = Path(tmp), free_port()
        orthanc = OrthancProcess(work / "pacs", modalities={"pacsai": ("PACSAI", "127.0.0.1", port)}).start()
        pipeline = Pipeline(config(work / "var", port, orthanc, args.quiet))
        try:
            pipeline.start()
            bench(pipeline, orthanc, work, sizes, reps)
        finally:
            pipeline.stop()
            orthanc.stop()


if __name__ == "__main__":
    sys.exit(main())
