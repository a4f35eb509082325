"""Scale-out on a real multi-node Ray cluster: ingest, inference and the whole pipeline at 1, 2 (and 4).

Everything runs on this machine, set up and torn down by the script: a private PostgreSQL (the
shared ledger), a private Orthanc (the PACS), and a :class:`demo.raycluster.LocalRayCluster` of a
head, two ingress nodes (``ingress-a`` with ``{"ingress": 1, "pacsai_cell_a": 1}``, ``ingress-b``
with cell ``b``) and a model node (``model-m``, ``{"model": 1}``), Ray token authentication on.
The chest_xray weights are the ones ``make weights`` trains (``configs/test.yaml``'s entry); its
replicas ask for ``{model: 0.01}`` and 0.25 CPU, one torch thread each. The pipeline runs in a
driver subprocess (``pacsai up``'s ``Pipeline.start`` with a raw config), as in
``tests/cluster/test_pipeline_cluster.py``; this process never joins Ray.

Parts (``--parts a,b,c``), each measuring its own n = 1 baseline in the same run:

- a, ``ingest``: the pipeline with ``cluster.cells`` = [a], then [a, b] (a fresh pipeline, site
  name and ledger schema per point), no model and no routing rule (the listener, assembler and
  validator run; nothing is inferred). ``--senders`` concurrent ``storescu`` processes, spread
  over the cells' listeners, send ``--instances`` small CT slices (one series per sender); time
  from the first send to the last acknowledgement (every ``storescu`` exited 0), after an untimed
  two-slice series to each listener. The ledger then must hold every instance. n = listeners.
- b, ``inference``: the chest_xray application with fixed replicas 1, 2, 4 (``min_replicas =
  max_replicas = n``, deployed by ``actors.pipeline.deploy_models``); ``--requests``
  ``InferenceRequest`` of a synthetic one-image CXR study through the app's handle (``__call__``,
  the inference stage's call), ``4 x n`` in flight, after a warm-up. n = replicas.
- c, ``pipeline``: the whole pipeline (two chest replicas on the model node, fixed) with cells
  [a] then [a, b]; ``--studies`` one-image CXR studies, one ``storescu`` association each,
  ``--senders`` at once, spread over the cells' listeners; time from the first send until every
  study's latest job is ``delivered`` (the SR stored in Orthanc), polled from the ledger, after
  one untimed study through each cell (first-job costs out of the measurement). n = ingress
  nodes.

One JSON line per point: ``what``, ``n``, ``per_s``, ``efficiency`` = per_s / (n x per_s at
n = 1), ``items``, ``seconds``, ``load_avg_1m`` (at the end of the point) and extras. For the last
point of each part, a ``where_time_goes`` line splits the CPU seconds spent during it by process
kind (Ray's own processes, our actors, model replicas, drivers, PostgreSQL, Orthanc, storescu,
this script, and the rest of the machine), from ``/proc``. A final ``summary`` line names the CPU
count: every node shares these CPUs, so on a small machine the efficiencies measure the CPU, not
the cluster (goal on a real cluster: efficiency >= 0.85 at 4 replicas). It never asserts.

    .venv/bin/python benchmarks/bench_scale.py [--parts a,b,c] [--quick] [--instances 200]
        [--senders 4] [--requests 64] [--studies 12]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import resource
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from _common import ROOT, emit  # benchmarks/ is on sys.path when run as a script

from benchmarks.harness.load import send_storescu_all
from benchmarks.harness.record import process_cpu_s
from benchmarks.harness.stack import load_raw
from core.config import parse_config
from core.types import JobState
from demo.orthanc import OrthancProcess
from demo.postgres import PostgresServer
from demo.raycluster import LocalRayCluster, NodeSpec
from state.data_keys import rotated, write_key_file
from state.ledger import Ledger, open_ledger
from synthetic.synthetic_dicom import make_ct_series, make_cxr_study, save_study

PG_ENV = "PACSAI_BENCH_SCALE_PG_DSN"
"""The variable holding the PostgreSQL DSN, in this process (ledger polling) and in the drivers."""

NAMESPACE = "pacsai-bench-scale"
FAMILY = "chest_xray"
APP = f"model-{FAMILY}"
CALLED_AE = "PACSAI"
TERMINAL = {JobState.DELIVERED.value, JobState.SKIPPED.value, JobState.QUARANTINED.value, JobState.DEAD.value}
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- configuration
def base_config(cluster: LocalRayCluster, pacs: OrthancProcess | None) -> dict[str, Any]:
    """``configs/test.yaml`` on the cluster: the chest model on the model node, its rule only."""
    raw = load_raw()
    chest = raw["models"][FAMILY]
    chest["serve"].update(resources={"model": 0.01}, num_cpus=0.25, torch_threads=1, min_replicas=1, max_replicas=1)
    raw.update(
        ray={"address": cluster.address, "namespace": NAMESPACE},
        models={FAMILY: chest},
        routing={"rules": [r for r in raw["routing"]["rules"] if r["family"] == FAMILY]},
    )
    if pacs is not None:
        raw["pacs"].update(port=pacs.dicom_port, ae_title=pacs.aet)
    return raw


def point_config(
    base: dict[str, Any], tag: str, cells: list[str], var_root: Path, *, models: bool, replicas: int = 1
) -> dict[str, Any]:
    """A fresh site name, var dir and ledger schema for one point; ``models=False`` drops the
    models and the routing rules (ingest, assembly and validation only)."""
    raw = copy.deepcopy(base)
    keys = var_root / "data-keys.json"
    if not keys.exists():  # one key file every node reads: the shared ledger's sealed columns
        write_key_file(keys, rotated(None))
    raw.update(
        site_name=f"bs{tag}",
        storage={
            "var_dir": str(var_root / tag),
            "ledger": {
                "backend": "postgresql",
                "dsn_env": PG_ENV,
                "schema_prefix": f"bs{tag}_{int(time.time()) % 10**6}",
            },
            "encryption": {"key_file": str(keys)},
        },
        cluster={"cells": cells, "stage_actors": 1, "start_timeout_s": 300},
    )
    if models:
        raw["models"][FAMILY]["serve"].update(min_replicas=replicas, max_replicas=replicas)
    else:
        raw.update(models={}, routing={"rules": []})
    parse_config(raw)  # valid before any process starts
    return raw


# ---------------------------------------------------------------- the pipeline in a driver
class Up:
    """``Pipeline.start`` in a driver subprocess on the cluster (this process holds no Ray)."""

    def __init__(self, cluster: LocalRayCluster, raw: dict[str, Any], dsn: str) -> None:
        self.driver = cluster.driver()
        try:
            self.driver.exec(
                f"import os, sys\nos.chdir({str(ROOT)!r})\nsys.path.insert(0, {str(ROOT)!r})\n"
                f"os.environ[{PG_ENV!r}] = {dsn!r}\n"
                "from actors.pipeline import Pipeline\nfrom core.config import parse_config\n"
                f"pipeline = Pipeline(parse_config({raw!r})).start()",
                timeout=480,
            )
        except BaseException:
            self.driver.close()
            raise

    def port(self, cell: str) -> int:
        """The bound port of one cell's DICOM listener."""
        return int(self.driver.eval(f"pipeline.listener_port(timeout_s=180, cell={cell!r})", timeout=240))

    def close(self) -> None:
        """Stop the actors (leases given back), then end the driver."""
        with contextlib.suppress(Exception):
            self.driver.exec("pipeline.stop(timeout_s=30)", timeout=90)
        self.driver.close()


@contextlib.contextmanager
def pipeline_up(cluster: LocalRayCluster, raw: dict[str, Any], dsn: str) -> Iterator[Up]:
    """A running pipeline for one point, stopped afterwards."""
    up = Up(cluster, raw, dsn)
    try:
        yield up
    finally:
        up.close()


@contextlib.contextmanager
def ledger_of(raw: dict[str, Any]) -> Iterator[Ledger]:
    """The point's ledger, opened from this process (``PG_ENV`` is set in ``main``)."""
    ledger = open_ledger(parse_config(raw).storage)
    try:
        yield ledger
    finally:
        ledger.close()


# ---------------------------------------------------------------- where the CPU goes
@dataclass
class CpuSnapshot:
    """CPU seconds per process (with its kind), the machine's busy seconds and our children's."""

    at: float
    processes: dict[int, tuple[str, str, float]]
    machine_busy_s: float
    children_s: float
    self_s: float


@dataclass
class CpuAccount:
    """Knows which processes are whose: the cluster's, the drivers', PostgreSQL's, Orthanc's."""

    cluster: LocalRayCluster
    postgres: PostgresServer | None
    orthanc: OrthancProcess | None
    drivers: set[int] = field(default_factory=set)

    def _postgres_pids(self) -> set[int]:
        if self.postgres is None or self.postgres.root is None:
            return set()
        try:
            master = int((self.postgres.root / "data" / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return set()
        return {master} | _children(master)

    def _orthanc_pids(self) -> set[int]:
        if self.orthanc is None:
            return set()
        return {pid for pid in _children(os.getpid()) if _comm(pid).lower().startswith("orthanc")}

    def snapshot(self) -> CpuSnapshot:
        """CPU seconds so far of every process we can attribute."""
        kinds: dict[int, tuple[str, str]] = {}
        ids = self.cluster.node_ids()
        for name in self.cluster.names:
            if name in ids:
                for pid in self.cluster.pids(name):
                    kinds[pid] = (_ray_kind(pid), name)
        for pid in self._postgres_pids():
            kinds[pid] = ("postgresql", "")
        for pid in self._orthanc_pids():
            kinds[pid] = ("orthanc", "")
        for pid in self.drivers:
            kinds[pid] = ("drivers", "")
        processes = {}
        for pid, (kind, node) in kinds.items():
            seconds = process_cpu_s(pid)
            if seconds is not None:
                processes[pid] = (kind, node, seconds)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        own = resource.getrusage(resource.RUSAGE_SELF)
        return CpuSnapshot(
            at=time.monotonic(),
            processes=processes,
            machine_busy_s=_machine_busy_s(),
            children_s=children.ru_utime + children.ru_stime,
            self_s=own.ru_utime + own.ru_stime,
        )


def where_time_goes(point: str, before: CpuSnapshot, after: CpuSnapshot) -> dict[str, Any]:
    """The CPU seconds of one point by kind of process, node and detail (Ray process title)."""
    by_kind: dict[str, float] = {}
    by_node: dict[str, float] = {}
    by_detail: dict[str, float] = {}
    for pid, (kind, node, seconds) in after.processes.items():
        old = before.processes.get(pid)
        spent = seconds - (old[2] if old is not None and old[0] == kind else 0.0)
        group = kind.split(":", 1)[0]
        by_kind[group] = by_kind.get(group, 0.0) + spent
        if node:
            by_node[node] = by_node.get(node, 0.0) + spent
        by_detail[kind] = by_detail.get(kind, 0.0) + spent
    by_kind["storescu"] = after.children_s - before.children_s  # our waited children: storescu only
    by_kind["bench_script"] = after.self_s - before.self_s
    busy = after.machine_busy_s - before.machine_busy_s
    attributed = sum(by_kind.values())
    by_kind["rest_of_machine"] = busy - attributed  # other tenants, the kernel, processes that exited
    seconds = after.at - before.at
    top = sorted(by_detail.items(), key=lambda kv: -kv[1])[:12]
    return {
        "what": "where_time_goes",
        "point": point,
        "seconds": round(seconds, 2),
        "cpu_capacity_s": round(seconds * (os.cpu_count() or 1), 2),
        "machine_busy_cpu_s": round(busy, 2),
        "cpu_s_by_kind": {k: round(v, 2) for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])},
        "cpu_s_by_node": {k: round(v, 2) for k, v in sorted(by_node.items(), key=lambda kv: -kv[1])},
        "top_ray_processes": [[k, round(v, 2)] for k, v in top],
        "method": "utime+stime from /proc/<pid>/stat at the start and end of the point; /proc/stat for the machine",
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def _ray_kind(pid: int) -> str:
    """``ray_system`` / ``pipeline_actors`` / ``model_replicas`` / ``ray_idle_workers``, with the
    process's title after a colon (``pipeline_actors:ListenerActor``)."""
    comm = _comm(pid)
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        cmdline = ""
    if comm in ("raylet", "gcs_server"):
        return f"ray_system:{comm}"
    if cmdline.startswith("ray::"):
        title = cmdline.split()[0][len("ray::") :].split(".", 1)[0].split("(", 1)[0]
        if title == "IDLE":
            return "ray_idle_workers:IDLE"
        if title.startswith("ServeReplica"):
            return f"model_replicas:{title}"
        if title.endswith("Actor"):
            return f"pipeline_actors:{title}"
        return f"ray_system:{title}"  # ServeController, DashboardAgent, ...
    if "dashboard/agent.py" in cmdline:
        return "ray_system:dashboard_agent"
    if "runtime_env/agent" in cmdline:
        return "ray_system:runtime_env_agent"
    if " start " in f" {cmdline} " and "ray" in cmdline:
        return "ray_system:ray_start"
    words = cmdline.split()
    if comm.startswith("python") and len(words) > 1:
        script = next((w for w in words[1:] if not w.startswith("-")), "")
        return f"ray_system:{Path(script).name or comm}"
    return f"ray_system:{comm}"


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _children(parent: int) -> set[int]:
    """Direct children of ``parent``."""
    out = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue
        if int(text[text.rindex(")") + 2 :].split()[1]) == parent:
            out.add(int(entry.name))
    return out


def _machine_busy_s() -> float:
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


# ---------------------------------------------------------------- points
@dataclass
class Point:
    """One measured point, ready to print."""

    what: str
    n: int
    items: int
    seconds: float
    load_before: float
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def per_s(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else 0.0

    def record(self, baseline: Point | None) -> dict[str, Any]:
        efficiency = self.per_s / (self.n * baseline.per_s) if baseline is not None and baseline.per_s else None
        return {
            "what": self.what,
            "n": self.n,
            "per_s": round(self.per_s, 3),
            "efficiency": None if efficiency is None else round(efficiency, 3),
            "items": self.items,
            "seconds": round(self.seconds, 2),
            "load_avg_1m": round(os.getloadavg()[0], 2),
            "load_avg_1m_before": round(self.load_before, 2),
            **self.extras,
        }


def ingest_point(
    ctx: Context,
    n: int,
    series: list[tuple[str, list[Path]]],
    warm: list[tuple[str, list[Path]]],
    senders: int,
    profile: bool,
) -> tuple[Point, dict[str, Any] | None]:
    """Ingest with ``n`` listeners (cells a, b, ...): concurrent storescu, first send to last ack.

    ``warm`` (one small series per cell) is sent to each listener first, untimed."""
    cells = ["a", "b"][:n]
    raw = point_config(ctx.base, f"a{n}", cells, ctx.var_root, models=False)
    with pipeline_up(ctx.cluster, raw, ctx.dsn) as up:
        ctx.account.drivers.add(up.driver.pid)
        ports = [up.port(c) for c in cells]
        send_storescu_all([(files, port) for (_, files), port in zip(warm, ports, strict=False)], n)
        time.sleep(ctx.settle_s)
        load = os.getloadavg()[0]
        before = ctx.account.snapshot() if profile else None
        started = time.perf_counter()
        each = send_storescu_all([(files, ports[i % n]) for i, (_, files) in enumerate(series)], senders)
        seconds = time.perf_counter() - started
        after = ctx.account.snapshot() if profile else None
        with ledger_of(raw) as ledger:
            held = sum(len(ledger.intake.states(uid)) for uid, _ in series)
        ctx.account.drivers.discard(up.driver.pid)
    sent = sum(len(files) for _, files in series)
    point = Point(
        "ingest",
        n,
        sent,
        seconds,
        load,
        {
            "unit": "instances/s",
            "senders": senders,
            "listener_ports": ports,
            "instances_in_ledger": held,
            "storescu_s_median": round(statistics.median(each), 2),
            "instance_bytes": series[0][1][0].stat().st_size,
        },
    )
    report = where_time_goes(f"ingest n={n}", before, after) if before is not None and after is not None else None
    return point, report


_INFERENCE_DRIVER = """
import copy, os, sys, time
os.chdir({root!r})
sys.path.insert(0, {root!r})
from io import BytesIO
import ray
from ray import serve
from actors.pipeline import deploy_models, ensure_ray
from core.config import parse_config
from core.records import InferenceRequest
from synthetic.synthetic_dicom import make_cxr_study

RAW = {raw!r}
_ds = make_cxr_study(4242, n_images=1, patient_id="BSINF", accession="BSINF")[0]
_buffer = BytesIO()
_ds.save_as(_buffer, enforce_file_format=True)
REQUEST = InferenceRequest(str(_ds.StudyInstanceUID), {family!r}, ((str(_ds.SOPInstanceUID), _buffer.getvalue()),))


def deploy(n):
    raw = copy.deepcopy(RAW)
    raw["models"][{family!r}]["serve"].update(min_replicas=n, max_replicas=n)
    cfg = parse_config(raw)
    ensure_ray(cfg)
    started = time.perf_counter()
    deploy_models(cfg)
    deadline = time.monotonic() + 300
    while running() != n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{{running()}} replicas running, expected {{n}}")
        time.sleep(0.5)
    return round(time.perf_counter() - started, 2)


def running():
    status = serve.status().applications.get({app!r})
    if status is None:
        return 0
    return sum(d.replica_states.get("RUNNING", 0) for d in status.deployments.values())


def replica_nodes():
    actors = ray._private.state.actors().values()
    return sorted(
        a["Address"]["NodeID"] for a in actors
        if a["State"] == "ALIVE" and a["ActorClassName"].startswith("ServeReplica:" + {app!r})
    )


def measure(count, window):
    handle = serve.get_app_handle({app!r})
    [r.result(timeout_s=300) for r in [handle.remote(REQUEST) for _ in range(2 * window)]]  # warm-up
    pending, latencies = [], []
    started = time.perf_counter()
    for _ in range(count):
        pending.append((time.perf_counter(), handle.remote(REQUEST)))
        if len(pending) >= window:
            submitted, response = pending.pop(0)
            response.result(timeout_s=300)
            latencies.append(time.perf_counter() - submitted)
    for submitted, response in pending:
        response.result(timeout_s=300)
        latencies.append(time.perf_counter() - submitted)
    seconds = time.perf_counter() - started
    latencies.sort()
    return {{
        "seconds": seconds,
        "p50_ms": round(1000 * latencies[len(latencies) // 2], 1),
        "p95_ms": round(1000 * latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 1),
    }}
"""


def inference_points(ctx: Context, counts: list[int], requests: int, profile: bool) -> list[dict[str, Any]]:
    """Fixed replicas 1, 2, 4 of the chest app; ``requests`` requests, ``4 x n`` in flight."""
    raw = copy.deepcopy(ctx.base)
    raw["site_name"] = "bsinf"
    lines: list[dict[str, Any]] = []
    baseline: Point | None = None
    driver = ctx.cluster.driver()
    ctx.account.drivers.add(driver.pid)
    try:
        driver.exec(_INFERENCE_DRIVER.format(root=str(ROOT), raw=raw, family=FAMILY, app=APP), timeout=300)
        report = None
        for n in counts:
            deploy_s = driver.eval(f"deploy({n})", timeout=600)
            nodes = sorted({ctx.cluster.node_name(node) for node in driver.eval("replica_nodes()", timeout=60)})
            time.sleep(ctx.settle_s)
            load = os.getloadavg()[0]
            before = ctx.account.snapshot() if profile and n == counts[-1] else None
            window = 4 * n
            result = driver.eval(f"measure({requests}, {window})", timeout=900)
            after = ctx.account.snapshot() if before is not None else None
            point = Point(
                "inference",
                n,
                requests,
                float(result["seconds"]),
                load,
                {
                    "unit": "requests/s",
                    "in_flight": window,
                    "p50_ms": result["p50_ms"],
                    "p95_ms": result["p95_ms"],
                    "replica_nodes": nodes,
                    "deploy_s": deploy_s,
                    "replica": "num_cpus 0.25, torch_threads 1, {model: 0.01}",
                },
            )
            baseline = baseline or point
            lines.append(point.record(baseline))
            emit(lines[-1])
            if before is not None and after is not None:
                report = where_time_goes(f"inference n={n}", before, after)
        driver.exec(f"serve.delete({APP!r})", timeout=120)
        if report is not None:
            emit(report)
    finally:
        ctx.account.drivers.discard(driver.pid)
        driver.close()
    return lines


def _wait_terminal(ledger: Ledger, uids: list[str], timeout_s: float) -> dict[str, str]:
    """Poll the ledger until every study's latest job is terminal (or ``timeout_s`` passes);
    the latest states."""
    states: dict[str, str] = {}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        states = {u: (jobs[-1].state.value if (jobs := ledger.jobs.for_study(u)) else "none") for u in uids}
        if all(s in TERMINAL for s in states.values()):
            break
        time.sleep(0.2)
    return states


def pipeline_point(
    ctx: Context,
    n: int,
    studies: list[tuple[str, list[Path]]],
    warm: list[tuple[str, list[Path]]],
    senders: int,
    replicas: int,
    profile: bool,
) -> tuple[Point, dict[str, Any] | None]:
    """The whole pipeline with ``n`` ingress cells: first send until every study is delivered.

    ``warm`` (one study per cell) goes through each cell first, untimed, so that no stage pays
    its first-job costs inside the measurement."""
    cells = ["a", "b"][:n]
    raw = point_config(ctx.base, f"c{n}", cells, ctx.var_root, models=True, replicas=replicas)
    uids = [uid for uid, _ in studies]
    with pipeline_up(ctx.cluster, raw, ctx.dsn) as up, ledger_of(raw) as ledger:
        ctx.account.drivers.add(up.driver.pid)
        ports = [up.port(c) for c in cells]
        warm = warm[:n]
        warm_started = time.perf_counter()
        send_storescu_all([(files, port) for (_, files), port in zip(warm, ports, strict=True)], n)
        warm_states = _wait_terminal(ledger, [u for u, _ in warm], ctx.timeout_s)
        warm_s = time.perf_counter() - warm_started
        time.sleep(ctx.settle_s)
        load = os.getloadavg()[0]
        before = ctx.account.snapshot() if profile else None
        started = time.perf_counter()
        send_storescu_all([(files, ports[i % n]) for i, (_, files) in enumerate(studies)], senders)
        sent_s = time.perf_counter() - started
        states = _wait_terminal(ledger, uids, ctx.timeout_s)
        seconds = time.perf_counter() - started
        after = ctx.account.snapshot() if profile else None
        ctx.account.drivers.discard(up.driver.pid)
    counts: dict[str, int] = {}
    for state in states.values():
        counts[state] = counts.get(state, 0) + 1
    delivered = counts.get(JobState.DELIVERED.value, 0)
    point = Point(
        "pipeline",
        n,
        delivered,
        seconds,
        load,
        {
            "unit": "studies/s (delivered)",
            "studies_sent": len(studies),
            "final_states": counts,
            "timed_out": not all(s in TERMINAL for s in states.values()),
            "all_sent_s": round(sent_s, 2),
            "warm_up_study_s": round(warm_s, 2),
            "warm_up_states": sorted(set(warm_states.values())),
            "senders": senders,
            "model_replicas": replicas,
            "quiet_period_s": raw["assembly"]["quiet_period_s"],
        },
    )
    report = where_time_goes(f"pipeline n={n}", before, after) if before is not None and after is not None else None
    return point, report


# ---------------------------------------------------------------- data
def ct_series(root: Path, instances: int, senders: int, first_seed: int = 900) -> list[tuple[str, list[Path]]]:
    """``instances`` small CT slices (128 x 128), one series (and study) per sender."""
    out = []
    for i in range(senders):
        count = instances // senders + (1 if i < instances % senders else 0)
        if count == 0:
            continue
        seed = first_seed + i
        datasets = make_ct_series(
            seed=seed, n_slices=count, rows=128, cols=128, patient_id=f"BSCT{seed}", accession=f"BSCT{seed}"
        )
        out.append((str(datasets[0].StudyInstanceUID), save_study(datasets, root / f"ct{i}")))
    return out


def cxr_studies(root: Path, first_seed: int, count: int) -> list[tuple[str, list[Path]]]:
    """``count`` one-image CXR studies (256 x 256 DX), distinct UIDs per ``first_seed``."""
    out = []
    for seed in range(first_seed, first_seed + count):
        datasets = make_cxr_study(seed, n_images=1, patient_id=f"BS{seed:05d}", accession=f"BS{seed}")
        out.append((str(datasets[0].StudyInstanceUID), save_study(datasets, root / f"cxr{seed}")))
    return out


# ---------------------------------------------------------------- main
@dataclass
class Context:
    """What every part needs: the cluster, the base config, the DSN, scratch space."""

    cluster: LocalRayCluster
    base: dict[str, Any]
    dsn: str
    var_root: Path
    account: CpuAccount
    settle_s: float
    timeout_s: float


def _parts(text: str) -> list[str]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    bad = [p for p in parts if p not in ("a", "b", "c")]
    if bad or not parts:
        raise argparse.ArgumentTypeError(f"parts are a, b, c (comma-separated); got {text!r}")
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", type=_parts, default=["a", "b", "c"], help="which parts: a,b,c")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    parser.add_argument("--instances", type=int, default=200, help="a: CT instances per point")
    parser.add_argument("--senders", type=int, default=4, help="a, c: concurrent storescu processes")
    parser.add_argument("--requests", type=int, default=64, help="b: requests per point")
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 4], help="b: replica counts")
    parser.add_argument("--studies", type=int, default=12, help="c: one-image studies per point")
    parser.add_argument("--pipeline-replicas", type=int, default=2, help="c: fixed chest replicas")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds of rest after each start")
    parser.add_argument("--timeout", type=float, default=600.0, help="c: seconds to wait for delivery")
    parser.add_argument("--no-profile", action="store_true", help="skip the where_time_goes lines")
    args = parser.parse_args()
    if args.quick:
        args.instances, args.requests, args.studies = min(args.instances, 40), min(args.requests, 16), 4
    if not (ROOT / base_weights()).exists():
        raise SystemExit(f"{base_weights()} is missing: run `make weights` first")
    started = time.monotonic()
    profile = not args.no_profile
    lines: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-scale-")))
        postgres = None
        if "a" in args.parts or "c" in args.parts:
            postgres = PostgresServer().start()
            stack.callback(postgres.stop)
            os.environ[PG_ENV] = postgres.dsn
        pacs = None
        if "c" in args.parts:
            pacs = OrthancProcess(tmp / "orthanc").start()
            stack.callback(pacs.stop)
        nodes = [
            NodeSpec("ingress-a", {"ingress": 1, "pacsai_cell_a": 1}),
            NodeSpec("ingress-b", {"ingress": 1, "pacsai_cell_b": 1}),
            NodeSpec("model-m", {"model": 1}),
        ]
        cluster = LocalRayCluster(nodes, auth_token="pacsai-bench-scale-token", startup_timeout=300)
        stack.callback(cluster.stop)
        cluster.start()
        ctx = Context(
            cluster=cluster,
            base=base_config(cluster, pacs),
            dsn=postgres.dsn if postgres is not None else "",
            var_root=tmp / "var",
            account=CpuAccount(cluster, postgres, pacs),
            settle_s=args.settle,
            timeout_s=args.timeout,
        )
        cluster_start_s = round(time.monotonic() - started, 1)

        if "a" in args.parts:
            series = ct_series(tmp / "ct", args.instances, args.senders)
            warm_series = [ct_series(tmp / f"ctwarm{i}", 2, 1, first_seed=800 + 10 * i)[0] for i in range(2)]
            _run_series(
                lines,
                [1, 2],
                lambda n: ingest_point(ctx, n, series, warm_series, args.senders, profile and n == 2),
            )
        if "b" in args.parts:
            lines += inference_points(ctx, args.replicas, args.requests, profile)
        if "c" in args.parts:
            studies = {n: cxr_studies(tmp / f"cxr{n}", 1000 * n, args.studies) for n in (1, 2)}
            warm_studies = {n: cxr_studies(tmp / f"cxrwarm{n}", 500 + 10 * n, 2) for n in (1, 2)}
            _run_series(
                lines,
                [1, 2],
                lambda n: pipeline_point(
                    ctx, n, studies[n], warm_studies[n], args.senders, args.pipeline_replicas, profile and n == 2
                ),
            )
        at_4 = [line["efficiency"] for line in lines if line["what"] == "inference" and line["n"] == 4]
        emit(
            {
                "what": "summary",
                "cpus": os.cpu_count(),
                "nodes": cluster.names,
                "shared_cpu": True,
                "note": f"all {len(cluster.names)} Ray nodes (separate raylets, TCP between them), PostgreSQL, "
                f"Orthanc, the drivers and storescu share these {os.cpu_count()} CPUs: efficiency here is "
                "bounded by the CPU, not a measure of the cluster",
                "goal": "efficiency >= 0.85 at 4 replicas on a real cluster",
                "inference_efficiency_at_4": at_4[0] if at_4 else None,
                "parts": args.parts,
                "quick": args.quick,
                "cluster_start_s": cluster_start_s,
                "total_s": round(time.monotonic() - started, 1),
                "load_avg": [round(v, 2) for v in os.getloadavg()],
            }
        )


def base_weights() -> str:
    """The chest weights path of ``configs/test.yaml`` (relative to the repository root)."""
    return str(yaml.safe_load((ROOT / "configs" / "test.yaml").read_text())["models"][FAMILY]["weights"])


def _run_series(
    lines: list[dict[str, Any]], counts: list[int], measure: Callable[[int], tuple[Point, dict[str, Any] | None]]
) -> None:
    """Measure each n in turn against the first (n = 1) as baseline; print as it goes."""
    baseline: Point | None = None
    for n in counts:
        point, report = measure(n)
        baseline = baseline or point
        lines.append(point.record(baseline))
        emit(lines[-1])
        if report is not None:
            emit(report)


if __name__ == "__main__":
    main()
