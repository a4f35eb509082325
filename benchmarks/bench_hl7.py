"""HL7 v2 over MLLP: ACK latency and throughput of our listener vs a bare python-hl7 echo.

Each variant runs as a server in its own process; this process is the client. ``n`` ADT and
ORM messages (A01 / A08 / ORM^O01, distinct control IDs, 2,000 synthetic patients) go over one
connection and over 8 connections (each connection sends its share in request/response order,
as interface engines do). Per message we measure send -> ACK received.

- ``python_hl7_echo``: python-hl7's asyncio MLLP server answering ``create_ack("AA")`` at once;
  no parsing beyond python-hl7's, no storage: the floor.
- ``python_hl7_echo_fsync``: the same, but each message is appended to a file and fsynced
  before its ACK (one fsync per message, no group commit): the durability floor of this disk.
- ``pacsai``: our listener as configured by default: the event loop frames and acknowledges;
  ``hl7.parse_workers`` processes parse, check, map to FHIR R4 (validated) and store the raw
  message and the resources in the SQLite context store (WAL, synchronous=FULL: fsync before
  every ACK), the frames that reach a worker together in one commit (at most
  ``hl7.batch_max``); plus the audit pump writing to a real ledger and the background WAL
  checkpoint.
- ``pacsai_no_validation``: the same without the fhir.resources check of each resource.
- ``pacsai_no_group_commit``: the same with ``hl7.batch_max: 1``: every message is committed
  alone (one fsync each).
- ``pacsai_inline``: the same with ``hl7.parse_workers: 0``: the event loop parses and maps,
  and the store's writer thread commits (``SqliteDatabase``'s group commit), as before issue 14.

Prints one JSON line per (variant, connections) and a summary with the ratios. Each line
carries ``cpu_ms_per_msg``: the CPU time (user + system, from ``/proc``) each part spent over the
measured messages, divided by their number: ``client`` (this process), ``listener`` (the
server's own process: its event loop, the audit pump, the checkpoint), ``deciders`` and
``committer`` (the parse workers, all of each part together); and ``cores_busy``: all of it over
the wall time. On two cores a closed loop of 8 connections is CPU-bound when ``cores_busy``
nears 2: then p50 is about 8 / throughput, and the way to a lower p99 is less CPU a message.

    .venv/bin/python benchmarks/bench_hl7.py [--n 10000] [--variants ...]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root

from _common import emit, percentile  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

from benchmarks.harness.record import process_cpu_s  # noqa: E402

START, END = b"\x0b", b"\x1c\x0d"
VARIANTS: dict[str, dict[str, Any]] = {
    "python_hl7_echo": {},
    "python_hl7_echo_fsync": {},
    "pacsai": {},  # the defaults: group commit, FHIR validation on
    "pacsai_no_validation": {"validate_resources": False},
    "pacsai_no_group_commit": {"batch_max": 1},
    "pacsai_inline": {"parse_workers": 0},
}
"""Variant -> Hl7Config overrides of our listener (the echo server is python-hl7's)."""


def messages(n: int, seed: int = 6) -> list[bytes]:
    """``n`` synthetic ADT^A01 / ADT^A08 / ORM^O01 messages with distinct control IDs."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        mrn = f"BM{rng.randrange(2000):05d}"
        stamp = "20250301103000+0100"
        pid = f"PID|1||{mrn}^^^HOSP^MR||SYNTHETIC^PATIENT{i % 97}||1970{1 + i % 12:02d}15|{'FM'[i % 2]}"
        pv1 = f"PV1|1|{'EIO'[i % 3]}|ED^BAY{i % 9}^BED{i % 4}^HOSP||||1234^SYNDOC^ANN"
        kind = rng.choice(("A01", "A08", "ORM", "ORM"))
        if kind == "ORM":
            acc = f"ACC{i:07d}"
            body = [
                f"MSH|^~\\&|RIS|HOSP|PACSAI|HOSP|{stamp}||ORM^O01^ORM_O01|B{i:07d}|P|2.5.1",
                pid,
                pv1,
                f"ORC|NW|PLC{i}^RIS|FIL{i}^PACS||SC||^^^^^{rng.choice('SAR')}||20250301102900",
                f"OBR|1|PLC{i}^RIS|FIL{i}^PACS|36554-4^XR Chest 2 Views^LN|||20250301103000"
                f"|||||||||5678^SYNREF^BOB||{acc}|RP01|SPS01||||DX|||^^^^^R"
                "||||R07.4^Chest pain^I10",
            ]
        else:
            body = [
                f"MSH|^~\\&|ADT|HOSP|PACSAI|HOSP|{stamp}||ADT^{kind}^ADT_A01|B{i:07d}|P|2.5.1",
                f"EVN|{kind}|20250301101500",
                pid,
                pv1,
            ]
        out.append(("\r".join(body) + "\r").encode())
    return out


# ------------------------------------------------------------------ servers (child processes)
def _echo_server(port_q: Any, stop: Any, journal: str | None) -> None:
    import hl7.mllp

    fd = os.open(journal, os.O_WRONLY | os.O_CREAT | os.O_APPEND) if journal else None

    async def process(reader: Any, writer: Any) -> None:
        try:
            while not writer.is_closing():
                message = await reader.readmessage()
                if fd is not None:
                    os.write(fd, str(message).encode() + b"\n")
                    os.fsync(fd)
                writer.writemessage(message.create_ack("AA"))
                await writer.drain()
        except asyncio.IncompleteReadError:
            writer.close()

    async def main() -> None:
        server = await hl7.mllp.start_hl7_server(process, host="127.0.0.1", port=0)
        port_q.put((server.sockets[0].getsockname()[1], {"listener": [os.getpid()]}))
        while not stop.is_set():
            await asyncio.sleep(0.1)
        server.close()

    asyncio.run(main())


def _pacsai_server(port_q: Any, stop: Any, root: str, overrides: dict[str, Any], stats_q: Any) -> None:
    from actors.adapters.hl7_inbox import Hl7Listener
    from core.config import Hl7Config, MllpListenerConfig, StorageConfig
    from state.context_store import open_context
    from state.ledger import open_ledger

    Hl7Listener.tune_process()  # as the Ray actor does
    cfg = Hl7Config(listener=MllpListenerConfig(port=0), **overrides)
    storage = StorageConfig(var_dir=str(root))
    ledger = open_ledger(storage)
    context = open_context(storage, writer=True, group_max=cfg.batch_max)  # as the actor does
    listener = Hl7Listener(cfg, context, ledger)
    listener.start()
    port_q.put((listener.port, {"listener": [os.getpid()], **listener.worker_pids()}))
    stop.wait()
    commits, items = listener.commit_stats()  # the listener's and its parse workers'
    stats_q.put({"commits": commits, "items": items, "counts": dict(listener.counts)})
    listener.stop()


# ------------------------------------------------------------------------------- client
async def _connection(port: int, batch: list[bytes], latencies: list[float]) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    bad = 0
    buf = b""
    for payload in batch:
        started = time.perf_counter()
        writer.write(START + payload + END)
        await writer.drain()
        while END not in buf:
            chunk = await reader.read(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            buf += chunk
        reply, buf = buf.split(END, 1)
        latencies.append((time.perf_counter() - started) * 1000.0)
        bad += b"MSA|AA|" not in reply
    writer.close()
    return bad


async def _drive(port: int, msgs: list[bytes], connections: int) -> tuple[list[float], float, int]:
    shares = [msgs[i::connections] for i in range(connections)]
    latencies: list[float] = []
    started = time.perf_counter()
    bad = await asyncio.gather(*(_connection(port, s, latencies) for s in shares))
    return latencies, time.perf_counter() - started, sum(bad)


def _cpu_by_part(parts: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds so far of this process (``client``) and of each part's processes together
    (a part with a process gone is left out: a worker was replaced meanwhile)."""
    own = os.times()
    out = {"client": own.user + own.system}
    for part, pids in parts.items():
        spent = [process_cpu_s(pid) for pid in pids]
        if pids and None not in spent:
            out[part] = sum(s for s in spent if s is not None)
    return out


def _pct(values: list[float], q: float) -> float:
    return percentile(values, 100 * q, "rounded")


def run_variant(variant: str, msgs: list[bytes], connections: int, warmup: list[bytes]) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    port_q, stats_q, stop = ctx.Queue(), ctx.Queue(), ctx.Event()
    with tempfile.TemporaryDirectory(prefix="bench-hl7-", dir=os.environ.get("BENCH_DIR")) as root:
        if variant.startswith("python_hl7_echo"):
            journal = str(Path(root) / "journal") if variant.endswith("fsync") else None
            proc = ctx.Process(target=_echo_server, args=(port_q, stop, journal))
        else:
            proc = ctx.Process(target=_pacsai_server, args=(port_q, stop, root, VARIANTS[variant], stats_q))
        proc.start()
        port, parts = port_q.get(timeout=120)
        asyncio.run(_drive(port, warmup, connections))  # imports, caches, first pages
        before = _cpu_by_part(parts)
        latencies, seconds, bad = asyncio.run(_drive(port, msgs, connections))
        after = _cpu_by_part(parts)
        stop.set()
        stats = stats_q.get(timeout=60) if variant.startswith("pacsai") else {}
        proc.join(60)
    record = {
        "name": "hl7_ack",
        "variant": variant,
        "connections": connections,
        "n": len(msgs),
        "p50_ms": round(statistics.median(latencies), 3),
        "p95_ms": round(_pct(latencies, 0.95), 3),
        "p99_ms": round(_pct(latencies, 0.99), 3),
        "max_ms": round(max(latencies), 3),
        "msgs_per_s": round(len(msgs) / seconds, 1),
        "not_aa": bad,
        "load_avg_1m": round(os.getloadavg()[0], 2),  # others share this machine's 2 cores
    }
    spent = {part: after[part] - before[part] for part in before if part in after}
    record["cpu_ms_per_msg"] = {part: round(1000.0 * s / len(msgs), 3) for part, s in spent.items()}
    record["cores_busy"] = round(sum(spent.values()) / seconds, 2)
    if stats:  # group commit at work (items include the audit pump's marks and the warmup)
        record["commits"] = stats["commits"]
        record["mean_batch"] = round(stats["items"] / max(1, stats["commits"]), 2)
    return record


def fsync_floor(directory: str | None, n: int = 300) -> dict[str, Any]:
    """How long one small write + fsync takes on this disk (the durability floor per commit)."""
    with tempfile.NamedTemporaryFile(dir=directory) as f:
        times = []
        for _ in range(n):
            f.write(b"x" * 4096)
            f.flush()
            t = time.perf_counter()
            os.fsync(f.fileno())
            times.append((time.perf_counter() - t) * 1000.0)
    return {
        "name": "hl7_ack",
        "variant": "fsync_floor",
        "n": n,
        "p50_ms": round(statistics.median(times), 3),
        "p99_ms": round(_pct(times, 0.99), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    args = parser.parse_args()
    msgs = messages(args.n)
    warmup = [m.replace(b"|B", b"|W", 1).replace(b"ACC", b"WAC") for m in messages(300, seed=99)]
    emit(fsync_floor(os.environ.get("BENCH_DIR")))
    results: dict[tuple[str, int], dict[str, Any]] = {}
    for connections in args.connections:
        for variant in args.variants:
            record = run_variant(variant, msgs, connections, warmup)
            results[(variant, connections)] = record
            emit(record)
    for connections in args.connections:
        base = results.get(("python_hl7_echo", connections))
        for name in ("pacsai", "pacsai_no_validation"):
            ours = results.get((name, connections))
            if base and ours:
                emit(
                    {
                        "name": "hl7_ack",
                        "variant": f"summary:{name}",
                        "connections": connections,
                        "n": args.n,
                        "p99_ms": ours["p99_ms"],
                        "echo_p99_ms": base["p99_ms"],
                        "throughput_ratio": round(ours["msgs_per_s"] / base["msgs_per_s"], 3),
                        "p99_ratio": round(ours["p99_ms"] / base["p99_ms"], 2),
                        "goal": "p99 < 10 ms",
                        "met": ours["p99_ms"] < 10.0,
                    }
                )


if __name__ == "__main__":
    main()
