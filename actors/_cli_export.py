"""``pacsai export deid``: de-identified copies of held instances for research (issue 13, item 6).

Reads what the ledger names (``--study`` or a ``--query``) from the spool, applies the
PS3.15 Annex E profile (``core.deid``) and writes ``<out>/<study>/<series>/<sop>.dcm`` under
keyed UIDs, plus ``manifest.parquet``: one row per instance with its pseudonyms, modality,
moved study date and, for an excluded image, why. Nothing identifying goes to the output, the
console or the log (UIDs printed are keyed ones).

It needs no Ray and no running service: the ledger and the spool are read directly.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import secrets
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from core.audit import AuditEvent
from core.config import AppConfig
from core.deid import Deidentifier, DeidResult, ManifestRow, MaskRegion
from core.deid_keys import DeidKeys, project_key
from core.errors import ConfigError
from core.export_config import ExportConfig
from core.types import AuditEventType
from state.layout import VarLayout
from state.ledger import open_ledger
from state.ledger.export import ExportQuery, ExportReads
from state.sealed_files import dcmread_plain

__all__ = ["cmd_export", "export_key", "export_parser", "parse_query", "verify_outputs", "write_manifest"]

logger = logging.getLogger(__name__)

_MANIFEST_COLUMNS = (
    "patient_pseudonym",
    "study_uid",
    "series_uid",
    "sop_uid",
    "sop_class_uid",
    "modality",
    "study_date",
    "excluded",
    "reason",
)
_MIN_KEY_BYTES = 32
_EXAMPLE = "pacsai export deid --study 1.2.840.99.1 --out /data/research/export-01 --project lung-ct --verify"


def export_parser(p: argparse.ArgumentParser) -> None:
    """Add ``deid`` under ``pacsai export``."""
    p.epilog = f"Example:\n  {_EXAMPLE}"
    sub = p.add_subparsers(dest="export_command", required=True)
    de = sub.add_parser(
        "deid", help="de-identified copies (PS3.15 Annex E) and a Parquet manifest", epilog=f"Example:\n  {_EXAMPLE}"
    )
    de.set_defaults(func=cmd_export)
    de.add_argument("--config", default="configs/default.yaml", help="config YAML file")
    which = de.add_mutually_exclusive_group(required=True)
    which.add_argument("--study", help="Study Instance UID: every held instance of the study")
    which.add_argument(
        "--query",
        help='filter over held instances: "modality=CT since=2026-01-01 until=2026-02-01" (received dates, UTC)',
    )
    de.add_argument("--out", required=True, help="output directory (new or empty)")
    de.add_argument("--project", help="research project (default: export.project)")
    de.add_argument("--verify", action="store_true", help="check every copy with dciodvfy; exit 1 on any error")
    de.add_argument(
        "--mask", action="store_true", help="mask burned-in images (export.mask_regions) instead of excluding"
    )


def parse_query(text: str) -> ExportQuery:
    """``modality=CT since=YYYY-MM-DD until=YYYY-MM-DD`` (any, space or comma separated).

    >>> parse_query("modality=CT, since=2026-01-01").modality
    'CT'

    Raises:
        ValueError: An unknown key or a date that does not parse.
    """
    fields: dict[str, str] = {}
    for part in text.replace(",", " ").split():
        key, _, value = part.partition("=")
        if key not in ("modality", "since", "until") or not value:
            raise ValueError(f"--query: got {part!r}; expected modality=, since= or until=")
        fields[key] = value

    def day(key: str) -> float | None:
        if key not in fields:
            return None
        return datetime.strptime(fields[key], "%Y-%m-%d").replace(tzinfo=UTC).timestamp()

    return ExportQuery(None, fields.get("modality"), day("since"), day("until"))


def export_key(cfg: ExportConfig, layout: VarLayout) -> bytes:
    """The site's export key: key_file, else key_env, else the demo key when allowed (warned).

    Raises:
        ConfigError: No key is configured and demo_key is false, or the key is too short.
    """
    if cfg.key_file:
        key = Path(cfg.key_file).read_bytes().strip()
    elif cfg.key_env and os.environ.get(cfg.key_env):
        key = os.environ[cfg.key_env].strip().encode()
    elif cfg.demo_key:
        key = _demo_key(layout.root / "export" / "demo-export-key")
    else:
        raise ConfigError(
            "export", ["key_file / key_env: no export key; set one, or demo_key: true (not for real data)"]
        )
    if len(key) < _MIN_KEY_BYTES:
        raise ConfigError("export", [f"export key: got {len(key)} bytes; expected at least {_MIN_KEY_BYTES}"])
    return key


def _demo_key(path: Path) -> bytes:
    """A generated key kept under var/ (made once): pseudonyms stay stable, protect little."""
    msg = (
        f"WARNING: export.demo_key is on: the export key is {path}, readable by anyone who can read "
        "var/; whoever has it can recompute every pseudonym. Not for real patient data."
    )
    logger.warning(msg)
    print(msg, file=sys.stderr)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return path.read_bytes().strip()


def _load(args: argparse.Namespace) -> AppConfig:
    from actors.adapters.logs import LogSettings, install
    from actors.config_file import load_config

    cfg = load_config(args.config)
    install(LogSettings.from_config(cfg.logging, cfg.storage, verbose=getattr(args, "verbose", False)))
    return cfg


def _output_dir(out: str) -> Path:
    """The output directory, created; refused when it already holds something.

    Raises:
        ConfigError: ``out`` exists and is not an empty directory.
    """
    path = Path(out)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ConfigError("arguments", [f"--out: got {out}; expected a new or empty directory"])
    path.mkdir(parents=True, exist_ok=True)
    return path


def cmd_export(args: argparse.Namespace) -> int:
    """Export de-identified copies of the selected instances with their manifest.

    Returns 0 when done (and, with ``--verify``, every copy passed dciodvfy), 1 when nothing
    was selected or a copy failed dciodvfy.
    """
    cfg = _load(args)
    try:
        query = ExportQuery(study_uid=args.study) if args.study else parse_query(args.query)
    except ValueError as exc:
        raise ConfigError("arguments", [str(exc)]) from None
    layout = VarLayout.at(cfg.storage.var_dir)
    deid = _deidentifier(cfg.export, layout, args)
    checker = shutil.which("dciodvfy") if args.verify else None
    if args.verify and checker is None:
        raise ConfigError("arguments", ["--verify: dciodvfy (dicom3tools) is not installed"])
    ledger = open_ledger(cfg.storage, layout)
    try:
        held = ExportReads(ledger.db).instances(query)
        out = _output_dir(args.out)
        done = [_export_one(deid, dcmread_plain(inst.path, ledger.keyring), out) for inst in held]
        ledger.audit.append(
            _export_events(held, [row for row, _ in done], args.project or cfg.export.project), time.time()
        )
    finally:
        ledger.close()
    rows = [row for row, _ in done]
    write_manifest(rows, out / "manifest.parquet")
    excluded = sum(r.excluded for r in rows)
    print(f"exported {len(rows) - excluded} instance(s), excluded {excluded}, to {out} (manifest.parquet)")
    problems = verify_outputs(checker, [path for _, path in done if path is not None]) if checker else []
    for line in problems:
        print(line, file=sys.stderr)
    return 0 if held and not problems else 1


def _export_events(held: list[Any], rows: list[ManifestRow], project: str) -> list[AuditEvent]:
    """One ``research_exported`` event per source study: who, which project, how many."""
    actor = f"user:{getpass.getuser()}"
    studies: dict[str, list[bool]] = {}
    for inst, row in zip(held, rows, strict=True):
        studies.setdefault(inst.study_instance_uid, []).append(row.excluded)
    return [
        AuditEvent(
            AuditEventType.RESEARCH_EXPORTED,
            actor,
            uid,
            detail={"project": project, "instances": len(flags), "excluded": sum(flags)},
        )
        for uid, flags in studies.items()
    ]


def _deidentifier(cfg: ExportConfig, layout: VarLayout, args: argparse.Namespace) -> Deidentifier:
    """The project's de-identifier: its key, the date offset range, the mask regions if masking.

    Raises:
        ConfigError: No usable export key, or masking without regions.
    """
    key = project_key(export_key(cfg, layout), args.project or cfg.project)
    masking = args.mask or cfg.burned_in == "mask"
    regions = [MaskRegion(*r) for r in cfg.mask_regions] if masking else []
    if masking and not regions:
        raise ConfigError("export", ["mask_regions: empty; masking needs the rectangles to blank"])
    return Deidentifier(DeidKeys(key, cfg.max_date_shift_days), regions)


def _export_one(deid: Deidentifier, source: Dataset, out: Path) -> tuple[ManifestRow, Path | None]:
    """De-identify one spooled instance; write the copy unless it is excluded."""
    result: DeidResult = deid.apply(source)
    row = result.row
    if result.dataset is None:
        logger.info("export: %s excluded: %s", row.sop_uid, row.reason)
        return row, None
    target = out / row.study_uid / row.series_uid / f"{row.sop_uid}.dcm"
    target.parent.mkdir(parents=True, exist_ok=True)
    result.dataset.save_as(target, enforce_file_format=True)
    return row, target


def verify_outputs(dciodvfy: str, files: list[Path]) -> list[str]:
    """Run ``dciodvfy -new`` (the IOD checker of dicom3tools) on each copy; return its error
    lines, each after the copy's (keyed) file name. Warnings are not failures."""
    problems = []
    for path in files:
        proc = subprocess.run([dciodvfy, "-new", str(path)], capture_output=True, text=True, timeout=120, check=False)
        problems += [f"dciodvfy {path.name}: {ln}" for ln in (proc.stdout + proc.stderr).splitlines() if "Error" in ln]
    print(f"dciodvfy: {len(files)} file(s) checked, {len(problems)} error(s)")
    return problems


def write_manifest(rows: list[ManifestRow], path: Path) -> None:
    """Write the manifest (Parquet): pseudonyms and non-identifying facts, one row per instance."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {
        name: [getattr(r, "patient" if name == "patient_pseudonym" else name) for r in rows]
        for name in _MANIFEST_COLUMNS
    }
    schema = pa.schema([(n, pa.bool_() if n == "excluded" else pa.string()) for n in _MANIFEST_COLUMNS])
    pq.write_table(pa.table(columns, schema=schema), path)
