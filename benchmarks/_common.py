"""Shared bits of the benchmark scripts: the JSON line format and the machine description."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from typing import Any

__all__ = ["commit", "device", "emit"]


def commit() -> str:
    """The current git commit (short), or ``unknown``."""
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
