"""OpenTelemetry tracing of one study across the actors.

A study does not travel from actor to actor by calls that could carry a trace context: each
stage leases it from the ledger. So every span of a study belongs to one trace whose id is
derived from the Study Instance UID (a keyed digest would hide nothing a UID does not already
show, and UIDs are allowed in logs): the assembler's, the router's, the inference and the
delivery spans of one study line up in one trace in any OpenTelemetry viewer, across processes
and nodes, with no state to hand on.

The pipeline hands each actor the ``tracing`` config in the environment variable
``PACSAI_TRACING`` (JSON); unset, tracing is off and ``study_span`` costs a dictionary lookup.
Spans go to an OTLP/HTTP endpoint (a collector, Jaeger, Tempo) or to a JSON-lines file that
every process appends to, one ``write`` per span.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from typing import Any

__all__ = ["ENV", "JsonLinesExporter", "study_span", "study_trace_id", "tracing_env"]

logger = logging.getLogger(__name__)

ENV = "PACSAI_TRACING"
"""The ``tracing`` config as JSON; unset: off."""

_lock = threading.Lock()
_tracer: Any = None
_configured = False


def study_trace_id(study_uid: str) -> int:
    """The 128-bit trace id of one study (the same in every process).

    >>> hex(study_trace_id("1.2.3"))[:10]
    '0x11208d0c'
    """
    return int.from_bytes(hashlib.sha256(b"pacsai-trace:" + study_uid.encode()).digest()[:16], "big") or 1


def tracing_env(exporter: str, file: str | None, otlp_endpoint: str | None) -> dict[str, str]:
    """The environment that switches tracing on in an actor's process."""
    return {ENV: json.dumps({"exporter": exporter, "file": file, "otlp_endpoint": otlp_endpoint})}


class JsonLinesExporter:
    """Appends each finished span as one JSON line to a file shared by many processes.

    One ``os.write`` of a whole line per span on an ``O_APPEND`` descriptor: lines from
    different processes never interleave.
    """

    def __init__(self, path: str) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def export(self, spans: Sequence[Any]) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        for span in spans:
            os.write(self._fd, (span.to_json(indent=None) + "\n").encode())
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def _setup(raw: str, service: str) -> Any:
    """Make this process's tracer from the ``PACSAI_TRACING`` JSON."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

    conf = json.loads(raw)
    if conf.get("exporter") == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter: SpanExporter = OTLPSpanExporter(endpoint=conf["otlp_endpoint"])
    else:
        exporter = JsonLinesExporter(conf["file"])  # type: ignore[assignment]
    provider = TracerProvider(resource=Resource.create({"service.name": "pacsai", "pacsai.process": service}))
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=500))
    import atexit

    atexit.register(provider.shutdown)
    return provider.get_tracer("pacsai")


def _get_tracer(service: str) -> Any:
    global _tracer, _configured
    if _configured:
        return _tracer
    with _lock:
        if not _configured:
            raw = os.environ.get(ENV)
            if raw:
                try:
                    _tracer = _setup(raw, service)
                except Exception:  # a bad endpoint or file: trace nothing, never stop the pipeline
                    logger.warning("tracing could not be set up; spans are dropped", exc_info=True)
            _configured = True
    return _tracer


@contextlib.contextmanager
def study_span(name: str, study_uid: str, service: str = "", **attributes: Any) -> Iterator[Any]:
    """A span in the study's trace around the body (nothing when tracing is off).

    Args:
        name: The span's name, e.g. ``stage:router``.
        study_uid: The study whose trace it joins.
        service: The process's role, for the resource (first call in a process only).
        **attributes: Span attributes (identifiers only, never patient data).
    """
    tracer = _get_tracer(service or name)
    if tracer is None:
        yield None
        return
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    trace_id = study_trace_id(study_uid)
    root = SpanContext(trace_id, (trace_id & ((1 << 64) - 1)) or 1, is_remote=True, trace_flags=TraceFlags(1))
    context = trace.set_span_in_context(NonRecordingSpan(root))
    with tracer.start_as_current_span(name, context=context) as span:
        span.set_attribute("pacsai.study_uid", study_uid)
        for key, value in attributes.items():
            span.set_attribute(f"pacsai.{key}", value)
        yield span
