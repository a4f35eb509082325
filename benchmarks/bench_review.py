"""Readers' worklists and critical-finding pushes under load (issue 12).

A SQLite ledger under a temp var dir is filled with ``--studies`` studies' SR versions and their
alert items, written by the ledger's own write path (``state.ledger.results.apply_versions``, the
SR writer's, in batches: seeding is not what is measured). The mix is a department's: chest
radiographs, head CTs, fracture radiographs, brain MRIs and chest CTAs; most probabilities low, a
finding positive now and then, a few percent of studies with a critical finding (a bleed, a
pneumothorax, a dissection), order priorities stat / asap / routine / unknown, and an image-quality
flag on a few studies. The real FastAPI app (``api.app.create_app`` over
``api.deployment.build_context``, the policy ``configs/roles.example.yaml``) is served in this
process by uvicorn on a loopback port (plain http, as loopback allows).

- ``worklist``: ``--readers`` concurrent ``httpx.AsyncClient`` s (one connection each) ask
  ``GET /api/v1/clinical/worklist`` (first page) ``--requests`` times in all as the junior
  radiologist (``dr-junior``: probability >= 0.92 plus the priority rules), and in the same run as
  many times the unfiltered list (``?all=true``, an operator's token): two untimed requests per
  client first, then ``--rounds`` rounds in rotating order. p99 of each and their ratio (goal
  ratio <= 1.2: a reader's filter costs next to nothing).
- ``push``: an SSE client (``GET /api/v1/clinical/events`` as the ER attending, who is pushed
  critical findings) stays connected while ``--pushes`` SR versions with a critical finding are
  written through ``Jobs.transition`` (the SR writer's transaction, alert items included), one
  every ~``--push-gap-ms``; from the commit to the event's arrival at the client (goal p95 < 500 ms).

One JSON line per part. ``--quick``: a small run for the smoke test. It never asserts.

    .venv/bin/python benchmarks/bench_review.py [--studies 10000] [--readers 50] [--requests 2000]
        [--rounds 2] [--pushes 40] [--push-gap-ms 150] [--seed 12] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml
from _common import ROOT, emit, percentile  # benchmarks/ is on sys.path when run as a script; puts the root there

from core.config import AppConfig, parse_config
from core.identifiers import DEFAULT_KEY
from core.ledger import RecordSrVersions
from core.records import Finding, Prediction, QualityFlag
from core.results import SrVersion
from core.types import CodedTerm, JobState
from core.versions import VersionState
from demo.orthanc import free_port
from state.column_seal import sealer_of
from state.ledger import Ledger, open_ledger
from state.ledger._codec import INLINE_MAX, RecordCodec
from state.ledger.results import apply_versions

WORKLIST = "/api/v1/clinical/worklist"
EVENTS = "/api/v1/clinical/events"
POLICY = ROOT / "configs" / "roles.example.yaml"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.22"

# family: (share of studies, model, [(finding, threshold, critical, positive rate)])
_CHEST = ["atelectasis", "consolidation", "infiltration", "edema", "emphysema", "fibrosis", "effusion", "pneumonia"]
_CHEST += ["pleural_thickening", "cardiomegaly", "nodule", "mass", "hernia", "lung_lesion", "fracture", "lung_opacity"]
FAMILIES: dict[str, tuple[float, str, list[tuple[str, float, bool, float]]]] = {
    "chest_xray": (
        0.55,
        "cxr",
        [(k, 0.5, False, 0.07) for k in _CHEST]
        + [("enlarged_cardiomediastinum", 0.5, False, 0.04), ("pneumothorax", 0.5, True, 0.02)]
        + [("tension_pneumothorax", 0.5, True, 0.004)],
    ),
    "head_ct_haemorrhage": (
        0.15,
        "hct",
        [("any_haemorrhage", 0.5, True, 0.09)]
        + [(k, 0.4, False, 0.04) for k in ("epidural", "subdural", "subarachnoid", "intraparenchymal")]
        + [("intraventricular", 0.4, False, 0.02), ("traumatic", 0.4, False, 0.05)],
    ),
    "bone_fracture": (0.15, "frx", [("limb_fracture", 0.5, False, 0.2)]),
    "brain_mri_tumour": (0.07, "mri", [("brain_tumour", 0.5, False, 0.08)]),
    "chest_cta": (0.08, "cta", [("aortic_dissection", 0.5, True, 0.03)]),
}
PRIORITIES = (("stat", 0.05), ("asap", 0.15), ("routine", 0.55), (None, 0.25))
QUALITY_RATE = 0.03


def _pick(rng: random.Random, weighted: Any) -> Any:
    return rng.choices([k for k, _ in weighted], [w for _, w in weighted])[0]


def prediction(rng: random.Random, family: str, study: str) -> Prediction:
    """A model's result as the mix has it: low probabilities, a positive now and then."""
    _, model, findings = FAMILIES[family]
    out = []
    for key, threshold, critical, rate in findings:
        p = rng.uniform(threshold, 0.999) if rng.random() < rate else rng.betavariate(0.7, 8) * threshold
        out.append(Finding(key, CodedTerm(key, "99PACSAI", key), round(p, 4), threshold, critical))
    flags = (QualityFlag("motion_artefact", study + ".1", 0.8, 0.5),) if rng.random() < QUALITY_RATE else ()
    return Prediction(family, model, "1.0.0", tuple(out), (study + ".1.1",), quality_flags=flags)


def version(job_id: int, study: str, pred: Prediction, at: float) -> SrVersion:
    return SrVersion(
        f"{study}.9.{job_id}",
        SR_CLASS,
        study + ".9",
        study,
        job_id,
        1,
        pred.family,
        pred.model_name,
        pred.model_version,
        "",
        pred,
        at,
        VersionState.DELIVERED,
        False,
    )


def seed(ledger: Ledger, studies: int, rng: random.Random, now: float) -> dict[str, Any]:
    """``studies`` delivered jobs with one SR version each (alert items written with it)."""
    codec = RecordCodec(ledger.blobs, INLINE_MAX, sealer_of(ledger.db))
    shares = [(f, share) for f, (share, _, _) in FAMILIES.items()]
    plan = []
    for n in range(1, studies + 1):
        study = f"1.2.826.0.1.3680043.10.1234.{n}"
        at = now - rng.uniform(0, 30 * 86400)
        plan.append((n, study, at, prediction(rng, _pick(rng, shares), study), _pick(rng, PRIORITIES)))
    critical = sum(1 for *_, p, _ in plan if any(f.critical and f.present for f in p.findings))

    for start in range(0, len(plan), 500):
        batch = plan[start : start + 500]

        def write(tx: Any, batch: list[Any] = batch) -> None:
            tx.executemany(
                "INSERT INTO jobs (job_id, study_uid, version, state, not_before, created_at, updated_at,"
                " last_instance_at) VALUES (?,?,1,?,0,?,?,?)",
                [(n, study, JobState.DELIVERED.value, at - 60, at, at - 60) for n, study, at, _, _ in batch],
            )
            for n, study, at, pred, priority in batch:
                v = version(n, study, pred, at)
                apply_versions(tx, RecordSrVersions((v,)), [codec.dump_prediction(pred)], at, priority)

        ledger.db.run(write)
    return {"studies": studies, "critical_studies": critical}


def app_config(var: Path) -> AppConfig:
    """Plain http on loopback, the example roles, and the default config's model families (the
    policy is checked against their findings)."""
    models = yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())["models"]
    return parse_config(
        {
            "models": models,
            "storage": {"var_dir": str(var)},
            "api": {"host": "127.0.0.1", "port": free_port(), "allow_plaintext": True},
            "listener": {"min_free_bytes": 0},
            "logging": {"level": "WARNING"},
            "clinical": {"policy_file": str(POLICY)},
        }
    )


@contextmanager
def serve(cfg: AppConfig) -> Iterator[str]:
    """The real app, in this process, under uvicorn on loopback (its base URL)."""
    import uvicorn

    from api.app import create_app
    from api.deployment import build_context

    ctx = build_context(cfg, DEFAULT_KEY)
    assert cfg.api is not None
    config = uvicorn.Config(
        create_app(ctx), host="127.0.0.1", port=cfg.api.port, log_level="warning", access_log=False, lifespan="off"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{cfg.api.port}"
    finally:
        server.should_exit = server.force_exit = True
        thread.join(10)
        ctx.close()


def token(ledger: Ledger, name: str, *scopes: str) -> dict[str, str]:
    from api.auth import issue_token

    text, _ = issue_token(ledger.tokens, name, list(scopes), None, "bench", time.time())
    return {"Authorization": f"Bearer {text}"}


@dataclass
class Load:
    base: str
    readers: int
    requests: int
    rounds: int


async def _phase(load: Load, url: str, headers: dict[str, str], n: int) -> tuple[list[float], int]:
    """``n`` requests spread over ``load.readers`` clients; latencies (s) and error count."""
    latencies: list[float] = []
    errors = 0

    async def reader(client: httpx.AsyncClient, count: int) -> None:
        nonlocal errors
        for _ in range(2):  # untimed: connection, caches
            await client.get(url, headers=headers)
        for _ in range(count):
            t = time.perf_counter()
            r = await client.get(url, headers=headers)
            latencies.append(time.perf_counter() - t)
            errors += r.status_code != 200

    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    clients = [
        httpx.AsyncClient(base_url=load.base, limits=limits, timeout=60, trust_env=False) for _ in range(load.readers)
    ]
    share = [n // load.readers + (i < n % load.readers) for i in range(load.readers)]
    try:
        await asyncio.gather(*(reader(c, k) for c, k in zip(clients, share, strict=True)))
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))
    return latencies, errors


async def worklist(load: Load, junior: dict[str, str], operator: dict[str, str]) -> dict[str, Any]:
    """p99 of the junior radiologist's worklist and of the unfiltered list, same run."""
    async with httpx.AsyncClient(base_url=load.base, trust_env=False, timeout=60) as probe:
        mine = await probe.get(WORKLIST, headers=junior)
        everything = await probe.get(WORKLIST + "?all=true", headers=operator)
    for name, r in (("worklist", mine), ("unfiltered", everything)):
        if r.status_code != 200:
            return {"what": "worklist", "error": f"{name}: HTTP {r.status_code} {r.text[:300]}"}
    got: dict[str, list[float]] = {"junior": [], "all": []}
    errors = 0
    phases = [("junior", WORKLIST, junior), ("all", WORKLIST + "?all=true", operator)]
    per_round = max(1, load.requests // load.rounds)
    for k in range(load.rounds):
        for name, url, headers in phases if k % 2 == 0 else phases[::-1]:
            lat, bad = await _phase(load, url, headers, per_round)
            got[name] += lat
            errors += bad
    p99, base99 = percentile(got["junior"], 99) * 1000, percentile(got["all"], 99) * 1000
    return {
        "what": "worklist",
        "p99_ms": round(p99, 2),
        "unfiltered_p99_ms": round(base99, 2),
        "ratio": round(p99 / base99, 3),
        "goal": "ratio <= 1.2",
        "p50_ms": round(percentile(got["junior"], 50) * 1000, 2),
        "unfiltered_p50_ms": round(percentile(got["all"], 50) * 1000, 2),
        "requests": len(got["junior"]),
        "readers": load.readers,
        "errors": errors,
        "junior_total": mine.json().get("total"),
        "unfiltered_total": everything.json().get("total"),
        "page_items": [len(mine.json().get("items", [])), len(everything.json().get("items", []))],
    }


async def push(
    base: str, ledger: Ledger, headers: dict[str, str], pushes: int, gap_s: float, first_id: int
) -> dict[str, Any]:
    """Critical SR versions written through the SR writer's transaction while an SSE client listens."""
    codec_now = time.time()
    rng = random.Random(7)
    ids = list(range(first_id, first_id + pushes))
    ledger.db.run(
        lambda tx: tx.executemany(
            "INSERT INTO jobs (job_id, study_uid, version, state, not_before, created_at, updated_at,"
            " last_instance_at) VALUES (?,?,1,?,0,?,?,?)",
            [
                (n, f"1.2.826.0.1.3680043.10.99.{n}", JobState.INFERRED.value, codec_now, codec_now, codec_now)
                for n in ids
            ],
        )
    )
    jobs = {j.job_id: j for j in ledger.jobs.lease(JobState.INFERRED, "bench-writer", pushes, 3600, time.time())}
    written: dict[str, float] = {}
    received: dict[str, float] = {}
    connected = asyncio.Event()

    async def listen(client: httpx.AsyncClient) -> None:
        async with client.stream("GET", EVENTS, headers=headers) as r:
            if r.status_code != 200:
                raise RuntimeError(f"events: HTTP {r.status_code} {(await r.aread())[:300]!r}")
            async for line in r.aiter_lines():
                if line.startswith(": connected"):
                    connected.set()
                elif line.startswith("data:"):
                    received.setdefault(json.loads(line[5:])["sr_uid"], time.perf_counter())
                    if len(received) >= pushes:
                        return

    def write(job_id: int) -> None:
        job = jobs[job_id]
        study = job.study_instance_uid
        finding = Finding("aortic_dissection", CodedTerm("ad", "99PACSAI", "ad"), 0.97, 0.5, True)
        pred = Prediction("chest_cta", "cta", "1.0.0", (finding,), (study + ".1.1",))
        v = version(job_id, study, pred, time.time())
        ledger.jobs.transition(job, JobState.WRITTEN, time.time(), effects=[RecordSrVersions((v,))])
        written[v.sop_instance_uid] = time.perf_counter()

    async with httpx.AsyncClient(base_url=base, trust_env=False, timeout=httpx.Timeout(60, read=None)) as client:
        task = asyncio.create_task(listen(client))
        await asyncio.wait_for(connected.wait(), 30)
        for job_id in ids:
            await asyncio.to_thread(write, job_id)
            await asyncio.sleep(gap_s * rng.uniform(0.5, 1.5))  # out of step with the hub's polling
        try:
            await asyncio.wait_for(task, 10)
        except TimeoutError:
            task.cancel()
    lat = [(received[s] - t) * 1000 for s, t in written.items() if s in received]
    if not lat:
        return {"what": "push", "error": f"no event of {pushes} critical SR versions arrived"}
    return {
        "what": "push",
        "p95_ms": round(percentile(lat, 95), 2),
        "goal": "p95 < 500 ms",
        "p50_ms": round(statistics.median(lat), 2),
        "max_ms": round(max(lat), 2),
        "pushes": pushes,
        "received": len(lat),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--studies", type=int, default=10_000)
    p.add_argument("--readers", type=int, default=50)
    p.add_argument("--requests", type=int, default=2000, help="per list, over all rounds")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--pushes", type=int, default=40)
    p.add_argument("--push-gap-ms", type=float, default=150.0)
    p.add_argument("--seed", type=int, default=12)
    p.add_argument("--quick", action="store_true", help="a small run (the smoke test)")
    args = p.parse_args()
    if args.quick:
        args.studies, args.readers, args.requests, args.rounds, args.pushes = 200, 5, 40, 2, 4
        args.push_gap_ms = 40.0
    tmp = Path(tempfile.mkdtemp(prefix="bench-review-"))
    try:
        cfg = app_config(tmp / "var")
        ledger = open_ledger(cfg.storage)
        t = time.perf_counter()
        seeded = seed(ledger, args.studies, random.Random(args.seed), time.time())
        seeded["seed_s"] = round(time.perf_counter() - t, 2)
        junior = token(ledger, "dr-junior", "read")
        operator = token(ledger, "dr-chief", "read", "operate")
        er = token(ledger, "dr-er", "read")
        with serve(cfg) as base:
            load = Load(base, args.readers, args.requests, args.rounds)
            emit({**asyncio.run(worklist(load, junior, operator)), **seeded})
            emit(asyncio.run(push(base, ledger, er, args.pushes, args.push_gap_ms / 1000, args.studies + 1)))
        ledger.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
