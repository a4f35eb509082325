"""What the listener negotiates: every storage SOP class with every transfer syntax pynetdicom
knows (standards.md 5.1 / 5.3), and nothing it could not store as sent."""

from __future__ import annotations

import pytest
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES
from pynetdicom.sop_class import Verification

from actors.adapters.dimse import Listener, storage_sop_classes
from core.config import ListenerConfig, StorageConfig
from state.ledger import open_ledger

pytestmark = pytest.mark.integration

CT = "1.2.840.10008.5.1.4.1.1.2"
COMMON = {
    "1.2.840.10008.1.2": "Implicit VR Little Endian",
    "1.2.840.10008.1.2.1": "Explicit VR Little Endian",
    "1.2.840.10008.1.2.2": "Explicit VR Big Endian",
    "1.2.840.10008.1.2.1.99": "Deflated Explicit VR LE",
    "1.2.840.10008.1.2.5": "RLE Lossless",
    "1.2.840.10008.1.2.4.50": "JPEG Baseline",
    "1.2.840.10008.1.2.4.51": "JPEG Extended (12-bit)",
    "1.2.840.10008.1.2.4.57": "JPEG Lossless P14",
    "1.2.840.10008.1.2.4.70": "JPEG Lossless SV1",
    "1.2.840.10008.1.2.4.80": "JPEG-LS Lossless",
    "1.2.840.10008.1.2.4.81": "JPEG-LS Near-Lossless",
    "1.2.840.10008.1.2.4.90": "JPEG 2000 Lossless",
    "1.2.840.10008.1.2.4.91": "JPEG 2000",
    "1.2.840.10008.1.2.4.201": "HTJ2K Lossless",
    "1.2.840.10008.1.2.4.202": "HTJ2K RPCL",
    "1.2.840.10008.1.2.4.203": "HTJ2K",
}
"""standards.md 5.1: what an SCP receiving from modalities and PACS should accept."""


@pytest.fixture(scope="module")
def port(tmp_path_factory):
    root = tmp_path_factory.mktemp("negotiation")
    ledger = open_ledger(StorageConfig(var_dir=str(root)))
    lst = Listener(ListenerConfig(port=0, min_free_bytes=0), root / "spool", root / "rejected", ledger, 60.0)
    lst.start()
    yield lst.port
    lst.stop()
    ledger.close()


def accepted(port: int, contexts: list[tuple[str, str]]) -> set[tuple[str, str]]:
    """Propose one presentation context per (SOP class, transfer syntax); return the accepted."""
    ae = AE(ae_title="NEGOTIATE")
    for sop_class, syntax in contexts:
        ae.add_requested_context(sop_class, syntax)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACSAI")
    try:
        return {(str(c.abstract_syntax), str(c.transfer_syntax[0])) for c in assoc.accepted_contexts}
    finally:
        if assoc.is_established:
            assoc.release()


def test_every_transfer_syntax_is_accepted_for_images(port):
    assert set(COMMON) <= set(ALL_TRANSFER_SYNTAXES)
    proposed = [(CT, ts) for ts in ALL_TRANSFER_SYNTAXES]
    assert accepted(port, proposed) == set(proposed)


def test_every_storage_sop_class_is_accepted(port):
    classes = storage_sop_classes()
    assert "1.2.840.10008.5.1.4.39.1" in classes  # Color Palette: Non-Patient Object Storage
    assert "1.2.840.10008.5.1.4.1.1.30" in classes  # Parametric Map (not in StoragePresentationContexts)
    for start in range(0, len(classes), 120):  # at most 128 contexts per association (PS3.8)
        chunk = [(uid, "1.2.840.10008.1.2.1") for uid in classes[start : start + 120]]
        assert accepted(port, chunk) == set(chunk)


def test_private_sop_classes_are_stored_too(port):
    private = [("1.3.6.1.4.1.9590.100.1.2.1", "1.2.840.10008.1.2")]  # unrestricted storage
    assert accepted(port, private) == set(private)


def accepted_one_context(port: int, sop_class: str, syntaxes: list[str]) -> str | None:
    """Propose one context with several transfer syntaxes; return the one accepted."""
    ae = AE(ae_title="NEGOTIATE")
    ae.add_requested_context(sop_class, syntaxes)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACSAI")
    try:
        found = [str(c.transfer_syntax[0]) for c in assoc.accepted_contexts]
        return found[0] if found else None
    finally:
        if assoc.is_established:
            assoc.release()


def test_a_decodable_syntax_is_chosen_over_one_the_requestor_lists_first(port):
    private, mpeg2 = "1.3.6.1.4.1.9590.100.1.2.999", "1.2.840.10008.1.2.4.100"
    assert accepted_one_context(port, CT, [private, mpeg2, "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2"]) == (
        "1.2.840.10008.1.2.4.80"
    )
    assert accepted_one_context(port, CT, [private, mpeg2]) == mpeg2  # known beats unknown


def test_unknown_syntaxes_are_stored_and_flagged_not_refused(port):
    """pynetdicom's unrestricted storage accepts any storage context (needed for private SOP
    classes); what cannot be decoded is stored as sent and quarantined (standards.md 5.1)."""
    private = "1.3.6.1.4.1.9590.100.1.2.999"
    assert accepted(port, [(CT, private)]) == {(CT, private)}


def test_non_storage_classes_are_refused(port):
    assert accepted(port, [("1.2.840.10008.1.3.10", "1.2.840.10008.1.2.1")]) == set()  # DICOMDIR
    assert accepted(port, [(str(Verification), "1.2.840.10008.1.2")]) == {(str(Verification), "1.2.840.10008.1.2")}
