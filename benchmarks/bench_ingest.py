"""C-STORE ingest: our durable listener vs a bare pynetdicom SCP that only writes and fsyncs.

dcmtk ``storescu`` (TCP_NODELAY=1) sends N CT instances of 512x512 over one association to each
receiver in turn, several rounds alternating, on this machine. Our listener does the whole
durability contract (write, fsync, atomic rename, directory fsync, SQLite commit with
synchronous=FULL, sha256, header parse, audit row); the baseline does write + fsync only.
Prints one JSON line per round and receiver, then a summary line with the median ratio.

    .venv/bin/python benchmarks/bench_ingest.py [--n 500] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from _common import emit  # benchmarks/ is on sys.path when run as a script; puts the root there

from benchmarks.harness.baselines import bare_scp, standalone_listener
from benchmarks.harness.load import send_storescu
from synthetic.synthetic_dicom import make_ct_series, save_study


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        root = Path(tmp)
        files = save_study(make_ct_series(seed=7, n_slices=args.n, rows=512, cols=512), root / "src")
        rates: dict[str, list[float]] = {"bare_scp": [], "pacsai_listener": []}
        for rnd in range(args.rounds):
            # Alternate which receiver goes first, so drift on a shared machine hits both.
            order = ["bare_scp", "pacsai_listener"] if rnd % 2 == 0 else ["pacsai_listener", "bare_scp"]
            for name in order:
                rates[name].append(args.n / _measure(name, files, root / f"{name}{rnd}"))
            ratio = rates["pacsai_listener"][-1] / rates["bare_scp"][-1]
            emit(
                {
                    "name": "ingest",
                    "variant": "round",
                    "round": rnd,
                    "n": args.n,
                    "bare_scp_inst_per_s": round(rates["bare_scp"][-1], 1),
                    "pacsai_listener_inst_per_s": round(rates["pacsai_listener"][-1], 1),
                    "ratio": round(ratio, 3),
                }
            )
        bare_med = statistics.median(rates["bare_scp"])
        ours_med = statistics.median(rates["pacsai_listener"])
        paired = [o / b for o, b in zip(rates["pacsai_listener"], rates["bare_scp"], strict=True)]
        emit(
            {
                "name": "ingest",
                "variant": "summary",
                "n": args.n,
                "rounds": args.rounds,
                "bare_scp_inst_per_s": round(bare_med, 1),
                "pacsai_listener_inst_per_s": round(ours_med, 1),
                "ratio": round(ours_med / bare_med, 3),
                "paired_ratio_median": round(statistics.median(paired), 3),
                "p50_ms": round(1000 / ours_med, 2),
                "goal": ">= 0.9",
            }
        )


def _measure(name: str, files: list[Path], workdir: Path) -> float:
    """Seconds for storescu to send ``files`` into a fresh receiver of kind ``name``."""
    receiver = bare_scp(workdir) if name == "bare_scp" else standalone_listener(workdir)
    with receiver as server:
        return send_storescu(files, server.port)


if __name__ == "__main__":
    main()
