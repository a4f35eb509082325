"""The REST API under load (issue 11): STOW-RS vs C-STORE ingest, and ``GET /api/v1/jobs`` vs a bare endpoint.

The service is the real deployment on a local Ray (``num_cpus=2``): ``actors.pipeline.start_serve``
starts Serve's HTTPS proxy (a throwaway CA from ``tests/pki.py``; ``--plaintext`` for http on
loopback) and the ``api`` application (``api.deployment.build_api_app``) writes into one var dir
(spool + SQLite ledger). Clients hold a token with ``ingest`` and ``read``. Nothing else of the
pipeline runs, so what is timed is the door, not the stages behind it.

- ``stow``: ``--instances`` CT instances of 512x512 in studies of ``--study-size``, sent by
  httpx over one keep-alive connection, one request after the other, as STOW-RS
  (``POST /dicomweb/studies``): once one request per study, once (other UIDs) one request per
  instance. The baseline in the same run: the C-STORE listener (``actors.adapters.dimse.Listener``,
  in this process, its own var dir) receiving the first set from dcmtk ``storescu``
  (TCP_NODELAY=1) over one association, as in ``bench_ingest.py``. Every receiver gets an untimed
  two-instance study first. ``--stow-rounds`` rounds, fresh UIDs each, the order reversed every
  other round; medians and each round's ratio (fsync on a shared disk makes single rounds
  noisy). Extra fields (round 0): the same two STOW variants through the FastAPI app in this
  process (``httpx.ASGITransport``, no network, no TLS, no Serve), its own var dir.
- ``jobs``: ``--jobs`` jobs inserted straight into the ledger's ``jobs`` table (one
  ``executemany``: seeding is not what is measured), then ``--clients`` concurrent
  ``httpx.AsyncClient`` s, one connection each, ``--requests`` ``GET /api/v1/jobs`` in all (the
  default page: the newest 100), after two untimed requests per client. The baseline: a bare
  FastAPI app in a uvicorn subprocess (same certificate, a sync route returning the JSON body
  captured once from the real endpoint; no auth, no ledger, no audit), and as extra fields the
  same bare route deployed as a second Serve application behind the same proxy (``/bare``): what
  Serve costs with none of our app. ``--rounds`` rounds, the order rotating; latencies of all
  rounds pooled.

One JSON line per part (``what`` = ``stow`` / ``jobs``), and per timed Serve phase a
``where_time_goes`` line: CPU seconds of this process's descendants by kind (Serve's proxy, the
API replica, Ray's core, the bare server) and of this process (the client), from ``/proc``.
``--profile`` adds ``profile`` lines (py-spy cannot attach here): cProfile of the app in this
process (the event loop thread and every thread it starts) and then inside a fresh API replica
behind the proxy (the same class with ``start_profile``/``stop_profile``, user code on Serve's
own loop so one profiler sees both), for one STOW-RS study and ``--profile-requests`` job lists:
own seconds by package, the top frames by own time, and our code by cumulative time (waits on
locks, queues and epoll left out; a ``with lock:`` wait still counts as its function's own time).
Goals (in the lines): STOW per study >= C-STORE (ratio 1.0); jobs p99 <= 1.5x bare.
It never asserts.

    .venv/bin/python benchmarks/bench_rest.py [--instances 500] [--stow-rounds 3] [--parts stow,jobs] [--quick]
        [--jobs 10000] [--requests 2000] [--clients 50] [--rounds 3] [--plaintext] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import logging
import os
import pstats
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from _common import ROOT, emit  # benchmarks/ is on sys.path when run as a script; puts the root there

from benchmarks.harness.baselines import standalone_listener
from benchmarks.harness.load import multipart, send_storescu
from benchmarks.harness.record import percentile
from core.config import AppConfig, StorageConfig, parse_config
from core.identifiers import DEFAULT_KEY
from core.types import JobState
from demo.orthanc import free_port
from state.ledger import Ledger, open_ledger
from synthetic.synthetic_dicom import make_ct_series, save_study

CLK_TCK = os.sysconf("SC_CLK_TCK")
REFERENCED_SOP = "00081199"
JOBS_PATH = "/api/v1/jobs"
BARE_SERVER = """
import json, sys
import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse
body, port, cert, key = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
data = json.loads(open(body, encoding="utf-8").read())
app = FastAPI()
@app.get("/api/v1/jobs")
def jobs() -> JSONResponse:
    return JSONResponse(data)
tls = {"ssl_certfile": cert, "ssl_keyfile": key} if cert else {}
uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, **tls)
"""
"""The baseline of ``jobs``: a sync route (a worker thread, as ``list_jobs``) returning the body."""


# ---------------------------------------------------------------- the service
@dataclass
class Service:
    """The API behind Serve's proxy: its config, base URL, client trust and a token."""

    cfg: AppConfig
    ledger: Ledger
    base: str
    verify: str | bool
    headers: dict[str, str]
    tmp: Path


def api_config(var: Path, tmp: Path, plaintext: bool) -> tuple[AppConfig, str | bool]:
    """The config of the service (and what clients trust): TLS with a throwaway CA, or plain http."""
    api: dict[str, Any] = {"host": "127.0.0.1", "port": free_port()}
    verify: str | bool = False
    if plaintext:
        api["allow_plaintext"] = True
    else:
        from tests.pki import make_pki

        pki = make_pki(tmp / "pki")
        api["tls"] = {"certificate": str(pki.server_cert), "private_key": str(pki.server_key)}
        verify = str(pki.ca)
    raw = {
        "storage": {"var_dir": str(var)},
        "api": api,
        "listener": {"min_free_bytes": 0},
        "logging": {"level": "WARNING"},
    }
    return parse_config(raw), verify


def token_headers(ledger: Ledger) -> dict[str, str]:
    """A bearer header of a fresh token with ``ingest`` and ``read``."""
    from api.auth import issue_token

    text, _ = issue_token(ledger.tokens, "bench", ["ingest", "read"], None, "bench", time.time())
    return {"Authorization": f"Bearer {text}"}


@contextlib.contextmanager
def serve_api(tmp: Path, plaintext: bool) -> Iterator[Service]:
    """Local Ray, Serve's proxy and the ``api`` application, as the composition root deploys them."""
    import ray
    from ray import serve

    from actors.pipeline import start_serve
    from api.deployment import API_APP, build_api_app

    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # set to INFO when ray.serve is imported
    cfg, verify = api_config(tmp / "var", tmp, plaintext)
    ledger = open_ledger(cfg.storage)  # migrates, as the composition root does before deploying
    # Ray starts its workers at nice 15; the client, the listener and the bare server run at 0 and
    # would preempt Serve's proxy and replica whenever the two cores are busy.
    os.environ.setdefault("RAY_worker_niceness", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    try:
        start_serve(cfg)
        serve.run(build_api_app(cfg, cfg.storage, DEFAULT_KEY, {}), name=API_APP, route_prefix="/")
        assert cfg.api is not None
        scheme = "http" if cfg.api.tls is None else "https"
        yield Service(cfg, ledger, f"{scheme}://127.0.0.1:{cfg.api.port}", verify, token_headers(ledger), tmp)
    finally:
        ray.shutdown()  # takes Serve with it; serve.shutdown() first prints raylet noise on stdout
        ledger.close()


# ---------------------------------------------------------------- where the CPU goes
def cpu_by_kind(bare_pid: int | None = None) -> dict[str, float]:
    """CPU seconds so far of this process's descendants by kind, and of this process."""
    parents: dict[int, int] = {}
    stats: dict[int, list[str]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            text = Path(entry.path, "stat").read_text()
            fields = text[text.rindex(")") + 2 :].split()
            parents[int(entry.name)], stats[int(entry.name)] = int(fields[1]), fields
    ours, frontier = set(), {os.getpid()}
    while frontier:
        ours |= frontier
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier and pid not in ours}
    out: dict[str, float] = {}
    for pid in ours - {os.getpid()}:
        kind = "bare_server" if pid == bare_pid else _kind(pid)
        out[kind] = out.get(kind, 0.0) + (int(stats[pid][11]) + int(stats[pid][12])) / CLK_TCK
    own = os.times()
    out["bench_process"] = own.user + own.system
    return out


def _kind(pid: int) -> str:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "gone"
    if comm in ("raylet", "gcs_server"):
        return "ray_core"
    if cmd.startswith("ray::"):
        title = cmd[len("ray::") :]
        if title.startswith("ProxyActor"):
            return "serve_proxy"
        if title.startswith("ServeReplica:api"):
            return "api_replica"
        if title.startswith("ServeReplica:bare"):
            return "bare_serve_replica"
        return "ray_idle_worker" if title.startswith("IDLE") else "ray_other"
    return "ray_other" if "ray" in cmd else "other"


def where_time_goes(phase: str, before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, Any]:
    """The CPU seconds one phase cost, by kind of process."""
    spent = {k: round(after.get(k, 0.0) - before.get(k, 0.0), 2) for k in after}
    return {
        "what": "where_time_goes",
        "phase": phase,
        "seconds": round(seconds, 2),
        "cpu_capacity_s": round(seconds * (os.cpu_count() or 1), 2),
        "cpu_s": dict(sorted(((k, v) for k, v in spent.items() if v), key=lambda kv: -kv[1])),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


# ---------------------------------------------------------------- stow
def ct_studies(root: Path, first_seed: int, instances: int, study_size: int) -> list[list[Path]]:
    """``instances`` CT slices of 512x512 as studies of ``study_size``, files on disk."""
    out = []
    for k, start in enumerate(range(0, instances, study_size)):
        seed = first_seed + k
        datasets = make_ct_series(
            seed=seed, n_slices=min(study_size, instances - start), patient_id=f"BR{seed}", accession=f"BR{seed}"
        )
        out.append(save_study(datasets, root / f"s{seed}"))
    return out


def stow_bodies(studies: list[list[Path]], per_instance: bool) -> list[tuple[bytes, str, int]]:
    """Request bodies, Content-Types and part counts: one per study, or one per instance."""
    groups = [[f] for s in studies for f in s] if per_instance else studies
    return [(*multipart([f.read_bytes() for f in g]), len(g)) for g in groups]


def _check(response: httpx.Response, parts: int) -> None:
    if response.status_code != 200 or len(response.json().get(REFERENCED_SOP, {}).get("Value", [])) != parts:
        raise RuntimeError(f"STOW-RS answered {response.status_code}: {response.text[:300]}")


def stow_serve(svc: Service, bodies: list[tuple[bytes, str, int]]) -> float:
    """Seconds to send ``bodies`` one after the other over one keep-alive connection."""
    with httpx.Client(verify=svc.verify, timeout=300, trust_env=False) as http:
        started = time.perf_counter()
        for body, ctype, parts in bodies:
            _check(
                http.post(f"{svc.base}/dicomweb/studies", content=body, headers={**svc.headers, "Content-Type": ctype}),
                parts,
            )
        return time.perf_counter() - started


async def _stow_asgi(app: Any, headers: dict[str, str], bodies: list[tuple[bytes, str, int]]) -> float:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1", timeout=300) as http:
        started = time.perf_counter()
        for body, ctype, parts in bodies:
            _check(
                await http.post("/dicomweb/studies", content=body, headers={**headers, "Content-Type": ctype}), parts
            )
        return time.perf_counter() - started


@contextlib.contextmanager
def asgi_app(cfg: AppConfig, var: Path | None = None) -> Iterator[tuple[Any, dict[str, str]]]:
    """The FastAPI app in this process over ``var`` (default: the service's own var dir)."""
    from api.app import create_app
    from api.deployment import build_context

    if var is not None:
        cfg = cfg.model_copy(update={"storage": StorageConfig(var_dir=str(var))})
    open_ledger(cfg.storage).close()  # migrations
    ctx = build_context(cfg, DEFAULT_KEY)
    try:
        yield create_app(ctx), token_headers(ctx.ledger)
    finally:
        ctx.close()


def cstore(files: list[Path], warm: list[Path], var: Path) -> float:
    """Seconds for storescu to send ``files`` into a fresh listener (after ``warm``, untimed)."""
    with standalone_listener(var) as listener:
        send_storescu(warm, listener.port)
        return send_storescu(files, listener.port)


def timed(phase: str, run: Any, reports: list[dict[str, Any]], bare_pid: int | None = None) -> float:
    """Run ``run()`` (it returns its own seconds) and keep a ``where_time_goes`` report."""
    before, started = cpu_by_kind(bare_pid), time.perf_counter()
    seconds = float(run())
    reports.append(where_time_goes(phase, before, cpu_by_kind(bare_pid), time.perf_counter() - started))
    return seconds


def stow_round(
    svc: Service, args: argparse.Namespace, rnd: int, warm: list[list[Path]], reports: list[dict[str, Any]]
) -> tuple[dict[str, float], dict[str, Any]]:
    """One round: C-STORE and both STOW variants on fresh UIDs, the order reversed every other
    round (instances/s by variant); round 0 also gives the in-process app's extra fields."""
    src = svc.tmp / "src" / f"r{rnd}"
    first = ct_studies(src / "a", 100 + 1000 * rnd, args.instances, args.study_size)
    second = ct_studies(src / "b", 500 + 1000 * rnd, args.instances, args.study_size)
    by_study, by_instance = stow_bodies(first, False), stow_bodies(second, True)
    n = sum(len(s) for s in first)
    runs = {
        "cstore": lambda: cstore([f for s in first for f in s], warm[1], svc.tmp / f"cs{rnd}"),
        "study": lambda: stow_serve(svc, by_study),
        "instance": lambda: stow_serve(svc, by_instance),
    }
    order = list(runs) if rnd % 2 == 0 else list(runs)[::-1]
    rates = {name: n / timed(f"stow_{name}_round{rnd}", runs[name], reports) for name in order}
    extra = asgi_stow_rates(svc, warm[2] + warm[3], by_study, by_instance, n) if rnd == 0 and not args.no_asgi else {}
    shutil.rmtree(src)
    return rates, extra


def stow_part(svc: Service, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The ``stow`` line (and its CPU reports): STOW-RS per study and per instance vs C-STORE,
    medians of ``--stow-rounds`` rounds."""
    warm = [ct_studies(svc.tmp / "src" / f"w{k}", 900 + k, 2, 2)[0] for k in range(4)]
    stow_serve(svc, stow_bodies([warm[0]], False))
    reports: list[dict[str, Any]] = []
    rounds, extra = [], {}
    for rnd in range(args.stow_rounds):
        rates, got = stow_round(svc, args, rnd, warm, reports)
        rounds.append(rates)
        extra |= got
    med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    line: dict[str, Any] = {
        "what": "stow",
        "n": args.instances,
        "study_size": args.study_size,
        "per_s": round(med["study"], 1),
        "per_instance_request_per_s": round(med["instance"], 1),
        "cstore_per_s": round(med["cstore"], 1),
        "ratio": round(med["study"] / med["cstore"], 3),
        "per_instance_ratio": round(med["instance"] / med["cstore"], 3),
        "goal": 1.0,
        "rounds": len(rounds),
        "ratio_by_round": [round(r["study"] / r["cstore"], 3) for r in rounds],
        "per_s_by_round": {k: [round(r[k], 1) for r in rounds] for k in ("study", "instance", "cstore")},
        "transport": _transport(svc),
        "instances_in_ledger": _count(svc.ledger, "instances"),
        **extra,
    }
    return [line, *reports]


def asgi_stow_rates(
    svc: Service,
    warm: list[Path],
    by_study: list[tuple[bytes, str, int]],
    by_instance: list[tuple[bytes, str, int]],
    n: int,
) -> dict[str, Any]:
    """The same STOW variants through the app in this process (no network, no TLS, no Serve)."""
    with asgi_app(svc.cfg, svc.tmp / "asgi-study") as (app, headers):
        asyncio.run(_stow_asgi(app, headers, stow_bodies([warm[:2]], False)))
        study = asyncio.run(_stow_asgi(app, headers, by_study))
    with asgi_app(svc.cfg, svc.tmp / "asgi-instance") as (app, headers):
        asyncio.run(_stow_asgi(app, headers, stow_bodies([warm[2:]], False)))
        instance = asyncio.run(_stow_asgi(app, headers, by_instance))
    return {"asgi_per_s": round(n / study, 1), "asgi_per_instance_request_per_s": round(n / instance, 1)}


def _transport(svc: Service) -> str:
    tls = "TLS, throwaway CA (tests/pki.py make_pki)" if svc.cfg.api and svc.cfg.api.tls else "plaintext on loopback"
    return f"Ray Serve HTTP proxy, {tls}; httpx, one connection, requests in sequence"


def _count(ledger: Ledger, table: str) -> int:
    with ledger.db.read() as tx:
        row = tx.one(f"SELECT COUNT(*) AS n FROM {table}")
    return int(row["n"]) if row else 0


# ---------------------------------------------------------------- jobs
def seed_jobs(ledger: Ledger, n: int) -> None:
    """``n`` jobs in a day's mix of states, by a bulk ``INSERT`` into the jobs table (not the
    intake path: seeding is not what is measured)."""
    mix = [JobState.DELIVERED] * 7 + [JobState.SKIPPED, JobState.QUARANTINED, JobState.DEAD]
    now = time.time()
    rows = []
    for k in range(n):
        state = mix[k % len(mix)]
        at = now - (n - k) * 8.0
        reason = "inference: model unavailable after 5 attempts" if state is JobState.DEAD else ""
        dead_from = JobState.INFERRED.value if state is JobState.DEAD else ""
        rows.append((f"1.2.826.0.1.3680043.10.1137.{k}", 1, state.value, at, at, at + 60, at, reason, dead_from))
    ledger.db.run(
        lambda tx: tx.executemany(
            "INSERT INTO jobs (study_uid, version, state, not_before, created_at, updated_at,"
            " last_instance_at, reason, dead_from) VALUES (?,?,?,?,?,?,?,?,?)",
            rows,
        )
    )


def ensure_jobs(ledger: Ledger, n: int) -> None:
    """At least ``n`` jobs in the ledger (``seed_jobs`` the rest)."""
    missing = n - _count(ledger, "jobs")
    if missing > 0:
        seed_jobs(ledger, missing)


async def _client(
    url: str, headers: dict[str, str], verify: str | bool, count: int, start: asyncio.Barrier
) -> list[float]:
    async with httpx.AsyncClient(verify=verify, timeout=120, trust_env=False) as http:
        for _ in range(2):
            (await http.get(url, headers=headers)).raise_for_status()
        await start.wait()
        out = []
        for _ in range(count):
            began = time.perf_counter()
            response = await http.get(url, headers=headers)
            out.append(time.perf_counter() - began)
            if response.status_code != 200:
                raise RuntimeError(f"GET {url} answered {response.status_code}: {response.text[:300]}")
        return out


async def _load(
    url: str, headers: dict[str, str], verify: str | bool, requests: int, clients: int
) -> tuple[list[float], float]:
    start = asyncio.Barrier(clients + 1)
    tasks = [asyncio.create_task(_client(url, headers, verify, requests // clients, start)) for _ in range(clients)]
    await start.wait()
    began = time.perf_counter()
    results = await asyncio.gather(*tasks)
    return [s for r in results for s in r], time.perf_counter() - began


def load(
    url: str, headers: dict[str, str], verify: str | bool, requests: int, clients: int
) -> tuple[list[float], float]:
    """Latencies (s) of ``requests`` GETs by ``clients`` concurrent clients, and the wall seconds."""
    return asyncio.run(_load(url, headers, verify, requests, clients))


@contextlib.contextmanager
def bare_server(svc: Service, body: bytes) -> Iterator[tuple[str, int]]:
    """The baseline: uvicorn in a subprocess, same certificate, the captured body (its URL, pid)."""
    path = svc.tmp / "jobs.json"
    path.write_bytes(body)
    port = free_port()
    tls = svc.cfg.api.tls if svc.cfg.api is not None else None
    cert, key = (tls.certificate, tls.private_key) if tls is not None else ("", "")
    proc = subprocess.Popen([sys.executable, "-c", BARE_SERVER, str(path), str(port), cert, key])
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}{JOBS_PATH}"
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url, verify=svc.verify, trust_env=False).status_code == 200:
                    break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the bare server did not start")
            time.sleep(0.2)
        yield url, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _ms(values: list[float], q: float) -> float:
    return round(1000 * percentile(values, 100 * q, "nearest"), 2)


def serve_bare(svc: Service, data: Any) -> str:
    """The bare endpoint as a second Serve application behind the same proxy (route ``/bare``):
    what Serve costs with none of our app. Returns its URL."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse
    from ray import serve

    assert svc.cfg.api is not None
    app = FastAPI()

    @app.get(JOBS_PATH)
    def jobs() -> JSONResponse:
        return JSONResponse(data)

    @serve.deployment(name="bare", max_ongoing_requests=svc.cfg.api.max_ongoing_requests)
    @serve.ingress(app)
    class Bare:
        """No state: the route above is all."""

    serve.run(
        Bare.options(ray_actor_options={"num_cpus": svc.cfg.api.num_cpus}).bind(), name="bare", route_prefix="/bare"
    )
    return f"{svc.base}/bare{JOBS_PATH}"


def jobs_rounds(svc: Service, args: argparse.Namespace, body: bytes) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Latencies and wall seconds of each target, the order rotating from round to round."""
    got: dict[str, Any] = {}
    reports: list[dict[str, Any]] = []
    with bare_server(svc, body) as (bare_url, pid):
        targets = {
            "serve": (f"{svc.base}{JOBS_PATH}", svc.headers),
            "bare": (bare_url, {}),
            "serve_bare": (serve_bare(svc, json.loads(body)), {}),
        }
        names = list(targets)
        per_round = -(-args.requests // (args.rounds * args.clients)) * args.clients  # whole requests per client
        for rnd in range(args.rounds):
            for name in names[rnd % 3 :] + names[: rnd % 3]:

                def run(name: str = name) -> float:
                    latencies, seconds = load(*targets[name], svc.verify, per_round, args.clients)
                    got.setdefault(name, []).extend(latencies)
                    return seconds

                got[f"{name}_s"] = got.get(f"{name}_s", 0.0) + timed(f"jobs_{name}_round{rnd}", run, reports, pid)
    return got, reports


def jobs_part(svc: Service, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The ``jobs`` line (and its CPU reports): concurrent clients on the Serve API vs a bare endpoint."""
    ensure_jobs(svc.ledger, args.jobs)
    url = f"{svc.base}{JOBS_PATH}"
    body = httpx.get(url, headers=svc.headers, verify=svc.verify, trust_env=False).raise_for_status().content
    got, reports = jobs_rounds(svc, args, body)
    serve, bare = got["serve"], got["bare"]
    line = {
        "what": "jobs",
        "p50_ms": _ms(serve, 0.5),
        "p99_ms": _ms(serve, 0.99),
        "bare_p50_ms": _ms(bare, 0.5),
        "bare_p99_ms": _ms(bare, 0.99),
        "ratio": round(_ms(serve, 0.99) / _ms(bare, 0.99), 3),
        "goal": 1.5,
        "requests": len(serve),
        "clients": args.clients,
        "rounds": args.rounds,
        "jobs_in_ledger": _count(svc.ledger, "jobs"),
        "body_bytes": len(body),
        "per_s": round(len(serve) / got["serve_s"], 1),
        "bare_per_s": round(len(bare) / got["bare_s"], 1),
        "serve_bare_p50_ms": _ms(got["serve_bare"], 0.5),
        "serve_bare_p99_ms": _ms(got["serve_bare"], 0.99),
        "serve_bare_per_s": round(len(got["serve_bare"]) / got["serve_bare_s"], 1),
        "transport": _transport(svc).split(";")[0] + f"; {args.clients} httpx.AsyncClient, one connection each",
        "bare": "uvicorn subprocess, same certificate, FastAPI sync route returning JSONResponse(captured body)",
        "serve_bare": "the same bare route as a Serve application behind the same proxy (/bare)",
    }
    if not args.no_asgi:
        line["asgi_p50_ms"] = asgi_jobs_p50(svc, 200)
    return [line, *reports]


def asgi_jobs_p50(svc: Service, n: int) -> float:
    """p50 of ``n`` sequential job-list requests through the app in this process (its own cost)."""

    async def run(app: Any, headers: dict[str, str]) -> list[float]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as http:
            out = []
            for _ in range(n):
                began = time.perf_counter()
                (await http.get(JOBS_PATH, headers=headers)).raise_for_status()
                out.append(time.perf_counter() - began)
            return out

    with asgi_app(svc.cfg) as (app, headers):
        return _ms(asyncio.run(run(app, headers))[n // 10 :], 0.5)


# ---------------------------------------------------------------- profile
IDLE = re.compile(
    r"'(poll|acquire|get|wait|select)' of '(select\.epoll|_thread\.lock|_thread\.RLock|_queue\.SimpleQueue)'"
)
"""Builtins where a thread waits (for work, a lock, the network): idle time, not cost."""


class ThreadProfiles:
    """cProfile in the calling thread and in every thread started while it runs."""

    def __init__(self) -> None:
        self.profiles = [cProfile.Profile()]

    def _hook(self, *_: Any) -> None:
        profile = cProfile.Profile()
        self.profiles.append(profile)
        profile.enable()  # replaces this hook for the rest of the thread's life

    def start(self) -> None:
        threading.setprofile(self._hook)
        self.profiles[0].enable()

    def stop(self) -> pstats.Stats:
        self.profiles[0].disable()
        threading.setprofile(None)  # type: ignore[arg-type]
        stats = pstats.Stats(self.profiles[0])
        for profile in self.profiles[1:]:
            stats.add(profile)
        return stats


def _label(path: str, line: int, name: str) -> str:
    if path.startswith(str(ROOT)) and "/.venv/" not in path:
        path = str(Path(path).relative_to(ROOT))
    elif "site-packages/" in path:
        path = path.split("site-packages/", 1)[1]
    return f"{path}:{line}({name})" if path != "~" else name


def _by_package(rows: list[Any]) -> dict[str, float]:
    """Own seconds by top-level package (``builtins``: C functions, whoever called them)."""
    stdlib = f"/lib/python{sys.version_info.major}.{sys.version_info.minor}/"
    out: dict[str, float] = {}
    for (path, _, _), v in rows:
        if path == "~":
            top = "builtins"
        elif path.startswith("<frozen"):
            top = "stdlib:" + path[len("<frozen ") :].split(".")[0].rstrip(">")
        elif "site-packages/" not in path and stdlib in path:
            top = "stdlib:" + path.split(stdlib, 1)[1].split("/")[0].removesuffix(".py")
        else:
            top = _label(path, 0, "").split("/")[0].removesuffix(".py")
        out[top] = out.get(top, 0.0) + v[2]
    return {k: round(v, 3) for k, v in sorted(out.items(), key=lambda kv: -kv[1])[:15]}


def summarise(what: str, stats: pstats.Stats, top: int, **extra: Any) -> dict[str, Any]:
    """A ``profile`` line: the busiest frames by own time, and our own code by cumulative time."""
    rows = list(stats.stats.items())  # type: ignore[attr-defined]
    idle = [kv for kv in rows if kv[0][0] == "~" and IDLE.search(kv[0][2])]
    busy = [kv for kv in rows if kv not in idle]
    ours = [kv for kv in busy if _label(*kv[0]).split("/")[0] in ("api", "state", "core", "actors")]

    def frames(chosen: list[Any], by: int) -> list[list[Any]]:
        best = sorted(chosen, key=lambda kv: -kv[1][by])[:top]
        return [[_label(*k), round(v[2], 3), round(v[3], 3), v[1]] for k, v in best]

    return {
        "what": "profile",
        "path": what,
        "busy_s": round(sum(v[2] for _, v in busy), 3),
        "idle_wait_s": round(sum(v[2] for _, v in idle), 3),
        "own_s_by_package": _by_package(busy),
        "top_own_s": frames(busy, 2),
        "top_cum_ours": frames(ours, 3)[: max(5, top // 2)],
        "columns": ["frame", "own_s", "cum_s", "calls"],
        **extra,
    }


def asgi_profiles(svc: Service, args: argparse.Namespace, bodies: list[tuple[bytes, str, int]]) -> list[dict[str, Any]]:
    """cProfile of the app in this process (client included): one STOW-RS study, job lists."""

    async def jobs(app: Any, headers: dict[str, str]) -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as http:
            for _ in range(args.profile_requests):
                (await http.get(JOBS_PATH, headers=headers)).raise_for_status()

    out = []
    for what, var, work in (
        ("stow_study_asgi", svc.tmp / "asgi-profile", lambda app, h: _stow_asgi(app, h, bodies)),
        ("jobs_asgi", None, jobs),
    ):
        with asgi_app(svc.cfg, var) as (app, headers):
            profiles = ThreadProfiles()
            profiles.start()
            asyncio.run(work(app, headers))
            out.append(summarise(what, profiles.stop(), args.top, where="this process, httpx.ASGITransport"))
    return out


REPLICA_NOTE = (
    "a fresh API replica behind the proxy, RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD=0 (one loop: "
    "Serve's side and the app's); the proxy is not profiled"
)


def _profiled_api() -> Any:
    """``ApiDeployment`` with ``start_profile``/``stop_profile`` (a ``tag`` forces a fresh replica)."""
    from ray import serve

    from api.deployment import API_APP, ApiDeployment

    class ProfiledApi(ApiDeployment.func_or_class):  # type: ignore[misc,name-defined]
        async def __init__(self, *args: Any, tag: str = "", **kwargs: Any) -> None:
            await super().__init__(*args, **kwargs)
            self._profiles = ThreadProfiles()

        async def start_profile(self) -> None:
            self._profiles.start()

        async def stop_profile(self, path: str) -> None:
            self._profiles.stop().dump_stats(path)

    return serve.deployment(name=API_APP)(ProfiledApi)


def replica_profiles(
    svc: Service, args: argparse.Namespace, bodies: list[tuple[bytes, str, int]]
) -> list[dict[str, Any]]:
    """cProfile inside the API replica behind Serve's proxy, a fresh replica per workload."""
    from ray import serve

    from api.deployment import API_APP

    assert svc.cfg.api is not None
    url = f"{svc.base}{JOBS_PATH}"
    env = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"}  # one loop: Serve's side and the app's
    actor = {"num_cpus": svc.cfg.api.num_cpus, "runtime_env": {"env_vars": env}}
    options = {"num_replicas": 1, "max_ongoing_requests": svc.cfg.api.max_ongoing_requests, "ray_actor_options": actor}
    out = []
    for what, work in (
        ("jobs_serve_replica", lambda: load(url, svc.headers, svc.verify, args.profile_requests, args.clients)),
        ("stow_study_serve_replica", lambda: stow_serve(svc, bodies)),
    ):
        app = _profiled_api().options(**options)
        serve.run(app.bind(svc.cfg, svc.cfg.storage, DEFAULT_KEY, "WARNING", tag=what), name=API_APP, route_prefix="/")
        handle = serve.get_app_handle(API_APP)
        handle.start_profile.remote().result()
        work()
        path = svc.tmp / f"{what}.prof"
        handle.stop_profile.remote(str(path)).result()
        out.append(summarise(what, pstats.Stats(str(path)), args.top, where=REPLICA_NOTE))
    return out


def profile_part(svc: Service, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The ``profile`` lines: in this process, then inside the Serve replica."""
    ensure_jobs(svc.ledger, args.jobs)
    bodies = stow_bodies(ct_studies(svc.tmp / "src" / "p", 700, args.study_size, args.study_size), False)
    return asgi_profiles(svc, args, bodies) + replica_profiles(svc, args, bodies)


# ---------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="stow,jobs", help="stow, jobs, profile (comma-separated)")
    parser.add_argument("--instances", type=int, default=500, help="stow: CT instances of 512x512 per variant")
    parser.add_argument("--stow-rounds", type=int, default=3, help="stow: rounds (medians reported)")
    parser.add_argument("--study-size", type=int, default=50, help="stow: instances per study (per request)")
    parser.add_argument("--jobs", type=int, default=10_000, help="jobs: jobs in the ledger")
    parser.add_argument("--requests", type=int, default=2000, help="jobs: timed requests per target")
    parser.add_argument("--clients", type=int, default=50, help="jobs: concurrent clients")
    parser.add_argument("--rounds", type=int, default=3, help="jobs: rounds, rotating which target goes first")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 100 instances, 1 round, 500 requests")
    parser.add_argument("--plaintext", action="store_true", help="http on loopback instead of TLS")
    parser.add_argument("--no-asgi", action="store_true", help="skip the in-process app's extra fields")
    parser.add_argument(
        "--profile", action="store_true", help="add the profile part (cProfile in process and in the replica)"
    )
    parser.add_argument("--profile-requests", type=int, default=300, help="profile: job-list requests")
    parser.add_argument("--top", type=int, default=25, help="profile: frames per line")
    args = parser.parse_args()
    if args.quick:
        args.instances, args.requests, args.stow_rounds = min(args.instances, 100), min(args.requests, 500), 1
    parts = {p.strip() for p in args.parts.split(",") if p.strip()} | ({"profile"} if args.profile else set())
    logging.basicConfig(level=logging.WARNING)
    for noisy in ("ray", "ray.serve", "httpx", "pynetdicom"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-rest-") as tmp, serve_api(Path(tmp), args.plaintext) as svc:
        setup_s = round(time.monotonic() - started, 1)
        for name, part in (("stow", stow_part), ("jobs", jobs_part), ("profile", profile_part)):
            if name in parts:
                for record in part(svc, args):
                    emit(record)
        emit(
            {
                "what": "summary",
                "cpus": os.cpu_count(),
                "setup_s": setup_s,
                "total_s": round(time.monotonic() - started, 1),
                "load_avg": [round(v, 2) for v in os.getloadavg()],
                "ray_worker_niceness": int(os.environ["RAY_worker_niceness"]),
            }
        )


if __name__ == "__main__":
    main()
