"""C-STORE ingest: our durable listener vs a bare fsync pynetdicom SCP and dcmtk's storescp.

N CT instances of 512x512 (one study) go from ``--senders`` dcmtk ``storescu`` processes at once
(TCP_NODELAY=1; each sends every ``senders``-th file over one association of its own) to each
receiver in turn, several rounds, the order rotated each round; every receiver gets the same
senders and files, after one untimed instance of another study (one-time costs untimed). Each receiver runs in processes of its own
(``benchmarks.harness.baselines.receiver_processes``):

- ``bare_scp``: a pynetdicom SCP that writes each instance and fsyncs it, nothing else;
- ``pacsai_listener``: our listener, the whole durability contract (write, fsync, atomic rename,
  directory fsync, SQLite commit with synchronous=FULL, sha256, header parse, audit row), with
  concurrent instances group-committed (``listener.group_commit_max``);
- ``pacsai_listener_x<P>``: ``--listener-processes`` listener processes sharing the port
  (``SO_REUSEPORT``, as ``listener.instances``), one spool and one SQLite ledger;
- ``dcmtk_storescp``: dcmtk's C++ receiver (``storescp --fork +B``), which has no fsync
  option: it leaves its files in the page cache (``"dcmtk_fsync": false``);
- ``dcmtk_storescp_fsync``: the same storescp running ``sync FILE`` (an fsync of the file) on
  each file before it answers (``--exec-on-reception ... --exec-sync``): its nearest durable
  configuration, a fairer peer for a receiver that answers only once the instance is durable
  (``ratio_vs_dcmtk_fsync``; ``bare_to_dcmtk_ratio``: how far even the bare fsync SCP is from
  storescp without fsync in the same run).

Prints one JSON line per round, then a summary: ``ratio`` is our listener (one process) over
the bare SCP (medians; goal >= 1.0), ``ratio_vs_dcmtk`` our ``P`` listener processes over
storescp (goal >= 0.6); ``paired_*`` are the medians of the per-round ratios, and
``*_mean_group`` the instances per group commit. ``*_cpu_ms_per_inst``: CPU per instance of
each receiver (all its processes; none for storescp) and of its senders (``*_senders_*``: the
storescu processes, from this process's ``RUSAGE_CHILDREN``). ``pacsai_listener_x<P>_split``:
instances each listener process took in that round; the kernel hashes each association to one
``SO_REUSEPORT`` socket, so four senders land 2:2 on two processes in only 3 rounds of 8.

``--py-spy DIR``: ``py-spy record`` on every process of both listener variants, one raw stack
file each: the threads holding the GIL (CPU), or with ``--py-spy-idle`` every thread, waiting
ones too (where an association's wall time goes: fsyncs, group commits, the network).

Metrics cost: the listener processes join a local Ray (so Ray's metrics API records for real,
as in an actor), and our one-process listener runs a second time per round with recording off;
``metrics_overhead`` is 1 - the median over rounds of (throughput with) / (throughput without)
(goal < 0.03), ``metrics_overhead_of_medians`` the same from the medians of each.
``--no-metrics-cost`` skips it (and Ray).

Encryption cost: our listener seals every spool file at rest (AES-256-GCM, ``storage.encryption``,
on by default, as measured above); it runs once more per round with encryption off
(``pacsai_listener_no_encryption``, metrics as ``pacsai_listener``). ``encryption_cost`` is
1 - the median over rounds of (throughput with) / (throughput without) (goal < 0.10),
``encryption_cost_of_medians`` the same from the medians. ``--no-encryption-cost`` skips it.

    .venv/bin/python benchmarks/bench_ingest.py [--n 500] [--rounds 3] [--senders 4]
        [--listener-processes 2] [--no-metrics-cost] [--no-encryption-cost] [--no-dcmtk] [--py-spy DIR [--py-spy-idle]]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import emit  # benchmarks/ is on sys.path when run as a script; puts the root there

from benchmarks.harness.baselines import STORESCP_FSYNC_OPTIONS, STORESCP_OPTIONS, ReceiverRun, receiver_processes
from benchmarks.harness.load import send_storescu, send_storescu_all
from synthetic.synthetic_dicom import make_ct_series, save_study

BARE, OURS, OFF, DCMTK = "bare_scp", "pacsai_listener", "pacsai_listener_no_metrics", "dcmtk_storescp"
CLEAR = "pacsai_listener_no_encryption"
DCMTK_FSYNC = "dcmtk_storescp_fsync"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=500, help="CT instances (512x512) per receiver and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--senders", type=int, default=4, help="concurrent storescu processes (associations)")
    parser.add_argument("--listener-processes", type=int, default=2, help="listener processes on one port")
    parser.add_argument("--no-metrics-cost", dest="metrics_cost", action="store_false")
    parser.add_argument("--no-encryption-cost", dest="encryption_cost", action="store_false")
    parser.add_argument("--no-dcmtk", dest="dcmtk", action="store_false", help="skip storescp")
    parser.add_argument(
        "--py-spy",
        type=Path,
        default=None,
        help="profile every listener process (one-process and x P variants; py-spy) into DIR",
    )
    parser.add_argument(
        "--py-spy-idle", action="store_true", help="with --py-spy: every thread, idle ones too (not only GIL holders)"
    )
    args = parser.parse_args()
    many = f"{OURS}_x{args.listener_processes}"
    names = [BARE, OURS] + ([OFF] if args.metrics_cost else []) + ([CLEAR] if args.encryption_cost else [])
    names += [many] + ([DCMTK, DCMTK_FSYNC] if args.dcmtk else [])
    ray_address = None
    if args.metrics_cost:
        import ray

        ray.init(num_cpus=1, include_dashboard=False, logging_level="WARNING")
        ray_address = ray.get_runtime_context().gcs_address
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        root = Path(tmp)
        files = save_study(make_ct_series(seed=7, n_slices=args.n, rows=512, cols=512), root / "src")
        warm = save_study(make_ct_series(seed=8, n_slices=1, rows=512, cols=512), root / "warm")
        rates: dict[str, list[float]] = {name: [] for name in names}
        groups: dict[str, list[float]] = {OURS: [], many: []}
        splits: list[list[int]] = []  # instances per listener process of the x P variant, per round
        cpu_ms: dict[str, list[float]] = {}  # receiver CPU per instance, all its processes
        for rnd in range(args.rounds):
            # Rotate which receiver goes first, so drift on a shared machine hits each.
            order = names[rnd % len(names) :] + names[: rnd % len(names)]
            for name in order:
                profile = args.py_spy / f"{name}-round{rnd}.txt" if args.py_spy and name in (OURS, many) else None
                seconds, run = _measure(name, args, (warm, files), root / f"{name}{rnd}", ray_address, profile)
                rates[name].append(args.n / seconds)
                if (group := run.mean_group()) is not None and name in groups:
                    groups[name].append(group)
                if name == many:
                    splits.append(run.split())
                if (cpu := run.cpu_s()) is not None:
                    cpu_ms.setdefault(name, []).append(1000 * cpu / args.n)
                cpu_ms.setdefault(f"{name}_senders", []).append(1000 * run.senders_cpu_s / args.n)
            emit(_round_line(rnd, args, names, rates, many) | {f"{many}_split": splits[-1]})
        summary = _summary_line(args, names, rates, groups, many)
        summary |= {f"{name}_cpu_ms_per_inst": round(statistics.median(v), 3) for name, v in cpu_ms.items()}
        summary[f"{many}_splits"] = splits
        emit(summary)


def _measure(
    name: str,
    args: argparse.Namespace,
    sent: tuple[list[Path], list[Path]],
    workdir: Path,
    ray: str | None,
    profile: Path | None,
) -> tuple[float, ReceiverRun]:
    """Seconds for the senders to store the files into a fresh receiver ``name`` (after one
    untimed instance of another study, so no receiver's one-time costs - imports, first
    statements - are timed), and the receiver's run (CPU time, group commit sizes)."""
    warm, files = sent
    kind = OURS if name.startswith(OURS) else name
    processes = args.listener_processes if name.endswith(f"_x{args.listener_processes}") else 1
    parts = [files[k :: args.senders] for k in range(args.senders)]
    spies: list[Any] = []
    metrics, address = name != OFF, ray if kind == OURS else None
    sealed = name != CLEAR
    with receiver_processes(kind, workdir, processes, metrics=metrics, ray_address=address, encryption=sealed) as run:
        send_storescu(warm, run.port)
        if profile is not None:
            profile.parent.mkdir(parents=True, exist_ok=True)
            spies = run.profile(profile, gil=not args.py_spy_idle)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        send_storescu_all([(part, run.port) for part in parts], args.senders)
        seconds = time.perf_counter() - started
        spent = resource.getrusage(resource.RUSAGE_CHILDREN)  # only the storescu senders ended meanwhile
        run.senders_cpu_s = spent.ru_utime + spent.ru_stime - children.ru_utime - children.ru_stime
    for spy in spies:
        spy.wait(60)
    return seconds, run


def _round_line(
    rnd: int, args: argparse.Namespace, names: list[str], rates: dict[str, list[float]], many: str
) -> dict[str, Any]:
    line: dict[str, Any] = {"name": "ingest", "variant": "round", "round": rnd, "n": args.n, "senders": args.senders}
    line |= {f"{name}_inst_per_s": round(rates[name][-1], 1) for name in names}
    line["ratio"] = round(rates[OURS][-1] / rates[BARE][-1], 3)
    if DCMTK in rates:
        line["ratio_vs_dcmtk"] = round(rates[many][-1] / rates[DCMTK][-1], 3)
        line["ratio_vs_dcmtk_fsync"] = round(rates[many][-1] / rates[DCMTK_FSYNC][-1], 3)
    return line


def _paired(a: list[float], b: list[float]) -> float:
    return round(statistics.median(x / y for x, y in zip(a, b, strict=True)), 3)


def _summary_line(
    args: argparse.Namespace,
    names: list[str],
    rates: dict[str, list[float]],
    groups: dict[str, list[float]],
    many: str,
) -> dict[str, Any]:
    med = {name: statistics.median(rates[name]) for name in names}
    line: dict[str, Any] = {"name": "ingest", "variant": "summary", "n": args.n, "rounds": args.rounds}
    line |= {"senders": args.senders, "listener_processes": args.listener_processes}
    line |= {f"{name}_inst_per_s": round(med[name], 1) for name in names}
    line |= {
        "ratio": round(med[OURS] / med[BARE], 3),
        "paired_ratio_median": _paired(rates[OURS], rates[BARE]),
        "p50_ms": round(1000 / med[OURS], 2),
        "goal": ">= 1.0",
        f"{many}_to_bare_ratio": round(med[many] / med[BARE], 3),
    }
    line |= {f"{name}_mean_group": round(statistics.median(g), 2) for name, g in groups.items() if g}
    if DCMTK in med:
        line |= {
            "ratio_vs_dcmtk": round(med[many] / med[DCMTK], 3),
            "paired_ratio_vs_dcmtk_median": _paired(rates[many], rates[DCMTK]),
            "goal_vs_dcmtk": ">= 0.6",
            "ratio_vs_dcmtk_fsync": round(med[many] / med[DCMTK_FSYNC], 3),
            "bare_to_dcmtk_ratio": round(med[BARE] / med[DCMTK], 3),
            "dcmtk_fsync": False,
            "dcmtk_options": " ".join(STORESCP_OPTIONS),
            "dcmtk_fsync_options": " ".join(STORESCP_OPTIONS + STORESCP_FSYNC_OPTIONS),
        }
    return line | _costs(med, rates)


def _costs(med: dict[str, float], rates: dict[str, list[float]]) -> dict[str, Any]:
    """What metrics and encryption at rest cost: paired within each round (as
    paired_ratio_median: drift between rounds on a shared machine is larger than the effect
    measured), and from the medians."""
    line: dict[str, Any] = {}
    if OFF in med:
        line |= {
            "metrics_overhead": round(
                1 - statistics.median(o / n for o, n in zip(rates[OURS], rates[OFF], strict=True)), 4
            ),
            "metrics_overhead_of_medians": round(1 - med[OURS] / med[OFF], 4),
            "metrics_goal": "< 0.03",
        }
    if CLEAR in med:
        line |= {
            "encryption_cost": round(
                1 - statistics.median(o / c for o, c in zip(rates[OURS], rates[CLEAR], strict=True)), 4
            ),
            "encryption_cost_of_medians": round(1 - med[OURS] / med[CLEAR], 4),
            "encryption_goal": "< 0.10",
        }
    return line


if __name__ == "__main__":
    main()
