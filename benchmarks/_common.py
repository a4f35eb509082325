"""Shared bits of the benchmark scripts: the JSON line format and the machine description.

Importing this module puts the repository root on ``sys.path``: the scripts run as
``benchmarks/bench_x.py`` and use ``synthetic/`` and ``demo/``, which are not installed with the
product. So every script imports ``_common`` before any of the project's packages.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["ROOT", "commit", "device", "emit"]

ROOT = Path(__file__).resolve().parents[1]
"""The repository root."""
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@functools.cache
def commit() -> str:
    """The git commit (short) when this process first asked, or ``unknown``: every line of one
    run names the same commit even if the tree moves on meanwhile."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
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


def emit(record: dict[str, Any]) -> None:
    """Print one JSON line with the device and commit added."""
    print(json.dumps({**record, "device": device(), "commit": commit()}), flush=True)
