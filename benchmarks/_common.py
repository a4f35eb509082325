"""Shared bits of the benchmark scripts: the JSON line format and the machine description.

Importing this module puts the repository root on ``sys.path``: the scripts run as
``benchmarks/bench_x.py`` and use ``synthetic/``, ``demo/`` and ``benchmarks.harness`` (where
the shared code lives: :mod:`benchmarks.harness.record`), so every script imports ``_common``
before any of the project's packages.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
"""The repository root."""
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.harness.record import commit, device, emit, percentile  # noqa: E402  (needs the root on sys.path)

__all__ = ["ROOT", "commit", "device", "emit", "percentile"]
