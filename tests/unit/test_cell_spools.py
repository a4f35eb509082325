"""A cell hands out only its own spool files (the cluster's cross-cell fetch)."""

from __future__ import annotations

from pathlib import Path

import pytest

from actors.adapters.cells import read_spooled


def test_a_cell_reads_its_spool_files_and_refuses_any_other_path(tmp_path: Path) -> None:
    spool = tmp_path / "cells" / "b" / "spool"
    (spool / "1.2").mkdir(parents=True)
    (spool / "1.2" / "3.dcm").write_bytes(b"DICM")
    (tmp_path / "secret").write_bytes(b"key")
    assert read_spooled(spool, [str(spool / "1.2" / "3.dcm")]) == [b"DICM"]
    with pytest.raises(PermissionError, match="not in this cell's spool"):
        read_spooled(spool, [str(spool / ".." / ".." / ".." / "secret")])
    with pytest.raises(PermissionError):
        read_spooled(spool, ["/etc/passwd"])
