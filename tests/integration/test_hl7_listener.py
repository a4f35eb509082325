"""Issue #6: the HL7 MLLP listener against real MLLP clients on real sockets.

The listener runs in-process (the Ray actor is a thin shell around it); clients are
python-hl7's asyncio connection, python-hl7's MLLPClient (what ``mllp_send`` uses) and raw
sockets scripted as bad peers. Every test on the ``bridge`` runs on both backends of the context
store and the ledger: a real SQLite file and a real PostgreSQL server (issue 9).
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import struct
import threading
import time
from datetime import date

import hl7
import hl7.mllp
import pytest
from fhir.resources.R4B.encounter import Encounter
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.servicerequest import ServiceRequest
from hl7.client import MLLPClient

from actors.adapters.hl7_inbox import Hl7Listener
from actors.adapters.mllp import END, START, MllpClient
from actors.adapters.tls import client_context
from actors.pipeline import wait_until
from core.config import Hl7Config, MllpListenerConfig, StorageConfig, TlsConfig
from core.identifiers import hash_identifier
from state.column_seal import sealer_of
from state.context_store import ContextReader, open_context
from state.ledger import Ledger, open_ledger
from tests.hl7_messages import a40, adt, omi, orm

pytestmark = pytest.mark.integration

KEY = b"integration-key"
MAX_BYTES = 64 * 1024


def make_listener(
    storage: StorageConfig, tls: TlsConfig | None = None, workers: int | None = None, senders: tuple = ()
) -> tuple[Hl7Listener, Ledger]:
    cfg = Hl7Config(
        listener=MllpListenerConfig(
            port=0, max_message_bytes=MAX_BYTES, max_field_chars=4096, idle_timeout_s=30, tls=tls
        ),
        identifier_systems={"HOSP": "http://hosp.example/mrn"},
        senders=senders,
        **({} if workers is None else {"parse_workers": workers}),
    )
    ledger = open_ledger(storage)
    listener = Hl7Listener(cfg, open_context(storage, writer=True), ledger, KEY)
    listener.start()
    return listener, ledger


@pytest.fixture
def bridge(backend, storage_for):
    storage = storage_for(backend)
    listener, ledger = make_listener(storage)
    reader = ContextReader(open_context(storage))  # a connection of its own, as the router's
    yield listener, ledger, reader
    listener.stop()
    reader.close()
    ledger.close()


def resources(reader: ContextReader, kind: str) -> list[dict]:
    """Every stored resource of one type, with its version (``_version``)."""
    with reader.db.read() as tx:
        rows = tx.all("SELECT version, json FROM resources WHERE type = ? ORDER BY id", (kind,))
    seal = sealer_of(reader.db)  # sealed at rest (state.column_seal)
    return [{**json.loads(seal.open_text(r["json"])), "_version": r["version"]} for r in rows]


def msa(reply: bytes) -> tuple[str, str]:
    """MSA-1 and MSA-2 of an ACK, read with python-hl7 (not our parser)."""
    seg = hl7.parse(reply.decode()).segment("MSA")
    return str(seg(1)), str(seg(2))


def err(reply: bytes) -> tuple[str, str]:
    """ERR-2 (location) and ERR-3.1 (table 0357 code) of an ACK."""
    seg = hl7.parse(reply.decode()).segment("ERR")
    return str(seg(2)), str(seg(3)(1)(1))


def the(reader: ContextReader, kind: str) -> dict:
    found = resources(reader, kind)
    assert len(found) == 1, f"{len(found)} {kind} resources"
    return {k: v for k, v in found[0].items() if k != "_version"}


def test_adt_and_orders_over_one_persistent_connection_become_fhir_r4(bridge):
    listener, _, reader = bridge

    async def session() -> list:
        r, w = await hl7.mllp.open_hl7_connection("127.0.0.1", listener.port)
        acks = []
        for raw in (adt("A01", "ADT1"), orm("ORM1"), adt("A08", "ADT2", sex="M")):
            w.writemessage(hl7.parse(raw))
            acks.append(await asyncio.wait_for(r.readmessage(), 10))
        w.close()
        return acks

    acks = asyncio.run(session())
    assert [(str(a.segment("MSA")(1)), str(a.segment("MSA")(2))) for a in acks] == [
        ("AA", "ADT1"),
        ("AA", "ORM1"),
        ("AA", "ADT2"),
    ]
    assert listener._server.connections == 1  # one persistent connection, three messages

    patient = Patient.model_validate(the(reader, "Patient"))  # A08 updated it, no duplicate
    assert patient.gender == "male" and str(patient.birthDate) == "1970-06-15"
    assert patient.identifier[0].value == "MRN123"
    assert patient.identifier[0].system == "http://hosp.example/mrn"
    assert patient.name[0].family == "SYNTHETIC"
    request = ServiceRequest.model_validate(the(reader, "ServiceRequest"))
    assert request.priority == "stat" and request.status == "active" and request.intent == "order"
    assert request.reasonCode[0].text == "Acute chest pain, rule out pneumothorax"
    assert request.code.coding[0].code == "36554-4"
    assert request.subject.reference == f"Patient/{patient.id}"
    for row in resources(reader, "Encounter"):
        row.pop("_version")
        enc = Encounter.model_validate(row)
        assert enc.class_fhir.code == "EMER" and enc.subject.reference == f"Patient/{patient.id}"


def test_a_resent_message_is_acknowledged_and_not_applied_twice(bridge):
    listener, _, reader = bridge
    client = MLLPClient("127.0.0.1", listener.port)
    try:
        first = client.send_message(orm("DUP1"))
        again = client.send_message(orm("DUP1"))
        later = client.send_message(orm("DUP1", stamp="20250301113000+0100"))  # resent later
    finally:
        client.close()
    assert [msa(first), msa(again), msa(later)] == [("AA", "DUP1")] * 3
    [request] = resources(reader, "ServiceRequest")
    assert request["_version"] == 1 and request["priority"] == "stat"
    [inbox] = reader.inbox()
    assert (inbox["status"], inbox["resends"]) == ("applied", 2)


def test_other_content_under_a_used_control_id_is_a_conflict_kept_for_review(bridge):
    """Issue #16, 5: (MSH-3, MSH-4, MSH-10) plus the content: not a silent AA."""
    listener, ledger, reader = bridge
    client = MllpClient("127.0.0.1", listener.port)
    try:
        assert msa(client.send(orm("DUP1").encode())[0]) == ("AA", "DUP1")
        changed = orm("DUP1", priority="R").encode()  # same MSH-10, other content
        replies = [client.send(changed)[0] for _ in range(2)]  # and its own re-send
        other_sender = orm("DUP1", priority="R", accession="ACC9", facility="ELSEWHERE").encode()
        assert msa(client.send(other_sender)[0]) == ("AA", "DUP1")  # another sender's ID
    finally:
        client.close()
    for reply in replies:
        assert msa(reply) == ("AE", "DUP1")
        assert err(reply) == ("MSH^1^10", "205")
    requests = resources(reader, "ServiceRequest")
    priorities = {r["identifier"][-1]["value"]: r["priority"] for r in requests}
    assert priorities == {"ACC3003": "stat", "ACC9": "routine"}  # the conflict changed nothing
    [conflict] = reader.conflicts()
    assert (conflict["control_id"], conflict["resends"]) == ("DUP1", 1)
    assert b"^^^^^R" in conflict["raw"]  # the whole message, for review
    listener.audit_once()
    events = [e for e in ledger.audit.events() if e.type == "hl7_received"]
    conflicts = [e.detail for e in events if e.detail["status"] == "conflict"]
    # The pump (every 0.2 s) may audit the first copy before its re-send arrives and then the
    # re-send: one event per audited state of the one row, the last one counting the re-send.
    assert 1 <= len(conflicts) <= 2
    assert {(c["conflict_seq"], c["error_code"]) for c in conflicts} == {(conflict["seq"], "205")}
    assert conflicts[-1]["resends"] == 1


def test_connection_dropped_before_the_ack_loses_nothing_and_applies_once(bridge):
    listener, _, reader = bridge
    sock = socket.create_connection(("127.0.0.1", listener.port))
    sock.sendall(START + orm("DROP1").encode() + END)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # RST: the sender never sees the ACK
    assert wait_until(lambda: reader.count("hl7_inbox") == 1, 10)
    client = MllpClient("127.0.0.1", listener.port)
    try:
        [reply] = client.send(orm("DROP1").encode())  # the sender resends on timeout
    finally:
        client.close()
    assert msa(reply) == ("AA", "DROP1")
    assert [r["_version"] for r in resources(reader, "ServiceRequest")] == [1]
    assert reader.inbox()[0]["resends"] == 1


def test_hostile_input_gets_clear_answers_and_the_listener_keeps_serving(bridge):
    listener, _, reader = bridge
    client = MllpClient("127.0.0.1", listener.port)
    good = orm("OK1")
    cases = [
        (b"\x0b\x00\xff\xfe binary \x01\x02", "AR", "", "102"),
        (b"PID|1||X\r", "AR", "MSH^1", "100"),
        (good.replace("MSH|^~\\&|", "MSH|^^\\&|", 1).encode(), "AR", "MSH^1^2", "102"),
        (good.replace("ORM^O01^ORM_O01", "ORU^R01^ORU_R01").encode(), "AR", "MSH^1^9", "200"),
        (orm("BIG1").replace("Acute chest pain", "x" * 5000).encode(), "AE", "OBR^1^31", "102"),
        (orm("NOID").replace("MRN123^^^HOSP^MR", "").encode(), "AE", "PID^1^3", "101"),
        (orm("HUGE").encode() + b"Z" * (MAX_BYTES + 10), "AR", "", "102"),
    ]
    try:
        for payload, code, where, table_0357 in cases:
            [reply] = client.send(payload)
            assert msa(reply)[0] == code, (payload[:30], reply)
            assert err(reply) == (where, table_0357), (payload[:30], reply)
        # bytes outside any frame are dropped; a message split across TCP packets still arrives
        client.send_raw(b"noise outside frames\r\n")
        framed = START + good.encode() + END
        for i in range(0, len(framed), 7):
            client.send_raw(framed[i : i + 7])
            time.sleep(0.002)
        [reply] = client.receive()
        assert msa(reply) == ("AA", "OK1")
    finally:
        client.close()
    assert reader.count("hl7_rejected") == 5
    statuses = sorted((r["control_id"], r["status"]) for r in reader.inbox())
    assert statuses == [("BIG1", "invalid"), ("NOID", "invalid"), ("OK1", "applied")]
    assert reader.count("orders") == 1  # nothing of the bad messages was applied


def test_formatting_escapes_that_once_raised_or_grew_get_clear_answers(bridge):
    """``\\.sp²\\`` and a 5,000-digit count made the deciding worker raise (AE 207, "internal
    error", at every resend); ``\\.sk99999999\\`` made 100 MB of blanks there."""
    listener, _, reader = bridge
    client = MllpClient("127.0.0.1", listener.port)
    cases = [
        ("ESC1", "Acute\\.sp\u00b2\\chest pain", "AA", "Acute\\.sp\u00b2\\chest pain"),  # kept as received
        ("ESC2", "Acute\\.sk" + "9" * 5000 + "\\pain", "AE", ("OBR^1^31", "102")),  # > 4,096: named
        ("ESC3", "Acute\\.sk99999999\\pain", "AA", "Acute" + " " * 13 + "pain"),
    ]
    try:
        for control_id, reason, code, expected in cases:
            [reply] = client.send(orm(control_id).replace("Acute chest pain", reason).encode())
            assert msa(reply) == (code, control_id), reply
            if code == "AE":
                assert err(reply) == expected, reply
                continue
            [order] = resources(reader, "ServiceRequest")  # one order, updated by each message
            assert order["reasonCode"][0]["text"].startswith(expected), order["reasonCode"]
    finally:
        client.close()


def test_a_peer_that_does_not_speak_mllp_is_closed_cleanly(bridge):
    listener, _, _ = bridge
    sock = socket.create_connection(("127.0.0.1", listener.port))
    sock.settimeout(10)
    try:
        sock.sendall(b"GET / HTTP/1.1\r\n" + b"x" * (MAX_BYTES + 100))
        assert sock.recv(100) == b""  # closed, no reply to garbage that is not framed
    finally:
        sock.close()
    client = MllpClient("127.0.0.1", listener.port)
    try:
        assert msa(client.send(adt().encode())[0]) == ("AA", "ADT0001")
    finally:
        client.close()


def test_a_parse_worker_that_dies_loses_nothing_and_is_replaced(tmp_path):
    """Issue 14: deciders decide, one committer stores (SQLite). The committer, then the
    decider, killed with a frame in flight: that frame is answered AE 207 (the sender resends
    it), another worker of the same part starts, and what was acknowledged stays stored,
    applied once."""
    import os
    import signal

    listener, ledger = make_listener(StorageConfig(var_dir=str(tmp_path)), workers=1)
    reader = ContextReader(open_context(StorageConfig(var_dir=str(tmp_path))))
    client = MllpClient("127.0.0.1", listener.port)
    try:
        pool = listener._pool
        assert pool is not None and pool.stores and pool.committing and pool.alive == 1
        assert msa(client.send(orm("W1").encode())[0]) == ("AA", "W1")
        first = listener.worker_pids()  # what bench_hl7.py accounts CPU by
        assert len(first["deciders"]) == 1 and len(first["committer"]) == 1
        for n, part in enumerate((True, False), start=1):  # the committer, then the decider
            [channel] = [c for c in pool._channels if c.committer is part]
            assert [channel.process.pid] == first["committer" if part else "deciders"]
            os.kill(channel.process.pid, signal.SIGSTOP)  # busy: the next frame waits in it
            client.send_raw(START + orm(f"K{n}", accession=f"ACC-K{n}").encode() + END)
            time.sleep(0.2)  # decided, and at the stopped committer
            os.kill(channel.process.pid, signal.SIGKILL)
            [reply] = client.receive()
            assert msa(reply) == ("AE", f"K{n}") and err(reply)[1] == "207"
            assert wait_until(lambda n=n: pool.restarts == n and pool.alive == 1 and pool.committing, 10)
        now = listener.worker_pids()
        assert len(now["deciders"]) == len(now["committer"]) == 1 and not set(sum(now.values(), [])) & set(
            sum(first.values(), [])
        )
        for message in (orm("K1", accession="ACC-K1"), orm("K2", accession="ACC-K2"), orm("W1")):
            control_id = message.split("|")[9]  # the resends, and a resend of an acknowledged one
            assert msa(client.send(message.encode())[0]) == ("AA", control_id)
        rows = {r["control_id"]: (r["status"], r["resends"]) for r in reader.inbox()}
        assert rows == {"W1": ("applied", 1), "K1": ("applied", 0), "K2": ("applied", 0)}
        assert [r["_version"] for r in resources(reader, "ServiceRequest")] == [1, 1, 1]
        assert listener._worker_commits[0] >= 4  # the committer stored them, not the listener
    finally:
        client.close()
        listener.stop()
        reader.close()
        ledger.close()


def test_a_silent_connection_is_closed_after_the_idle_timeout():
    """``listener.idle_timeout_s``: silence closes a connection; one that keeps sending, or
    waits for its answer, stays open."""
    from actors.adapters.mllp import MllpServer

    async def slow(received, peer):
        await asyncio.sleep(0.5)  # longer than the idle timeout: waiting for us is not silence
        return [b"MSA|AA|" + received.payload[-2:]]

    server = MllpServer("127.0.0.1", 0, slow, idle_timeout_s=0.3)
    server.start()
    try:
        quiet = socket.create_connection(("127.0.0.1", server.port))
        quiet.settimeout(5)
        busy = MllpClient("127.0.0.1", server.port, timeout_s=5)
        started = time.monotonic()
        assert busy.send(b"MSH|01") == [b"MSA|AA|01"]
        assert quiet.recv(10) == b""  # closed
        assert 0.3 <= time.monotonic() - started < 3
        for n in range(2, 5):
            time.sleep(0.15)
            assert busy.send(b"MSH|0%d" % n) == [b"MSA|AA|0%d" % n]
        busy.close()
        quiet.close()
    finally:
        server.stop()


def test_enhanced_mode_acks_follow_msh_15_and_16(bridge):
    listener, _, _ = bridge
    client = MllpClient("127.0.0.1", listener.port)

    def enhanced(control: str, accept: str, application: str) -> str:
        return orm(control, extra=f"|||{accept}|{application}")

    try:
        assert [msa(r)[0] for r in client.send(enhanced("E1", "AL", "NE").encode())] == ["CA"]
        assert [msa(r)[0] for r in client.send(enhanced("E2", "AL", "AL").encode(), 2)] == ["CA", "AA"]
        bad = enhanced("E3", "AL", "ER").replace("36554-4^XR Chest 2 Views^LN", "")
        replies = client.send(bad.encode(), 2)
        assert [msa(r)[0] for r in replies] == ["CA", "AE"] and err(replies[1])[0] == "OBR^1^4"
        client.send_raw(START + enhanced("E4", "NE", "NE").encode() + END)  # no answer wanted
        assert msa(client.send(orm("E5").encode())[0]) == ("AA", "E5")  # the next reply is E5's
    finally:
        client.close()


def test_a40_merge_moves_orders_to_the_surviving_patient(bridge):
    listener, _, reader = bridge
    client = MllpClient("127.0.0.1", listener.port)
    try:
        for raw in (
            adt("A04", "P1", mrn="MRN999"),
            orm("O1", mrn="MRN999", accession="ACCM"),
            adt("A01", "P2", mrn="MRN123"),
            a40("M1", survivor="MRN123", prior="MRN999"),
        ):
            assert msa(client.send(raw.encode())[0])[0] == "AA"
    finally:
        client.close()
    patients = {p["identifier"][0]["value"]: p for p in resources(reader, "Patient")}
    prior, survivor = patients["MRN999"], patients["MRN123"]
    assert prior["active"] is False
    assert prior["link"] == [{"other": {"reference": f"Patient/{survivor['id']}"}, "type": "replaced-by"}]
    assert {"other": {"reference": f"Patient/{prior['id']}"}, "type": "replaces"} in survivor["link"]
    found = reader.find("", [hash_identifier("ACCM", KEY)], [], None, 1)
    assert found.service_request["subject"] == {"reference": f"Patient/{survivor['id']}"}
    assert found.patient["id"] == survivor["id"]
    # a study still filed under the old MRN joins the surviving patient by Patient ID + date
    by_old_id = reader.find("", [], [hash_identifier("MRN999", KEY)], date(2025, 3, 1), 1)
    assert by_old_id is not None and by_old_id.patient["id"] == survivor["id"]


def test_join_prefers_study_uid_then_accession_then_patient_and_date(bridge):
    listener, _, reader = bridge
    client = MllpClient("127.0.0.1", listener.port)
    try:
        for raw in (omi("I1", accession="ACC-OMI", study_uid="1.2.3.99"), orm("O2", accession="ACC-ORM")):
            assert msa(client.send(raw.encode())[0])[0] == "AA"
    finally:
        client.close()
    acc = hash_identifier("ACC-ORM", KEY)
    assert reader.find("1.2.3.99", [acc], [], None, 1).match == "study_uid"
    assert reader.find("9.9", [acc], [], None, 1).match == "accession"
    by_date = reader.find("9.9", [], [hash_identifier("MRN123", KEY)], date(2025, 3, 2), 0)
    assert by_date.match == "patient+date"
    assert by_date.service_request["identifier"][-1]["value"] == "ACC-OMI"  # ordered for 03-02
    assert reader.find("9.9", [], [hash_identifier("MRN123", KEY)], date(2025, 4, 1), 1) is None


def test_mllp_over_tls(tmp_path, pki):
    """Only the senders named in hl7.senders (here: certificate subject "client" as ADT/HOSP)
    get through; another MSH-3 on the same certificate is refused (AR) and audited (issue 13)."""
    senders = ({"subject": "client", "application": "ADT", "facility": "HOSP"},)
    listener, ledger = make_listener(StorageConfig(var_dir=str(tmp_path)), pki.server(), senders=senders)
    try:
        ctx = client_context(pki.client())
        client = MllpClient("127.0.0.1", listener.port, ssl_context=ctx, server_hostname="localhost")
        try:
            assert client._sock.version() in ("TLSv1.2", "TLSv1.3")
            assert msa(client.send(adt().encode())[0]) == ("AA", "ADT0001")
            refused = client.send(orm("STAT1").encode())[0]  # MSH-3 RIS: not this peer's
            assert msa(refused) == ("AR", "STAT1") and err(refused) == ("MSH^1^3", "207")
        finally:
            client.close()
        [event] = [e for e in ledger.audit.events() if e.type == "hl7_peer_refused"]
        assert event.detail["control_id"] == "STAT1" and event.detail["peer"].endswith(" cn=client")
        plain = socket.create_connection(("127.0.0.1", listener.port), timeout=10)
        try:
            plain.sendall(START + adt("A01", "PLAIN").encode() + END)
            with pytest.raises((ConnectionError, ssl.SSLError, TimeoutError, OSError)):
                data = plain.recv(100)
                if not data:
                    raise ConnectionError("closed")
        finally:
            plain.close()
    finally:
        listener.stop()
        ledger.close()


def test_a_peer_no_sender_entry_names_is_closed_as_it_connects_and_audited_once(tmp_path):
    """Until stop 31 such a peer got an AR, and an audit event, for every message it sent."""
    senders = ({"address": "10.0.0.0/24", "application": "RIS", "facility": "HOSP"},)  # not loopback
    listener, ledger = make_listener(StorageConfig(var_dir=str(tmp_path)), senders=senders)
    try:
        for _ in range(2):
            sock = socket.create_connection(("127.0.0.1", listener.port), timeout=10)
            try:
                sock.sendall(START + orm("NOPE1").encode() + END)
                assert sock.recv(100) == b""  # closed, nothing answered
            except ConnectionResetError:
                pass  # closed while our bytes were in flight: refused all the same
            finally:
                sock.close()
        assert wait_until(lambda: len(refusals(ledger)) == 2, 10)
        assert all(e.detail["peer"].startswith("127.0.0.1:") for e in refusals(ledger))
        assert all("not in hl7.senders" in e.detail["reason"] for e in refusals(ledger))
        assert sum(listener.counts.values()) == 0  # no message reached the intake
    finally:
        listener.stop()
        ledger.close()
    allowed = ({"address": "127.0.0.1", "application": "RIS", "facility": "HOSP"},)
    listener, ledger = make_listener(StorageConfig(var_dir=str(tmp_path / "b")), senders=allowed)
    client = MllpClient("127.0.0.1", listener.port)
    try:
        assert msa(client.send(orm("YES1").encode())[0]) == ("AA", "YES1")
        assert msa(client.send(adt().encode())[0])[0] == "AR"  # MSH-3 ADT: not this peer's entry
        assert [e.detail["control_id"] for e in refusals(ledger)] == ["ADT0001"]
    finally:
        client.close()
        listener.stop()
        ledger.close()


def refusals(ledger: Ledger) -> list:
    return [e for e in ledger.audit.events() if e.type == "hl7_peer_refused"]


def test_every_message_is_audited_without_phi(bridge):
    listener, ledger, _ = bridge
    client = MllpClient("127.0.0.1", listener.port)
    try:
        for raw in (adt("A01", "AU1"), orm("AU2"), orm("AU2"), "garbage"):
            client.send(raw.encode())
    finally:
        client.close()
    assert wait_until(lambda: len(ledger.audit.events()) >= 3, 10)
    listener.audit_once()
    events = ledger.audit.events()
    received = [e for e in events if e.type == "hl7_received"]
    assert {e.detail["control_id"] for e in received} == {"AU1", "AU2"}
    assert [e.type for e in events].count("hl7_rejected") == 1
    text = str(events)
    for phi in ("SYNTHETIC", "MRN123", "19700615", "ACC3003", "Chest pain"):
        assert phi not in text
    assert ledger.audit.verify() is None


def _serve_in_child(root: str, ports) -> None:  # runs in a spawned process
    listener, _ = make_listener(StorageConfig(var_dir=root))
    ports.put(listener.port)
    time.sleep(3600)


def test_an_acknowledged_message_survives_kill_9_and_is_not_applied_again(tmp_path):
    """AA only after the commit: kill -9 right after the ACK, restart, resend -> one order."""
    import multiprocessing as mp
    import os
    import signal

    ctx = mp.get_context("spawn")
    for _attempt in range(2):
        ports = ctx.Queue()
        child = ctx.Process(target=_serve_in_child, args=(str(tmp_path), ports))
        child.start()
        try:
            client = MllpClient("127.0.0.1", ports.get(timeout=60))
            [reply] = client.send(orm("KILL1").encode())
            os.kill(child.pid, signal.SIGKILL)  # no shutdown, no flush: only what was committed
            client.close()
        finally:
            child.join(30)
        assert msa(reply) == ("AA", "KILL1")
    reader = ContextReader(open_context(StorageConfig(var_dir=str(tmp_path))))
    try:
        [row] = reader.inbox()
        assert (row["control_id"], row["status"], row["resends"]) == ("KILL1", "applied", 1)
        assert [r["_version"] for r in resources(reader, "ServiceRequest")] == [1]
    finally:
        reader.close()


def patients_by_name(reader: ContextReader) -> dict[str, dict]:
    return {p["name"][0]["family"]: p for p in resources(reader, "Patient")}


def test_the_same_id_from_two_assigning_authorities_is_two_patients(bridge):
    """Issue #16, 1: 4711 from authority A and 4711 from authority B are different people."""
    listener, _, reader = bridge
    client = MllpClient("127.0.0.1", listener.port)
    try:
        for raw in (
            adt("A01", "ID1", pid3="4711^^^A^MR", name="ALPHA^ANNA", visit="V1^^^A^VN"),
            adt("A01", "ID2", pid3="4711^^^B^MR", name="BRAVO^BERT", visit="V2^^^B^VN"),
            orm("ID3", pid3="4711^^^A^MR", name="ALPHA^ANNA", accession="ACC-A"),
        ):
            assert msa(client.send(raw.encode())[0])[0] == "AA"
    finally:
        client.close()
    patients = patients_by_name(reader)
    assert set(patients) == {"ALPHA", "BRAVO"}  # nobody was renamed into somebody else
    subjects = {
        e["identifier"][0]["value"]: e["subject"]["reference"]
        for e in resources(reader, "Encounter")
        if "identifier" in e
    }
    assert subjects["V1"] == f"Patient/{patients['ALPHA']['id']}"
    assert subjects["V2"] == f"Patient/{patients['BRAVO']['id']}"
    order = reader.find("", [hash_identifier("ACC-A", KEY)], [], None, 1)
    assert order.patient["id"] == patients["ALPHA"]["id"]
    # A study that carries only the bare Patient ID 4711 cannot tell A from B: no join.
    assert reader.find("", [], [hash_identifier("4711", KEY)], date(2025, 3, 1), 1) is None


def test_bare_ids_from_two_sending_facilities_are_never_matched(bridge):
    listener, _, reader = bridge
    client = MllpClient("127.0.0.1", listener.port)
    try:
        for raw in (
            adt("A01", "F1", pid3="4711", name="NORTH^NINA", facility="NORTH"),
            adt("A01", "F2", pid3="4711", name="SOUTH^SAM", facility="SOUTH"),
            adt("A08", "F3", pid3="4711", name="NORTH^NINA", sex="M", facility="NORTH"),
        ):
            assert msa(client.send(raw.encode())[0])[0] == "AA"
    finally:
        client.close()
    patients = patients_by_name(reader)
    assert set(patients) == {"NORTH", "SOUTH"}
    assert (patients["NORTH"]["gender"], patients["SOUTH"]["gender"]) == ("male", "female")


def test_lf_and_crlf_separated_messages_with_a_charset_are_applied(bridge):
    """Issue #16, 3 and 4: real interfaces send LF or CRLF and write 'UTF-8' or 'UNICODE'."""
    listener, _, reader = bridge
    client = MllpClient("127.0.0.1", listener.port)
    try:
        for control, sep, label in (
            ("LF1", "\n", "UTF-8"),
            ("CRLF1", "\r\n", "UNICODE"),
            ("LF2", "\n", "UNICODE UTF-8"),
        ):
            raw = adt("A01", control, name="MÜLLER^JÖRG", extra="||||||" + label)
            [reply] = client.send(raw.replace("\r", sep).encode("utf-8"))
            assert msa(reply) == ("AA", control), reply
    finally:
        client.close()
    assert the(reader, "Patient")["name"][0]["family"] == "MÜLLER"


def test_bytes_that_do_not_decode_get_ae_naming_the_field_never_ar(bridge):
    listener, _, reader = bridge
    client = MllpClient("127.0.0.1", listener.port)
    try:
        raw = adt("A01", "BADUTF", extra="||||||UTF-8").encode().replace(b"SYNTHETIC", b"SYN\xffTHETIC")
        [reply] = client.send(raw)
    finally:
        client.close()
    assert msa(reply) == ("AE", "BADUTF")
    assert err(reply) == ("PID^1^5", "102")
    assert [(r["control_id"], r["status"]) for r in reader.inbox()] == [("BADUTF", "invalid")]
    assert reader.count("resources") == 0


def test_a_frame_ending_in_fs_without_cr_is_answered_on_the_fs(bridge):
    """Issue #16, 6: answer on FS; a CR that follows later belongs to that frame, not the next."""
    listener, _, _ = bridge
    client = MllpClient("127.0.0.1", listener.port, timeout_s=3)
    try:
        client.send_raw(START + adt("A01", "FS1").encode() + b"\x1c")  # no CR after FS
        assert msa(client.receive()[0]) == ("AA", "FS1")  # before any further byte arrives
        client.send_raw(b"\r" + START + adt("A01", "FS2").encode() + END)
        assert msa(client.receive()[0]) == ("AA", "FS2")
        client.send_raw(START + adt("A01", "FS3").encode() + b"\x1c" + START + adt("A01", "FS4").encode() + b"\x1c")
        assert [msa(r) for r in client.receive(2)] == [("AA", "FS3"), ("AA", "FS4")]
    finally:
        client.close()


def test_an_ar_for_a_broken_msh2_still_names_the_message(bridge):
    """Issue #16, 7: MSA-2 and MSH-9 of the AR come from the raw bytes when MSH-2 is broken."""
    listener, _, _ = bridge
    client = MllpClient("127.0.0.1", listener.port)
    try:
        [reply] = client.send(orm("BROKEN2").replace("MSH|^~\\&|", "MSH|^~\\\\&|", 1).encode())
    finally:
        client.close()
    assert msa(reply) == ("AR", "BROKEN2")
    assert err(reply) == ("MSH^1^2", "102")
    msh = hl7.parse(reply.decode()).segment("MSH")
    assert (str(msh(9)), str(msh(5)), str(msh(6))) == ("ACK^O01^ACK", "RIS", "HOSP")


def test_enhanced_mode_with_msh16_empty_reports_application_errors(bridge):
    """Issue #16, 9: MSH-15 = AL and MSH-16 empty: HL7's default application ACK is AL."""
    listener, _, _ = bridge
    client = MllpClient("127.0.0.1", listener.port)
    try:
        bad = orm("E6", extra="|||AL|").replace("36554-4^XR Chest 2 Views^LN", "")
        replies = client.send(bad.encode(), 2)
        assert [msa(r) for r in replies] == [("CA", "E6"), ("AE", "E6")]
        assert err(replies[1]) == ("OBR^1^4", "101")
        assert [msa(r)[0] for r in client.send(orm("E7", extra="|||AL|").encode(), 2)] == ["CA", "AA"]
    finally:
        client.close()


def test_an_order_with_an_odd_optional_patient_class_is_applied_with_a_warning(bridge):
    listener, _, reader = bridge
    client = MllpClient("127.0.0.1", listener.port)
    try:
        [reply] = client.send(orm("PV1Z", patient_class="Z").encode())
        [second] = client.send(adt("A01", "MSH2X").encode() + adt("A01", "MSH2Y").encode())
    finally:
        client.close()
    assert msa(reply) == ("AA", "PV1Z")
    seg = hl7.parse(reply.decode()).segment("ERR")
    assert (str(seg(2)), str(seg(3)(1)(1)), str(seg(4))) == ("PV1^1^2", "103", "W")
    assert reader.count("orders") == 1
    assert msa(second) == ("AR", "MSH2X") and err(second) == ("MSH^2", "100")


def test_health_reports_the_server_thread_and_both_loops(tmp_path):
    """Issue 9, 5: the MLLP server's thread, the audit pump and the WAL checkpoint report
    whether they really run; an event loop that stopped is a listener that is down."""
    from core.health import ActorHealth, HealthStatus

    listener, ledger = make_listener(StorageConfig(var_dir=str(tmp_path)))
    try:
        client = MllpClient("127.0.0.1", listener.port)
        try:
            assert msa(client.send(adt().encode())[0]) == ("AA", "ADT0001")
        finally:
            client.close()
        assert [loop.name for loop in listener.loops] == ["hl7-audit", "context-checkpoint"]
        assert wait_until(lambda: all(loop.health().last_work_at for loop in listener.loops), 10)
        server = listener.server_health()
        assert (server.name, server.alive, server.rounds) == ("mllp-server", True, 1)
        assert server.last_work_at > 0
        event_loop = listener._server._loop
        event_loop.call_soon_threadsafe(event_loop.stop)  # the server's thread ends
        assert wait_until(lambda: not listener.server_health().alive, 10)
        health = ActorHealth(
            "hl7_listener", 1, loops=(listener.server_health(), *(loop.health() for loop in listener.loops))
        )
        assert health.status is HealthStatus.DOWN
        listener._server._thread = threading.Thread(target=event_loop.run_forever, daemon=True)
        listener._server._thread.start()  # back, so that stop() can close it
        assert wait_until(lambda: listener.server_health().alive, 10)
    finally:
        listener.stop()
    assert not any(loop.health().alive for loop in listener.loops)
    assert not listener.server_health().alive
    ledger.close()
