"""``pacsai metrics export``: the success measures (issue 12) as one Parquet file.

One row per model version and month (``core.success_metrics.MonthlyMeasures``), computed from
the ledger (``Ledger.success``) when the command runs, typed columns, a rate that measured
nothing is null. The export is audited (``metrics_exported``: who, rows, from when, where).
It needs no Ray and no running service: the ledger is read directly. Nothing in the file
names a patient or a study: model versions, months, counts, rates and seconds only.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import time
from dataclasses import asdict
from pathlib import Path

from core.errors import ConfigError
from core.success_metrics import MonthlyMeasures
from state.ledger.success import month_start

__all__ = ["MEASURE_COLUMNS", "cmd_metrics_export", "metrics_parser", "write_measures"]

logger = logging.getLogger(__name__)

_EXAMPLE = "pacsai metrics export --out /data/reports/ai-success.parquet --since 2026-01"

MEASURE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("model_version", "string"),
    ("month", "string"),
    ("studies_with_results", "int64"),
    ("utilisation", "float64"),
    ("findings_reviewed", "int64"),
    ("false_positive_rate", "float64"),
    ("critical_sensitivity", "float64"),
    ("agreement_rate", "float64"),
    ("turnaround_archive_to_sr_p50_s", "float64"),
    ("turnaround_archive_to_sr_p90_s", "float64"),
    ("turnaround_sr_to_review_p50_s", "float64"),
    ("uptime", "float64"),
)
"""The file's columns and their Arrow types, in order (every ``MonthlyMeasures`` field)."""


def metrics_parser(p: argparse.ArgumentParser) -> None:
    """Add ``export`` under ``pacsai metrics``."""
    p.epilog = f"Example:\n  {_EXAMPLE}"
    sub = p.add_subparsers(dest="metrics_command", required=True)
    ex = sub.add_parser(
        "export", help="success measures per model version and month, as Parquet", epilog=f"Example:\n  {_EXAMPLE}"
    )
    ex.set_defaults(func=cmd_metrics_export)
    ex.add_argument("--config", default="configs/default.yaml", help="config YAML file")
    ex.add_argument("--out", required=True, help="the Parquet file to write (replaced if it exists)")
    ex.add_argument("--since", help="first month, YYYY-MM (UTC; default: everything)")
    ex.add_argument("--user", default=getpass.getuser(), help="who exports (audited)")


def write_measures(rows: list[MonthlyMeasures], path: Path) -> None:
    """Write the rows as Parquet with ``MEASURE_COLUMNS``' types (``None`` as null)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64()}
    schema = pa.schema([pa.field(name, types[kind], nullable=kind == "float64") for name, kind in MEASURE_COLUMNS])
    dicts = [asdict(r) for r in rows]
    columns = {name: [d[name] for d in dicts] for name, _ in MEASURE_COLUMNS}
    tmp = path.with_name(path.name + ".part")
    pq.write_table(pa.table(columns, schema=schema), tmp)
    tmp.replace(path)  # a reader never sees half a file


def cmd_metrics_export(args: argparse.Namespace) -> int:
    """Compute the measures from the ledger, write them, audit the export.

    Raises:
        ConfigError: The config or ``--since`` is invalid.
    """
    from actors.adapters.logs import LogSettings, install
    from actors.config_file import load_config
    from state.ledger import open_ledger

    try:  # a bad month is a usage error, found before any I/O
        since = month_start(args.since) if args.since else None
    except ValueError as exc:
        raise ConfigError("arguments", [f"--since: {exc}"]) from None
    cfg = load_config(args.config)
    install(LogSettings.from_config(cfg.logging, cfg.storage, verbose=getattr(args, "verbose", False)))
    out = Path(args.out)
    ledger = open_ledger(cfg.storage)
    try:
        rows = ledger.success.monthly(since)
        write_measures(rows, out)
        ledger.success.record_export(f"user:{args.user}", len(rows), since, str(out), time.time())
    finally:
        ledger.close()
    logger.info("success measures exported: %d row(s) to %s", len(rows), out)
    print(f"exported {len(rows)} row(s) (model version x month) to {out}")
    return 0
