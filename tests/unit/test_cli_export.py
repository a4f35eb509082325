"""``pacsai export deid`` arguments and key (issue 13, item 6): the parts that need no var dir."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from actors._cli_export import export_key, parse_query, write_manifest
from core.deid import ManifestRow
from core.errors import ConfigError
from core.export_config import ExportConfig
from state.layout import VarLayout


def test_a_query_names_modality_and_received_dates_and_nothing_else() -> None:
    q = parse_query("modality=CT since=2026-01-01,until=2026-01-02")
    assert (q.study_uid, q.modality, q.received_until - q.received_from) == (None, "CT", 86400.0)
    with pytest.raises(ValueError, match="expected modality=, since= or until="):
        parse_query("patient=DOE")
    with pytest.raises(ValueError):
        parse_query("since=01/02/2026")


def test_the_export_key_comes_from_the_config_and_the_demo_key_only_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    layout = VarLayout.at(tmp_path / "var")
    with pytest.raises(ConfigError, match="no export key"):
        export_key(ExportConfig(), layout)
    monkeypatch.setenv("EXPORT_KEY_T", "short")
    with pytest.raises(ConfigError, match="expected at least 32"):
        export_key(ExportConfig(key_env="EXPORT_KEY_T"), layout)
    (tmp_path / "k").write_text("f" * 40 + "\n")
    assert export_key(ExportConfig(key_file=str(tmp_path / "k")), layout) == b"f" * 40
    demo = export_key(ExportConfig(demo_key=True), layout)
    assert demo == export_key(ExportConfig(demo_key=True), layout) and len(demo) == 64  # made once, kept
    assert "Not for real patient data" in capsys.readouterr().err
    assert (layout.root / "export" / "demo-export-key").stat().st_mode & 0o077 == 0


def test_the_manifest_has_its_columns_and_types(tmp_path: Path) -> None:
    rows = [
        ManifestRow("PAT-A", "2.25.1", "2.25.2", "2.25.3", "1.2.840.10008.5.1.4.1.1.2", "CT", "20240101", False, ""),
        ManifestRow("PAT-A", "2.25.1", "2.25.2", "2.25.4", "1.2.840.10008.5.1.4.1.1.7", "OT", "", True, "burned-in"),
    ]
    write_manifest(rows, tmp_path / "m.parquet")
    table = pq.read_table(tmp_path / "m.parquet")
    assert table.column_names == [
        "patient_pseudonym",
        "study_uid",
        "series_uid",
        "sop_uid",
        "sop_class_uid",
        "modality",
        "study_date",
        "excluded",
        "reason",
    ]
    assert table.column("excluded").to_pylist() == [False, True]
