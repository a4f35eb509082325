"""TLS contexts for DICOM and MLLP endpoints (PS3.15 B.12 / BCP 195: TLS 1.2 or newer)."""

from __future__ import annotations

import ssl

from core.config import TlsConfig

__all__ = ["client_context", "server_context"]


def server_context(cfg: TlsConfig) -> ssl.SSLContext:
    """Return a server-side context that requires TLS 1.2+ and, if configured, client certs."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cfg.certificate, cfg.private_key)
    ctx.load_verify_locations(cfg.ca_certificates)
    ctx.verify_mode = ssl.CERT_REQUIRED if cfg.require_client_certificate else ssl.CERT_OPTIONAL
    return ctx


def client_context(cfg: TlsConfig) -> ssl.SSLContext:
    """Return a client-side context that verifies the server against the configured CAs."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cfg.ca_certificates)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cfg.certificate, cfg.private_key)
    return ctx
