"""Memory under a long AI outage: every model application down, studies arriving at a steady rate.

One run, one private Orthanc as the PACS, one pipeline (``configs/test.yaml`` with the chest
X-ray family only, so one Serve application to take down). Once the pipeline runs, the model is
taken down (``--outage``):

- ``undeployed``: its application deleted (``pacsai models remove``): inference finds no
  application and each job waits in ``linked``;
- ``unplaceable``: redeployed asking for a Ray resource no node has, so the application exists
  but no replica ever starts: requests wait in Serve's queue until they time out.

Then ``--rate`` one-image chest radiographs a second arrive by C-STORE (one association each,
pynetdicom; each study built just before it is sent) for ``--minutes``. Every ``--sample-s``
the resident memory (RSS, psutil) of every actor process (pids from the actors' own health) is
sampled. ``rss_growth`` per actor: the median of the last window over the median of the first
window, minus 1 (windows: the first and the last fifth of the samples after the warm-up;
goal < 0.05 for every actor). The warm-up is the first ``--warmup-s`` (90 s) of arrivals, or
the first tenth of the samples if that is longer: every actor's RSS rises in its first minutes
of work and then levels off, in native memory (tracemalloc inside the actors saw their Python
allocations flat meanwhile: allocator arenas, SQLite's page cache, Ray's buffers). A window
that began inside them measured the warm-up, not the outage (a 4-minute run's first
window was 24-72 s). Afterwards the model is deployed again, and the run waits until
every study is delivered: ``srs_once`` (every study has exactly one SR in Orthanc),
``attempts_max`` (retries spent by any job: the outage should spend none), ``drain_s``.

Same-run baseline: the listener's RSS growth over the same windows is the pipeline's own
ingest path without the backlog (the listener holds no backlog), next to the stages that wait.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_soak.py [--minutes 10] [--rate 5]
        [--outage undeployed|unplaceable] [--sample-s 5] [--warmup-s 90]
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _common import emit  # benchmarks/ is on sys.path when run as a script; puts the root there

from actors.pipeline import Pipeline, deploy_models, remove_models, wait_until
from benchmarks.harness.load import KINDS
from benchmarks.harness.stack import aim, load_raw, only_families, running
from core.config import AppConfig, app_name

FAMILY = "chest_xray"


def send_steadily(port: int, rate: float, seconds: float, sent: list[str], stop: threading.Event) -> None:
    """Build and send one study every ``1 / rate`` s, one association each, until ``seconds``."""
    from pydicom.uid import ExplicitVRLittleEndian
    from pynetdicom import AE

    began = time.monotonic()
    k = 0
    while not stop.is_set() and time.monotonic() - began < seconds:
        datasets = KINDS["cxr"].build(50_000 + k, 1)
        stop.wait(max(0.0, began + k / rate - time.monotonic()))
        ae = AE(ae_title="SOAKMOD")
        ae.add_requested_context(str(datasets[0].SOPClassUID), [ExplicitVRLittleEndian])
        assoc = ae.associate("127.0.0.1", port, ae_title="PACSAI")
        if assoc.is_established:
            statuses = [assoc.send_c_store(ds) for ds in datasets]
            assoc.release()
            if all(s and int(s.Status) == 0 for s in statuses):
                sent.append(str(datasets[0].StudyInstanceUID))
        k += 1


def sample_rss(pipeline: Pipeline, samples: dict[str, list[float]], anon: dict[str, list[float]]) -> None:
    """One RSS sample (MB) of every actor process, by the pid each actor reports, and its
    anonymous part (``RssAnon``: the heap, not file pages or SQLite's shared WAL index)."""
    import psutil  # Ray's vendored copy: importing Ray (the pipeline) put it on sys.path

    for name, health in pipeline.health().items():
        if not health.pid:
            continue
        try:
            samples.setdefault(name, []).append(psutil.Process(health.pid).memory_info().rss / 2**20)
            status = Path(f"/proc/{health.pid}/status").read_text()
        except (psutil.NoSuchProcess, OSError):  # restarted between the health answer and now
            continue
        kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("RssAnon:"))
        anon.setdefault(name, []).append(kib / 1024)


def growth(values: list[float], warmup: int = 0) -> tuple[float, float, float]:
    """(first-window median, last-window median, last / first - 1) after ``warmup`` samples
    (at least a tenth)."""
    rest = values[max(1, warmup, len(values) // 10) :] or values
    window = max(1, len(rest) // 5)
    first, last = statistics.median(rest[:window]), statistics.median(rest[-window:])
    return round(first, 1), round(last, 1), round(last / first - 1, 4)


def take_down(cfg: AppConfig, outage: str) -> None:
    remove_models([FAMILY])
    if outage == "unplaceable":
        from ray import serve

        from serve.app import build_app

        entry = cfg.models[FAMILY]
        absent = entry.model_copy(update={"serve": entry.serve.model_copy(update={"resources": {"soak_absent": 1.0}})})
        serve._run(build_app(FAMILY, absent), name=app_name(FAMILY), route_prefix=None, _blocking=False)


def bring_back(cfg: AppConfig) -> None:
    remove_models([FAMILY])
    deploy_models(cfg, [FAMILY])


def drain(stack: Any, uids: list[str], timeout_s: float) -> tuple[float, int, bool]:
    """Wait until every study is delivered; (seconds, most retries spent, one SR each)."""
    began = time.monotonic()

    def delivered() -> bool:
        return stack.ledger.status.report(time.time()).jobs["delivered"] >= len(uids)

    wait_until(delivered, timeout_s, 1.0)
    took = time.monotonic() - began
    jobs = [j for u in uids for j in stack.ledger.jobs.for_study(u)]
    once = all(len(stack.orthanc.instances_of_study(u, modality="SR")) == 1 for u in uids)
    return took, max((j.attempts for j in jobs), default=0), once and len(jobs) == len(uids)


def run(args: argparse.Namespace) -> dict[str, Any]:
    raw = only_families(load_raw(), [FAMILY])
    with (
        tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp,
        running(Path(tmp), lambda port, pacs: aim(raw, Path(tmp) / "var", port, pacs, site="soak")) as stack,
    ):
        take_down(stack.cfg, args.outage)
        seconds = args.minutes * 60
        sent: list[str] = []
        stop = threading.Event()
        sender = threading.Thread(
            target=send_steadily, args=(stack.cfg.listener.port, args.rate, seconds, sent, stop), daemon=True
        )
        samples: dict[str, list[float]] = {}
        anon: dict[str, list[float]] = {}
        sender.start()
        while sender.is_alive():
            sample_rss(stack.pipeline, samples, anon)
            sender.join(args.sample_s)
        sample_rss(stack.pipeline, samples, anon)
        backlog = stack.ledger.status.report(time.time()).jobs
        bring_back(stack.cfg)
        drain_s, attempts, once = drain(stack, sent, args.drain_timeout_s)
        warmup = math.ceil(args.warmup_s / args.sample_s)
        per_actor = {name: growth(values, warmup) for name, values in sorted(samples.items())}
        return {
            "name": "soak",
            "outage": args.outage,
            "minutes": args.minutes,
            "rate": args.rate,
            "sent": len(sent),
            "samples": min(len(v) for v in samples.values()),
            "warmup_s": args.warmup_s,
            "rss_growth": {name: g for name, (_, _, g) in per_actor.items()},
            "rss_mb": {name: [a, b] for name, (a, b, _) in per_actor.items()},
            "max_growth": max(g for _, _, g in per_actor.values()),
            "anon_growth": {name: growth(values, warmup)[2] for name, values in sorted(anon.items())},
            "backlog_at_end": {k: v for k, v in backlog.items() if v},
            "drain_s": round(drain_s, 1),
            "attempts_max": attempts,
            "srs_once": once,
            "goal_rss_growth": 0.05,
            **({"rss_series": {n: [round(v, 1) for v in vs] for n, vs in samples.items()}} if args.series else {}),
            **({"anon_series": {n: [round(v, 1) for v in vs] for n, vs in anon.items()}} if args.series else {}),
        }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0, help="how long studies arrive")
    p.add_argument("--rate", type=float, default=5.0, help="studies per second")
    p.add_argument("--outage", choices=["undeployed", "unplaceable"], default="undeployed")
    p.add_argument("--sample-s", type=float, default=5.0, help="RSS sampling period")
    p.add_argument("--warmup-s", type=float, default=90.0, help="samples of the first seconds left out of the windows")
    p.add_argument("--series", action="store_true", help="print every RSS sample too")
    p.add_argument("--drain-timeout-s", type=float, default=1800.0, help="give up draining after this long")
    emit(run(p.parse_args()))


if __name__ == "__main__":
    main()
