"""Audit trail cost of signing (issue 13): appends and verification, signed against unsigned.

On a SQLite ledger (chained and signed inside the appending transaction, as a stage does),
one thread appends ``--n`` transactions of ``--batch`` events. The baseline, in the same run,
alternating rounds: the same appends with signing replaced by nothing (the unsigned chain as it
was). Then the whole trail is verified three ways: hashes only (the old check), every
signature (``pacsai audit verify``), and the auditor's periodic round (signatures only after
the last verified entry). One JSON line: ``name``, ``events_per_s``, ``bare_events_per_s``,
``ratio``, ``verify_hash_per_s``, ``verify_signed_per_s``, ``verify_incremental_s``.

    .venv/bin/python benchmarks/bench_audit.py [--n 2000] [--batch 3] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from _common import emit  # benchmarks/ is on sys.path when run as a script; puts the root there

from core.audit import AuditEvent, check_chain
from core.config import StorageConfig
from core.types import AuditEventType
from state.ledger import Ledger, audit, open_ledger


class _NoSigner:
    """The baseline: entries chained as before issue 13, with no signature."""

    key_id = None

    def sign(self, seq: int, digest: str) -> None:
        return None


def _append(ledger: Ledger, n: int, batch: int) -> float:
    t0 = time.perf_counter()
    for k in range(n):
        events = [AuditEvent(AuditEventType.JOB_RETRY, "stage:bench", f"1.2.{k}", job_id=k) for _ in range(batch)]
        ledger.audit.append(events, 1000.0 + k)
    return time.perf_counter() - t0


def _round(root: Path, n: int, batch: int, signed: bool) -> tuple[float, Ledger]:
    ledger = open_ledger(StorageConfig(var_dir=str(root)))
    seal = ledger.audit.seal
    if not signed:
        audit.use_seal(replace(seal, signer=_NoSigner()))  # type: ignore[arg-type]
    try:
        return n * batch / _append(ledger, n, batch), ledger
    finally:
        audit.use_seal(seal)


def _verify_rates(ledger: Ledger) -> dict[str, float]:
    log = ledger.audit
    entries = list(log._stored())
    t0 = time.perf_counter()
    assert check_chain(entries).broken is None
    t1 = time.perf_counter()
    report = check_chain(entries, log.seal.keys)
    t2 = time.perf_counter()
    assert report.broken is None, report.broken
    check_chain(entries, log.seal.keys, trusted=(report.last_seq, report.last_hash))
    t3 = time.perf_counter()
    return {
        "verify_hash_per_s": round(len(entries) / (t1 - t0), 1),
        "verify_signed_per_s": round(len(entries) / (t2 - t1), 1),
        "verify_incremental_s": round(t3 - t2, 4),
        "entries": len(entries),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="transactions per round")
    parser.add_argument("--batch", type=int, default=3, help="events per transaction")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (median reported)")
    args = parser.parse_args()
    signed, bare, last = [], [], None
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for is_signed in (r % 2 == 0, r % 2 != 0):  # alternate which goes first
                rate, ledger = _round(Path(tmp) / f"{r}-{is_signed}", args.n, args.batch, is_signed)
                (signed if is_signed else bare).append(rate)
                if is_signed:
                    last = ledger
                else:
                    ledger.close()
        assert last is not None
        rates = _verify_rates(last)
        last.close()
    emit(
        {
            "name": "audit",
            "backend": "sqlite",
            "n": args.n,
            "batch": args.batch,
            "rounds": args.rounds,
            "events_per_s": round(statistics.median(signed), 1),
            "bare_events_per_s": round(statistics.median(bare), 1),
            "ratio": round(statistics.median(signed) / statistics.median(bare), 3),
            **rates,
        }
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
