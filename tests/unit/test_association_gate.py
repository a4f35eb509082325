"""Issue 13: an association whose calling AE title is not bound to the peer certificate's
subject is refused (A-ASSOCIATE-RJ) before negotiation, and every refusal is audited."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from actors.adapters.association_gate import AssociationGate
from core.config import ListenerConfig
from core.types import AuditEventType

CFG = ListenerConfig(allowed_calling_ae_titles=("CT1",), calling_ae_subjects={"CT1": ("ct1.example",)})


class FakeAudit:
    def __init__(self) -> None:
        self.events: list[Any] = []

    def append(self, events: list[Any], now: float) -> None:
        self.events += events


class FakeTlsSocket:
    def __init__(self, cn: str) -> None:
        self._cn = cn

    def getpeercert(self) -> dict[str, Any]:
        return {"subject": ((("organizationName", "Hospital"),), (("commonName", self._cn),))}


class FakeAssoc:
    def __init__(self, calling: str, cn: str) -> None:
        rq = SimpleNamespace(calling_ae_title=calling, called_ae_title="PACSAI")
        self.requestor = SimpleNamespace(primitive=rq, address="10.0.0.5", port=40000)
        self.acceptor = SimpleNamespace(primitive=SimpleNamespace(diagnostic=7))
        self.dul = SimpleNamespace(socket=SimpleNamespace(socket=FakeTlsSocket(cn)))
        self.acse = SimpleNamespace(send_reject=lambda *rsd: self.rejected.append(rsd))
        self.rejected: list[tuple[int, ...]] = []
        self.killed = False
        self.is_acceptor = True

    def kill(self) -> None:
        self.killed = True


def _gate() -> tuple[AssociationGate, FakeAudit]:
    audit = FakeAudit()
    ledger: Any = SimpleNamespace(audit=audit)
    return AssociationGate(CFG, ledger, "listener:PACSAI", SimpleNamespace(now=lambda: 1.0)), audit


def test_the_bound_subject_associates_and_nothing_is_audited():
    gate, audit = _gate()
    assoc = FakeAssoc("CT1", "ct1.example")
    gate.on_requested(SimpleNamespace(assoc=assoc))
    assert assoc.rejected == [] and not assoc.killed and audit.events == []


def test_another_subject_using_the_ae_title_is_rejected_and_audited():
    gate, audit = _gate()
    assoc = FakeAssoc("CT1", "mr1.example")
    gate.on_requested(SimpleNamespace(assoc=assoc))
    assert assoc.rejected == [(0x01, 0x01, 0x03)] and assoc.killed
    [event] = audit.events
    assert event.type is AuditEventType.ASSOCIATION_REFUSED
    assert event.detail == {
        "reason": "calling AE title 'CT1' is not bound to certificate subject 'mr1.example'",
        "calling_ae": "CT1",
        "called_ae": "PACSAI",
        "peer": "10.0.0.5:40000",
        "subject": "mr1.example",
    }


def test_a_refusal_pynetdicom_made_itself_is_audited_too():
    gate, audit = _gate()
    gate.on_rejected(SimpleNamespace(assoc=FakeAssoc("CT1", "ct1.example")))
    [event] = audit.events
    assert event.detail["reason"] == "A-ASSOCIATE-RJ diagnostic 7"
