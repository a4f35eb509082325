"""Sends the audit trail to an audit record repository: DICOM audit messages over syslog/TLS.

Each entry becomes a DICOM audit message (``core.dicom_audit``) in an RFC 5424 message
(``core.syslog5424``), octet-counted on one TLS connection (RFC 5425; mutual TLS when a client
certificate is configured). The auditor runs ``AuditExporter.round`` in its own loop thread,
so a slow or absent collector holds up nothing but this loop.

*Nothing lost, nothing doubled (at least once, deduplicated by seq).* Entries are read from the
ledger in chain order after a durable cursor (``<var_dir>/audit/export-<host>_<port>.json``):
the last seq the collector took. The cursor moves only after a whole batch was written and
the connection still looked open afterwards; a connection the collector closed is noticed
before a batch is written (then nothing of it is lost) or right after (then the batch is sent
again). RFC 5425 has no acknowledgement, so a collector that dies after reading part of a
batch gets that part twice; each message carries its seq (``[pacsai@32473 seq=...]``) for the
collector to drop the second copy. Reconnects back off, doubling from ``period_s`` up to
``backoff_max_s``; a round during an outage raises, so the loop's health shows it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import select
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from core.audit import AuditEntry
from core.audit_export_config import AuditCollectorConfig
from core.dicom_audit import AuditSource, audit_message, spec_for
from core.errors import ConfigError, DependencyUnavailable
from core.syslog5424 import FACILITY_AUTHPRIV, SdElement, format_message, octet_frame

__all__ = ["AuditExporter", "cursor_path", "tls_context"]

logger = logging.getLogger(__name__)

MSGID = "IHE+RFC-3881"
"""IHE ITI TF-2a 3.20.7.1: the MSGID of an audit message in the DICOM (RFC 3881) schema."""
SD_ID = "pacsai@32473"
"""Our SD-ID (32473: the enterprise number RFC 5612 reserves for documentation; a site with
its own private enterprise number may want that instead)."""
_SEVERITY = {"0": 5, "4": 4, "8": 3, "12": 2}
"""EventOutcomeIndicator to syslog severity: notice, warning, error, critical."""


class TrailReader(Protocol):
    """What the exporter reads: ``state.ledger.audit.AuditLog.events``."""

    def events(
        self, study_uid: str | None = None, limit: int = 1000, *, job_id: int | None = None, after: int = 0
    ) -> list[AuditEntry]: ...


def tls_context(cfg: AuditCollectorConfig) -> ssl.SSLContext:
    """A client context: TLS 1.2 or newer, the collector verified against ``ca_file``.

    Raises:
        ConfigError: A CA, certificate or key file that cannot be read or loaded.
    """
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cfg.ca_file)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if cfg.cert_file and cfg.key_file:
            ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
    except OSError as exc:  # ssl.SSLError is an OSError
        raise ConfigError("storage.audit.collector", [f"TLS files: {exc}"]) from None
    return ctx


def cursor_path(audit_dir: Path, cfg: AuditCollectorConfig) -> Path:
    """One cursor per collector: pointing at a new one sends it the whole trail."""
    return audit_dir / f"export-{re.sub(r'[^A-Za-z0-9.-]', '_', cfg.host)}_{cfg.port}.json"


def _peer_closed(sock: ssl.SSLSocket) -> bool:
    """Whether the collector closed or reset the connection (collectors never send data)."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
        return False  # a TLS 1.3 session ticket, no application data: still open
    except OSError:
        return True
    finally:
        sock.settimeout(timeout)


class AuditExporter:
    """Sends new audit entries to the collector; one round per call."""

    def __init__(
        self,
        cfg: AuditCollectorConfig,
        trail: TrailReader,
        cursor_file: Path,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Args:
        cfg: The collector.
        trail: The ledger's audit log.
        cursor_file: Where the last seq the collector took is kept.
        clock: Monotonic seconds, for the reconnect backoff.

        Raises:
            ConfigError: A CA, certificate or key file that cannot be loaded.
        """
        self._cfg = cfg
        self._trail = trail
        self._cursor_file = cursor_file
        self._clock = clock
        self._ctx = tls_context(cfg)
        host = socket.gethostname()
        self._source = AuditSource(cfg.source_id or host, host, cfg.enterprise_site_id or "")
        self._procid = str(os.getpid())
        self._sock: ssl.SSLSocket | None = None
        self._retry_at = 0.0
        self._backoff = 0.0
        self.outage = ""
        """Why the collector is not taking entries ("" once it takes them again): the loop's
        own health clears between tries while backing off, this does not."""
        self.cursor = self._load_cursor()

    def round(self) -> int:
        """Send the next batch after the cursor; return how many entries the collector took.

        Raises:
            DependencyUnavailable: The collector cannot be reached or closed the connection
                (nothing after the cursor counts as sent; the next try waits its backoff).
        """
        if self._clock() < self._retry_at:
            return 0
        entries = self._trail.events(limit=self._cfg.batch, after=self.cursor)
        if not entries:
            return 0
        payload = b"".join(octet_frame(self.message(e)) for e in entries)
        try:
            sock = self._connection()
            sock.sendall(payload)
            if _peer_closed(sock):
                raise ConnectionResetError("the collector closed the connection during the batch")
        except OSError as exc:
            raise self._failed(exc) from None
        self._store_cursor(entries[-1].seq)
        self._backoff, self.outage = 0.0, ""
        return len(entries)

    def message(self, entry: AuditEntry) -> bytes:
        """One entry as an RFC 5424 message carrying its DICOM audit message."""
        return format_message(
            facility=FACILITY_AUTHPRIV,
            severity=_SEVERITY.get(spec_for(entry).outcome, 4),
            at=entry.at,
            hostname=self._source.source_id,
            app_name=self._cfg.app_name,
            procid=self._procid,
            msgid=MSGID,
            structured=(SdElement(SD_ID, (("seq", str(entry.seq)), ("type", entry.type))),),
            message=audit_message(entry, self._source),
        )

    def close(self) -> None:
        """Close the connection with a TLS close_notify (the collector sees a clean end, not a
        truncation attack); the cursor is already durable."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        try:
            sock.settimeout(min(1.0, self._cfg.timeout_s))
            sock.unwrap()
        except (OSError, ValueError):
            pass  # already reset or closed: nothing to say goodbye to
        finally:
            sock.close()

    def _connection(self) -> ssl.SSLSocket:
        """The open connection, or a new one when there is none or the collector closed it."""
        if self._sock is not None and _peer_closed(self._sock):
            logger.info("audit collector %s:%d closed the connection; reconnecting", self._cfg.host, self._cfg.port)
            self.close()
        if self._sock is None:
            raw = socket.create_connection((self._cfg.host, self._cfg.port), timeout=self._cfg.timeout_s)
            try:
                name = self._cfg.server_hostname or self._cfg.host
                self._sock = self._ctx.wrap_socket(raw, server_hostname=name)
            except BaseException:
                raw.close()
                raise
        return self._sock

    def _failed(self, exc: OSError) -> DependencyUnavailable:
        """Drop the connection, schedule the next try (doubling backoff), say what happened."""
        self.close()
        self._backoff = min(max(2 * self._backoff, self._cfg.period_s), self._cfg.backoff_max_s)
        self._retry_at = self._clock() + self._backoff
        where = f"{self._cfg.host}:{self._cfg.port}"
        failure = DependencyUnavailable(
            "audit-collector", f"{where}: {type(exc).__name__}: {exc}; entries after seq {self.cursor} wait"
        )
        self.outage = str(failure)
        return failure

    def _load_cursor(self) -> int:
        try:
            return int(json.loads(self._cursor_file.read_text())["seq"])
        except FileNotFoundError:
            return 0
        except (OSError, ValueError, KeyError, TypeError) as exc:  # sending again is safe; skipping is not
            logger.warning("audit export cursor %s unreadable (%s): sending from the start", self._cursor_file, exc)
            return 0

    def _store_cursor(self, seq: int) -> None:
        """Replace the cursor file atomically and durably, then move the cursor."""
        path = self._cursor_file
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        with open(tmp, "w") as f:
            f.write(json.dumps({"seq": seq, "collector": f"{self._cfg.host}:{self._cfg.port}"}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        self.cursor = seq
