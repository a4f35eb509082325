"""The listener over mutual TLS 1.2+ (PS3.15 B.12), with certificates from the shared ``pki`` fixture;
calling AE titles bound to certificate subjects, refusals audited (issue 13)."""

from __future__ import annotations

import ssl

from pydicom import dcmread
from pydicom.data import get_testdata_file
from pynetdicom import AE

from actors.adapters.dimse import Listener
from core.config import ListenerConfig, StorageConfig
from core.types import AuditEventType
from state.ledger import open_ledger
from tests.pki import Pki


def _client_ctx(pki: Pki, with_cert: bool = True) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca))
    if with_cert:
        ctx.load_cert_chain(pki.client_cert, pki.client_key)
    return ctx


def test_tls_listener_accepts_trusted_clients_only(tmp_path, pki):
    tls = pki.server()
    ledger = open_ledger(StorageConfig(var_dir=str(tmp_path)))
    listener = Listener(
        ListenerConfig(
            port=0,
            min_free_bytes=0,
            tls=tls,
            network_timeout_s=5,
            allowed_calling_ae_titles=("SCU", "CT_OTHER"),
            calling_ae_subjects={"SCU": ("client",), "CT_OTHER": ("ct-other.example",)},
        ),
        tmp_path / "spool",
        tmp_path / "rejected",
        ledger,
        60.0,
    )
    listener.start()
    try:
        ds = dcmread(get_testdata_file("CT_small.dcm"))

        def associate(tls_args, calling="SCU"):
            ae = AE(ae_title=calling)
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
        # the "client" certificate may not call as another allowed AE title: A-ASSOCIATE-RJ, audited
        refused = associate((_client_ctx(pki), "localhost"), calling="CT_OTHER")
        assert refused.is_rejected and not refused.is_established
        [event] = [e for e in ledger.audit.events() if e.type == AuditEventType.ASSOCIATION_REFUSED]
        assert (event.detail["calling_ae"], event.detail["subject"]) == ("CT_OTHER", "client")
        assert "not bound to certificate subject 'client'" in event.detail["reason"]
    finally:
        listener.stop()
        ledger.close()
