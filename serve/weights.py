"""Every weights file of the models a start will deploy, checked before Ray starts.

``build_app`` checks each file too (``models.registry.resolve_weights``), but only after Ray and
the listeners are up: a wrong or missing file then costs seconds before the error. ``pacsai up``
calls ``check_weights`` first; it imports neither torch nor Ray (``models.weights``).
"""

from __future__ import annotations

from core.config import AppConfig
from models.weights import resolve_weights

__all__ = ["check_weights"]


def check_weights(cfg: AppConfig) -> int:
    """Check every version's weights file of every configured model family.

    Returns:
        How many files were checked.

    Raises:
        ModelWeightsError: The first file that is missing or whose sha256 does not match (named).
    """
    entries = [entry for family in sorted(cfg.models) for entry in cfg.models[family].all_versions().values()]
    for entry in entries:
        resolve_weights(entry)
    return len(entries)
