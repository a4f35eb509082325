"""The system under test on this machine: a private Orthanc as the PACS and the pipeline on a local Ray.

:func:`load_raw` reads a config YAML with model weight paths made absolute (the benchmark runs
from anywhere); :func:`aim` points a raw config at a var dir, a listener port and the Orthanc;
:func:`running` starts Orthanc, then the pipeline (as ``make demo`` does), opens the ledger, and
stops everything in reverse order afterwards, Ray included when it started it.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from actors.pipeline import Pipeline
from benchmarks.harness.record import ROOT
from core.config import AppConfig, parse_config
from demo.orthanc import OrthancProcess, free_port
from state.ledger import Ledger, open_ledger

__all__ = ["Stack", "aim", "load_raw", "only_families", "running"]

DEFAULT_CONFIG = ROOT / "configs" / "test.yaml"
"""Short assembly timers, two Ray CPUs, every model family (the benchmarks' base since issue 5)."""


def load_raw(path: Path = DEFAULT_CONFIG) -> dict[str, Any]:
    """The raw config at ``path`` with relative model weight paths resolved against the repository root."""
    raw = yaml.safe_load(Path(path).read_text())
    for entry in (raw.get("models") or {}).values():
        if "weights" in entry and not Path(entry["weights"]).is_absolute():
            entry["weights"] = str(ROOT / entry["weights"])
    return raw


def aim(raw: dict[str, Any], var: Path, port: int, pacs: OrthancProcess | None, site: str = "bench") -> dict[str, Any]:
    """A copy of ``raw`` on its own var dir, site name and listener port, delivering to ``pacs``."""
    out = copy.deepcopy(raw)
    out["site_name"] = f"{site}-{int(time.time() * 1000) % 10**8}"
    out.setdefault("storage", {})["var_dir"] = str(var)
    out.setdefault("listener", {})["port"] = port
    if pacs is not None:
        out["pacs"] = {**(out.get("pacs") or {}), "host": "127.0.0.1", "port": pacs.dicom_port, "ae_title": pacs.aet}
    return out


def only_families(raw: dict[str, Any], families: Iterable[str]) -> dict[str, Any]:
    """A copy of ``raw`` with only these model families and the routing rules that pick them
    (fewer Serve applications to start on a small machine)."""
    keep = set(families)
    out = copy.deepcopy(raw)
    out["models"] = {f: e for f, e in (out.get("models") or {}).items() if f in keep}
    routing = out.setdefault("routing", {})
    routing["rules"] = [r for r in routing.get("rules", []) if r.get("family") in keep]
    return out


@dataclass
class Stack:
    """A running PACS and pipeline, and the ledger opened in this process."""

    cfg: AppConfig
    orthanc: OrthancProcess
    pipeline: Pipeline
    ledger: Ledger
    start_s: float
    """Seconds to start Orthanc and the pipeline (models deployed, every actor healthy)."""


@contextlib.contextmanager
def running(work: Path, make_config: Callable[[int, OrthancProcess], AppConfig | dict[str, Any]]) -> Iterator[Stack]:
    """Start Orthanc (which knows our listener) and a pipeline on ``make_config(port, orthanc)``.

    Raises:
        RuntimeError: Orthanc did not start.
    """
    import ray

    began = time.monotonic()
    port = free_port()
    ours_ray = not ray.is_initialized()
    orthanc = OrthancProcess(work / "orthanc", modalities={"pacsai": ("PACSAI", "127.0.0.1", port)}).start()
    pipeline: Pipeline | None = None
    try:
        made = make_config(port, orthanc)
        cfg = made if isinstance(made, AppConfig) else parse_config(made)
        pipeline = Pipeline(cfg).start()
        ledger = open_ledger(cfg.storage, pipeline.layout)
        try:
            yield Stack(cfg, orthanc, pipeline, ledger, time.monotonic() - began)
        finally:
            ledger.close()
    finally:
        if pipeline is not None:
            pipeline.stop()
        if ours_ray and ray.is_initialized():
            ray.shutdown()
        orthanc.stop()
