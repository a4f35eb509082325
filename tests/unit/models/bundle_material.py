"""Real MONAI bundles and exported networks in a test's tmp_path: the makers of
:mod:`training.bundles` (MONAI's own tooling), and what the tests do with them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.bundles import expand_models
from core.config import ModelEntry
from training.bundles import build_network, export_onnx, make_bundle, make_exported

__all__ = ["build_network", "copy_bundle", "entry_of", "export_onnx", "make_bundle", "make_exported"]


def entry_of(raw: dict[str, Any], family: str = "opacity") -> ModelEntry:
    """The registry entry the pipeline builds from a ``models:`` item (its files read)."""
    expanded = expand_models(
        {"models": {family: raw}}, lambda f: Path(f).read_text(encoding="utf-8"), lambda f: Path(f).is_file(), "test"
    )
    return ModelEntry.model_validate(expanded["models"][family])


def copy_bundle(source: Path, target: Path, leave_out: tuple[str, ...] = ()) -> Path:
    """Copy a bundle directory (but the files named in ``leave_out``), to change a copy."""
    for path in source.rglob("*"):
        if path.is_file() and path.name not in leave_out:
            (target / path.relative_to(source)).parent.mkdir(parents=True, exist_ok=True)
            (target / path.relative_to(source)).write_bytes(path.read_bytes())
    return target
