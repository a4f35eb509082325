"""The listener over mutual TLS 1.2+ (PS3.15 B.12), with certificates made for the test."""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pynetdicom import AE

from actors.adapters.dimse import Listener
from core.config import StorageConfig
from state.ledger import Ledger, open_ledger
from core.config import ListenerConfig, TlsConfig


def _cert(name: str, issuer_key, issuer_name, key, ca: bool, san: str | None = None):
    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(san)]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test CA")])
    ca = _cert("Test CA", ca_key, ca_name, ca_key, ca=True)
    out = {"ca": tmp_path / "ca.crt"}
    out["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for who in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _cert(who, ca_key, ca_name, key, ca=False, san="localhost")
        (tmp_path / f"{who}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (tmp_path / f"{who}.key").write_bytes(
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
        out[who] = tmp_path / who
    return out


def _client_ctx(pki: dict[str, Path], with_cert: bool = True) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki["ca"]))
    if with_cert:
        ctx.load_cert_chain(f"{pki['client']}.crt", f"{pki['client']}.key")
    return ctx


def test_tls_listener_accepts_trusted_clients_only(tmp_path, pki):
    tls = TlsConfig(certificate=f"{pki['server']}.crt", private_key=f"{pki['server']}.key", ca_certificates=str(pki["ca"]))
    ledger = open_ledger(StorageConfig(var_dir=str(tmp_path)))
    listener = Listener(ListenerConfig(port=0, min_free_bytes=0, tls=tls, network_timeout_s=5),
                        tmp_path / "spool", tmp_path / "rejected", ledger, 60.0)
    listener.start()
    try:
        ds = dcmread(get_testdata_file("CT_small.dcm"))

        def associate(tls_args):
            ae = AE(ae_title="SCU")
            ae.acse_timeout = ae.network_timeout = ae.connection_timeout = 5
            ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
            return ae.associate("127.0.0.1", listener.port, ae_title="PACSAI", tls_args=tls_args)

        assoc = associate((_client_ctx(pki), "localhost"))
        assert assoc.is_established
        assert assoc.send_c_store(ds).Status == 0x0000
        assoc.release()
        assert ledger.intake.has_instance(ds.SOPInstanceUID)
        assert not associate(None).is_established  # plaintext is refused
        assert not associate((_client_ctx(pki, with_cert=False), "localhost")).is_established  # no client cert
    finally:
        listener.stop()
        ledger.close()
