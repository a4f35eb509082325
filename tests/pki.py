"""A throwaway PKI for TLS tests: one CA, a server and a client certificate, made at test time.

Tests never read certificates from outside the repository (issue #9, item 8): fixed files
expire, and a suite that depends on them fails one day for no reason in the code. The
``pki`` session fixture in ``tests/conftest.py`` calls :func:`make_pki` once per run.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from core.config import TlsConfig

__all__ = ["Pki", "make_pki"]

VALID_FOR = dt.timedelta(days=2)
"""Long enough for any test run, short enough that a leaked key is worthless."""


@dataclass(frozen=True, slots=True)
class Pki:
    """PEM files of a test CA and of one server and one client certificate it signed.

    Both leaf certificates name ``localhost`` (SAN), so either side can verify the other.
    """

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def server(self, require_client_certificate: bool = True) -> TlsConfig:
        """The TLS config of a server endpoint (listener) that trusts this CA."""
        return TlsConfig(
            certificate=str(self.server_cert),
            private_key=str(self.server_key),
            ca_certificates=str(self.ca),
            require_client_certificate=require_client_certificate,
        )

    def client(self) -> TlsConfig:
        """The TLS config of a client that presents the client certificate."""
        return TlsConfig(
            certificate=str(self.client_cert),
            private_key=str(self.client_key),
            ca_certificates=str(self.ca),
            server_hostname="localhost",
        )


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    ca: bool,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + VALID_FOR)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def make_pki(directory: Path) -> Pki:
    """Create a CA and a server and a client certificate under ``directory``.

    Args:
        directory: An empty, test-owned directory (``tmp_path_factory``).

    Returns:
        The paths of the PEM files.
    """
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("Test CA", ca_key, "Test CA", ca_key, ca=True)
    (directory / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for who in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _certificate(who, key, "Test CA", ca_key, ca=False)
        (directory / f"{who}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(directory / f"{who}.key", key)
    return Pki(
        directory / "ca.crt",
        directory / "server.crt",
        directory / "server.key",
        directory / "client.crt",
        directory / "client.key",
    )
