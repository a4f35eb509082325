"""Recording the catalogue's metrics (``core.metrics``) with Ray's metrics API.

Ray's ``ray.util.metrics`` sends each worker's values to its node's metrics agent, which serves
them on the node's Prometheus endpoint (``metrics.export_port``): one scrape per node sees every
actor and replica there, and a cluster is scraped node by node. Metric objects are made on first
use, once per process. With ``PACSAI_METRICS=0`` in a process's environment (the pipeline sets
it in its actors' environment when ``metrics.enabled`` is false) every call is a no-op, so the
cost of the metrics can be measured against none.

Recording never raises into the pipeline: a metric that cannot be recorded is logged once and
dropped.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from core.metrics import METRICS, MetricKind

__all__ = ["ENV", "Recorder", "recorder"]

logger = logging.getLogger(__name__)

ENV = "PACSAI_METRICS"
"""Set to ``0`` to switch recording off in a process (the pipeline's actors get it from config)."""


class Recorder:
    """This process's metric objects, made on first use from the catalogue."""

    def __init__(self, enabled: bool | None = None) -> None:
        self._enabled = enabled
        self._objects: dict[str, Any] = {}
        self._broken: set[str] = set()
        self._lock = threading.Lock()

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        """Ray pickles an actor class's methods by value with the globals they use: a recorder
        travels as a reference to the receiving process's own recorder."""
        return _process_recorder, ()

    @property
    def enabled(self) -> bool:
        """Whether values are recorded (``PACSAI_METRICS`` unless set at construction)."""
        if self._enabled is None:
            self._enabled = os.environ.get(ENV, "1") != "0"
        return self._enabled

    def _metric(self, name: str) -> Any:
        obj = self._objects.get(name)
        if obj is not None or name in self._broken:
            return obj
        with self._lock:
            obj = self._objects.get(name)
            if obj is None and name not in self._broken:
                try:
                    obj = self._objects[name] = _make(name)
                except Exception:  # Ray not initialised in this process, or a bad spec: never fatal
                    logger.warning("metric %s cannot be recorded here", name, exc_info=True)
                    self._broken.add(name)
        return obj

    def switch(self, enabled: bool) -> None:
        """Turn recording on or off in this process from now on (benchmarks compare both)."""
        self._enabled = enabled

    def inc(self, name: str, value: float = 1.0, **tags: str) -> None:
        """Add ``value`` to a counter."""
        if self.enabled and (m := self._metric(name)) is not None:
            m.inc(value, tags=tags or None)

    def set(self, name: str, value: float, **tags: str) -> None:
        """Set a gauge."""
        if self.enabled and (m := self._metric(name)) is not None:
            m.set(value, tags=tags or None)

    def observe(self, name: str, value: float, **tags: str) -> None:
        """Record one observation in a histogram."""
        if self.enabled and (m := self._metric(name)) is not None:
            m.observe(value, tags=tags or None)


def _make(name: str) -> Any:
    from ray.util import metrics  # only where recording is on and Ray runs

    spec = METRICS[name]
    if spec.kind is MetricKind.COUNTER:
        return metrics.Counter(name, spec.help, tag_keys=spec.labels)
    if spec.kind is MetricKind.GAUGE:
        return metrics.Gauge(name, spec.help, tag_keys=spec.labels)
    return metrics.Histogram(name, spec.help, boundaries=list(spec.buckets), tag_keys=spec.labels)


recorder = Recorder()
"""The process's recorder."""


def _process_recorder() -> Recorder:
    return recorder
