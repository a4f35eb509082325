"""What every benchmark prints: one JSON line with the machine and commit, and its percentiles.

The scripts used to carry their own percentile each; the variants differ on small samples, and
the numbers already quoted in DESIGN.md and README.md came from them, so each method stays
available by name (``method``) and each script keeps the one it had.
"""

from __future__ import annotations

import functools
import json
import math
import os
import platform
import statistics
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

__all__ = ["Method", "ROOT", "cdf", "commit", "device", "emit", "percentile", "percentiles", "process_cpu_s"]

ROOT = Path(__file__).resolve().parents[2]
"""The repository root."""

Method = Literal["inclusive", "exclusive", "nearest", "rounded"]
"""How a percentile is read from a sample:

- ``inclusive``: linear between closest ranks, the sample's ends as 0 and 100 (numpy's default,
  ``statistics.quantiles(method="inclusive")``);
- ``exclusive``: ``statistics.quantiles``'s default (needs two values);
- ``nearest``: ``sorted[min(n - 1, int(q/100 * n))]``;
- ``rounded``: ``sorted[round(q/100 * (n - 1))]``.
"""


@functools.cache
def commit() -> str:
    """The git commit (short) when this process first asked, or ``unknown``: every line of one
    run names the same commit even if the tree moves on meanwhile."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False, cwd=ROOT
        )
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def device() -> str:
    """What ran the benchmark: CPU count and model, or the GPU name."""
    try:
        import torch

        if torch.cuda.is_available():
            return f"cuda:{torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return f"cpu:{os.cpu_count()}x {platform.processor() or platform.machine()}"


def process_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system) process ``pid`` has spent so far; ``None``: gone, or no
    ``/proc`` (Linux only)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def emit(record: dict[str, Any]) -> None:
    """Print one JSON line with the device and commit added."""
    print(json.dumps({**record, "device": device(), "commit": commit()}), flush=True)


def percentile(values: Sequence[float], q: float, method: Method = "inclusive") -> float:
    """The ``q``-th percentile (0-100) of ``values``.

    Raises:
        ValueError: ``values`` is empty, or ``q`` is outside [0, 100].

    >>> percentile([1.0, 2.0, 3.0, 4.0], 50)
    2.5
    >>> percentile([1.0, 2.0, 3.0, 4.0], 50, "nearest")
    3.0
    """
    if not values:
        raise ValueError("percentile of no values; expected at least one")
    if not 0 <= q <= 100:
        raise ValueError(f"Got q={q}; expected 0 <= q <= 100")
    ordered = sorted(values)
    n = len(ordered)
    if n == 1:
        return float(ordered[0])
    if method == "nearest":
        return float(ordered[min(n - 1, int(q / 100 * n))])
    if method == "rounded":
        return float(ordered[min(n - 1, int(round(q / 100 * (n - 1))))])
    if method == "exclusive":
        if q in (0, 100) or not float(q).is_integer():
            raise ValueError(f"Got q={q} for the exclusive method; expected an integer in 1..99")
        return float(statistics.quantiles(ordered, n=100)[int(q) - 1])
    rank = q / 100 * (n - 1)
    low = math.floor(rank)
    high = min(low + 1, n - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (rank - low))


def percentiles(values: Sequence[float], qs: Sequence[float] = (50, 95, 99), scale: float = 1.0) -> dict[str, float]:
    """``{"p50": ..., "p95": ..., "p99": ...}`` (inclusive method), each times ``scale``, rounded
    to 4 decimals; empty when there are no values."""
    if not values:
        return {}
    return {f"p{q:g}": round(scale * percentile(values, q), 4) for q in qs}


def cdf(values: Sequence[float]) -> tuple[list[float], list[float]]:
    """The empirical CDF: sorted values and, for each, the fraction of values at or below it.

    >>> cdf([3.0, 1.0, 2.0, 2.0])
    ([1.0, 2.0, 2.0, 3.0], [0.25, 0.5, 0.75, 1.0])
    """
    ordered = sorted(float(v) for v in values)
    n = len(ordered)
    return ordered, [(k + 1) / n for k in range(n)]
