"""Every API request audited: who (the principal's subject, never the token), what, the status.

Requests that change something (any method but GET/HEAD/OPTIONS) are appended before the
response leaves; the operation they performed has its own audit event in its own transaction
already (a quarantine release, a received instance). Reads are appended in batches every
``api.audit_reads_every_s`` by one thread, so a busy viewer does not take the ledger's write
lock once per GET; on stop the batch is flushed. Query strings are never recorded (a QIDO-RS
query may carry a Patient ID); paths carry UIDs only.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from anyio import to_thread

from core.audit import AuditEvent
from core.types import AuditEventType
from state.ledger.audit import AuditLog

__all__ = ["AuditMiddleware", "RequestAudit"]

logger = logging.getLogger(__name__)

_READS = frozenset({"GET", "HEAD", "OPTIONS"})


class RequestAudit:
    """Appends ``api_request`` events for one API replica."""

    def __init__(self, log: AuditLog, every_s: float = 0.25, now: Callable[[], float] = time.time) -> None:
        self._log = log
        self._every_s = every_s
        self._now = now
        self._pending: list[AuditEvent] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.failures = 0
        self._thread = threading.Thread(target=self._run, name="api-audit", daemon=True)
        self._thread.start()

    def record(self, subject: str, method: str, path: str, status: int, seconds: float) -> None:
        """Audit one request (a write at once, a read with the next batch)."""
        event = AuditEvent(
            AuditEventType.API_REQUEST,
            subject,
            study_uid=_study_of(path),
            detail={"method": method, "path": path[:300], "status": status, "ms": round(seconds * 1000, 1)},
        )
        if method in _READS:
            with self._lock:
                self._pending.append(event)
            return
        self._log.append([event], self._now())

    def flush(self) -> None:
        """Append the pending read events now (one transaction)."""
        with self._lock:
            batch, self._pending = self._pending, []
        if not batch:
            return
        try:
            self._log.append(batch, self._now())
        except Exception as exc:  # the ledger is down: keep them for the next round
            self.failures += 1
            logger.warning("request audit: %d event(s) not yet appended (%s)", len(batch), type(exc).__name__)
            with self._lock:
                self._pending[:0] = batch

    def _run(self) -> None:
        while not self._stop.wait(self._every_s):
            self.flush()

    def close(self) -> None:
        """Stop the batching thread and flush what is pending."""
        self._stop.set()
        self._thread.join(timeout=5)
        self.flush()


def _study_of(path: str) -> str:
    """The Study Instance UID in a DICOMweb path, if any.

    >>> _study_of("/dicomweb/studies/1.2.3/series/4.5")
    '1.2.3'
    >>> _study_of("/api/v1/status")
    ''
    """
    parts = path.strip("/").split("/")
    if "studies" in parts:
        i = parts.index("studies")
        if i + 1 < len(parts):
            return parts[i + 1][:64]
    return ""


class AuditMiddleware:
    """Pure ASGI middleware: audit every request but the health checks, after its response
    started, with the principal the route's dependency authenticated (``anonymous`` when
    none did: a 401, or a path that does not exist)."""

    def __init__(self, app: Any, audit: RequestAudit) -> None:
        self.app = app
        self.audit = audit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") != "http" or scope.get("path") in ("/healthz", "/readyz"):
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        status = 500

        async def sending(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            principal = (scope.get("state") or {}).get("principal")
            subject = principal.subject if principal is not None else "anonymous"
            args = (subject, scope.get("method", ""), scope.get("path", ""), status, time.monotonic() - started)
            if scope.get("method") in _READS:
                self.audit.record(*args)  # queued in memory: no I/O here
            else:
                await to_thread.run_sync(lambda: self.audit.record(*args))
