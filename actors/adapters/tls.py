"""TLS contexts for DICOM and MLLP endpoints (PS3.15 B.12 / BCP 195: TLS 1.2 or newer)."""

from __future__ import annotations

import ssl
from typing import Any

from core.config import TlsConfig

__all__ = ["SUBJECT_MARK", "client_context", "peer_label", "peer_subject", "server_context", "split_peer_label"]

SUBJECT_MARK = " cn="
"""Between the address and the certificate subject in a peer label."""


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


def peer_subject(sock: Any) -> str | None:
    """The subject CN of the verified certificate the peer of ``sock`` presented.

    ``None`` when ``sock`` is not a TLS socket or the peer sent no certificate: the caller's
    allow-list then finds no subject to bind (issue 13).
    """
    getpeercert = getattr(sock, "getpeercert", None)
    if getpeercert is None:
        return None
    try:
        cert = getpeercert()
    except (ValueError, OSError):  # handshake not done, or the socket is closed
        return None
    for rdn in (cert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


def peer_label(peername: Any, ssl_object: Any) -> str:
    """``host:port`` of a connection, plus `` cn=<subject>`` when its peer presented a certificate.

    >>> peer_label(("10.0.0.5", 40000), None)
    '10.0.0.5:40000'
    """
    address = ":".join(str(p) for p in (peername or ("?",))[:2])
    subject = peer_subject(ssl_object)
    return address if subject is None else f"{address}{SUBJECT_MARK}{subject}"


def split_peer_label(label: str) -> tuple[str, str | None]:
    """The peer's host and certificate subject (``None``: none) from a ``peer_label``.

    >>> split_peer_label("10.0.0.5:40000 cn=ris.example")
    ('10.0.0.5', 'ris.example')
    >>> split_peer_label("::1:40000")
    ('::1', None)
    """
    address, mark, subject = label.partition(SUBJECT_MARK)
    return address.rsplit(":", 1)[0], (subject if mark else None)
