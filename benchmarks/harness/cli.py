"""``pacsai bench``: load the whole pipeline, read its spans from the ledger, and report.

Self-contained: a private Orthanc as the PACS and the pipeline on a local Ray in this process
(as ``make demo``), on a temporary var dir, with ``--config`` (default ``configs/test.yaml``:
short assembly timers) narrowed to the model families the ``--mix`` routes to. In order:

1. build every study of the run (seeded; ``--mix``) before any clock starts;
2. same-run baselines (``--no-baseline`` skips): the same studies, sent the same way, to a bare
   pynetdicom SCP that only writes and fsyncs, and to our listener alone;
3. start Orthanc and the pipeline; one untimed warm-up study per kind (``--no-warmup`` skips);
4. send the studies over ``--associations`` concurrent associations (one per study, as a
   modality opens them) at ``--rate`` studies/s or as fast as possible, or by STOW-RS
   (``--transport stowrs``; an ``api`` section on loopback is added when the config has none),
   sampling queue depth and Serve replicas every second, until every study's work has ended;
5. write ``DIR/spans.parquet`` (one row per job and stage, from the audit trail),
   ``DIR/summary.json`` and ``DIR/report.png``.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.harness import baselines as baseline_runs
from benchmarks.harness.load import DEFAULT_MIX, KINDS, LoadGenerator, SendRecord, Study, build_studies, parse_mix, plan
from benchmarks.harness.report import plot, summarise, write_summary
from benchmarks.harness.sampler import Sampler, serve_replicas
from benchmarks.harness.spans import read_trails, send_spans, stage_spans, to_table, write_parquet
from benchmarks.harness.stack import DEFAULT_CONFIG, Stack, aim, load_raw, only_families, running

__all__ = ["build_parser", "main", "register", "run"]

logger = logging.getLogger(__name__)

EXAMPLE = "Example: pacsai bench --studies 200 --out /tmp/bench200 --associations 4 --mix cxr=6,headct:24=2,fracture=2"
TERMINAL = frozenset({"delivered", "skipped", "quarantined", "dead"})


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--studies", type=int, default=200, help="studies to send (default 200)")
    p.add_argument("--out", type=Path, required=True, help="directory for spans.parquet, report.png, summary.json")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="config YAML (default configs/test.yaml)")
    p.add_argument("--associations", type=int, default=4, help="concurrent associations / connections (default 4)")
    p.add_argument("--rate", type=float, default=None, help="target studies/s (default: as fast as possible)")
    p.add_argument("--transport", choices=["dimse", "stowrs"], default="dimse", help="C-STORE or STOW-RS")
    p.add_argument("--mix", default=DEFAULT_MIX, help=f"kind[:size][=weight],...; kinds: {', '.join(KINDS)}")
    p.add_argument("--seed", type=int, default=20_000, help="seed of the mix draw and of the studies")
    p.add_argument("--no-baseline", action="store_true", help="skip the bare-SCP and listener baselines")
    p.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up study per kind")
    p.add_argument("--all-models", action="store_true", help="deploy every model of the config, not only the mix's")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for the studies' work to end")


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``bench`` sub-command (the ``pacsai.commands`` entry point)."""
    p = subparsers.add_parser(
        "bench",
        help="load the pipeline and report throughput, per-stage latency, queues and replicas",
        description=__doc__,
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_arguments(p)
    p.set_defaults(func=run)
    return p


def build_parser() -> argparse.ArgumentParser:
    """A parser with only ``bench`` (``python -m benchmarks.harness.cli bench ...``)."""
    parser = argparse.ArgumentParser(prog="pacsai")
    register(parser.add_subparsers(dest="command", required=True))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``bench`` without the rest of ``pacsai``; return the exit status."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return int(args.func(args))


def _config(args: argparse.Namespace, families: set[str], work: Path) -> Any:
    def make(port: int, orthanc: Any) -> dict[str, Any]:
        raw = load_raw(args.config)
        if not args.all_models:
            raw = only_families(raw, families)
        if args.transport == "stowrs" and not raw.get("api"):
            from demo.orthanc import free_port

            raw["api"] = {"host": "127.0.0.1", "port": free_port(), "allow_plaintext": True}
        return aim(raw, work / "var", port, orthanc)

    return make


def _generator(stack: Stack, args: argparse.Namespace, **kw: Any) -> LoadGenerator:
    gen = LoadGenerator(port=stack.pipeline.listener_port(), called_ae=stack.cfg.listener.ae_title, **kw)
    if args.transport == "stowrs":
        from api.auth import issue_token

        text, _ = issue_token(stack.ledger.tokens, "bench", ["ingest", "read"], None, "bench", time.time())
        gen.stow_url = f"{stack.pipeline.api_url()}/dicomweb/studies"
        gen.headers = {"Authorization": f"Bearer {text}"}
    return gen


def _finished(stack: Stack, uids: set[str]) -> set[str]:
    """The studies whose latest job is in a terminal state."""
    with stack.ledger.db.read() as tx:
        rows = tx.all("SELECT study_uid, state, version FROM jobs")
    latest: dict[str, tuple[int, str]] = {}
    for r in rows:
        if r["study_uid"] in uids and int(r["version"]) >= latest.get(r["study_uid"], (0, ""))[0]:
            latest[r["study_uid"]] = (int(r["version"]), str(r["state"]))
    return {uid for uid, (_, state) in latest.items() if state in TERMINAL}


def _warm_up(stack: Stack, args: argparse.Namespace, studies: list[Study]) -> float:
    """Send one study per kind and wait for them: first-job costs stay out of the run."""
    began = time.monotonic()
    records = _generator(stack, args, associations=1).run(studies)
    uids = {r.study_uid for r in records if r.ok}
    deadline = time.monotonic() + 300
    while _finished(stack, uids) != uids and time.monotonic() < deadline:
        time.sleep(0.5)
    return round(time.monotonic() - began, 2)


def _drive(stack: Stack, args: argparse.Namespace, studies: list[Study]) -> list[SendRecord]:
    """Send the studies on a thread while a progress bar follows the ledger; wait for the end."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    uids = {s.study_uid for s in studies}
    records: list[SendRecord] = []
    columns = (TextColumn("{task.description:<9}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True)) as bar:
        sent = bar.add_task("sent", total=len(studies))
        done = bar.add_task("finished", total=len(studies))
        gen = _generator(stack, args, associations=args.associations, rate=args.rate)
        gen.on_sent = lambda _r: bar.advance(sent)
        sender = threading.Thread(target=lambda: records.extend(gen.run(studies)), name="bench-send")
        sender.start()
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            finished = _finished(stack, uids)
            bar.update(done, completed=len(finished))
            if not sender.is_alive() and finished >= {r.study_uid for r in records if r.ok}:
                break
            time.sleep(0.5)
        sender.join()
    return records


def run(args: argparse.Namespace) -> int:
    """Run the benchmark (module docstring); print where the report is and its key numbers."""
    for noisy in ("pynetdicom", "ray", "ray.serve", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    mix = parse_mix(args.mix)
    entries = plan(mix, args.studies, args.seed)
    print(f"bench: building {args.studies} studies ({args.mix})", flush=True)
    studies = build_studies(entries, first_seed=args.seed + 10_000)
    warm = (
        [] if args.no_warmup else build_studies(list({e.kind: e for e in mix}.values()), first_seed=args.seed + 90_000)
    )
    baselines = None
    if not args.no_baseline:
        print(f"bench: baselines (bare fsync SCP, listener alone) over {args.associations} associations", flush=True)
        baselines = baseline_runs.ingest_baselines(studies, args.associations, args.rate)
    families = {KINDS[e.kind].family for e in mix} - {""}
    with (
        tempfile.TemporaryDirectory(prefix="pacsai-bench-") as tmp,
        running(Path(tmp), _config(args, families, Path(tmp))) as stack,
    ):
        print(
            f"bench: pipeline up in {stack.start_s:.1f} s (models: {', '.join(sorted(stack.cfg.models))})", flush=True
        )
        warm_s = _warm_up(stack, args, warm) if warm else 0.0
        sampler_ledger = _ledger(stack)
        sampler = Sampler(lambda: dict(sampler_ledger.status.report(time.time()).jobs), serve_replicas).start()
        try:
            records = _drive(stack, args, studies)
        finally:
            samples = sampler.stop()
            sampler_ledger.close()
        trails = read_trails(stack.ledger, [r.study_uid for r in records])
        spans = send_spans(records) + [s for t in trails for s in stage_spans(t)]
        settings = _settings(args, stack, warm_s)
    return _write(args.out, records, spans, samples, baselines, settings)


def _ledger(stack: Stack) -> Any:
    from state.ledger import open_ledger

    return open_ledger(stack.cfg.storage, stack.pipeline.layout)


def _settings(args: argparse.Namespace, stack: Stack, warm_s: float) -> dict[str, Any]:
    return {
        "config": str(args.config),
        "models": sorted(stack.cfg.models),
        "associations": args.associations,
        "rate": args.rate,
        "transport": args.transport,
        "mix": args.mix,
        "seed": args.seed,
        "stack_start_s": round(stack.start_s, 2),
        "warm_up_s": warm_s,
        "quiet_period_s": stack.cfg.assembly.quiet_period_s,
    }


def _write(
    out: Path, records: list[SendRecord], spans: list[Any], samples: list[Any], baselines: Any, settings: dict[str, Any]
) -> int:
    out.mkdir(parents=True, exist_ok=True)
    write_parquet(to_table(spans), out / "spans.parquet")
    summary = summarise(records, spans, samples, baselines, settings)
    write_summary(summary, out / "summary.json")
    plot(records, spans, samples, out / "report.png", f"pacsai bench: {summary['studies']} studies, {settings['mix']}")
    print(f"bench: wrote {out / 'summary.json'}, {out / 'spans.parquet'}, {out / 'report.png'}")
    a2s = summary["archive_to_sr_s"]
    print(
        f"bench: {summary['studies_finished']}/{summary['studies']} studies in {summary['duration_s']:.1f} s, "
        f"{summary['throughput_studies_per_s']:.3f} studies/s; archive-to-SR p50 {a2s.get('p50', float('nan')):.2f} s "
        f"p95 {a2s.get('p95', float('nan')):.2f} s; final states {summary['final_states']}"
    )
    failed = summary["studies"] - summary["studies_sent_ok"]
    return 0 if failed == 0 and summary["studies_finished"] == summary["studies"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
