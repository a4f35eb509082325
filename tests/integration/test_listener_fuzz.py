"""The listener against a raw-socket peer that speaks broken DICOM upper layer (PS3.8) bytes.

pynetdicom is the DUL; these tests check what it and our listener do together. For every case
the peer sends bytes, then waits for an answer: the listener must answer (A-ASSOCIATE-RJ,
A-ABORT, a C-STORE failure status) or close the connection, within the network timeout, and
keep serving: a normal C-STORE with dcmtk storescu succeeds after (and during) the abuse, and no
association thread is left behind.

Found and fixed here: the accepted socket had no timeout, so a peer that stopped in the middle
of a PDU (or announced more bytes than it sent) held an association slot and a thread forever.
Fixed since (issue 13): pynetdicom's DUL reads a whole PDU into memory before parsing it, so
a peer that announced a huge PDU and streamed it made the listener buffer it; the association
socket now refuses a PDU announcing more than ``listener.max_pdu_size`` allows
(``tests/integration/test_hostile_input.py``).
"""

from __future__ import annotations

import random
import shutil
import socket
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pynetdicom.dsutils import decode, encode

from actors.adapters.dimse import Listener
from core.config import ListenerConfig, StorageConfig
from demo.dcmtk import storescu
from state.ledger import open_ledger

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("storescu") is None, reason="dcmtk is not installed"),
]

TIMEOUT_S = 2.0
CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
A_ASSOCIATE_AC, A_ASSOCIATE_RJ, P_DATA, A_ABORT = 0x02, 0x03, 0x04, 0x07


# ------------------------------------------------------------------ PS3.8 9.3 encoders
def _item(kind: int, body: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(body)) + body


def associate_rq(
    called: str = "PACSAI", calling: str = "FUZZ", contexts=((1, CT, (EXPLICIT_LE,)),), max_pdu: int = 16384
) -> bytes:
    """A-ASSOCIATE-RQ (PS3.8 9.3.2) with the given presentation contexts."""
    items = _item(0x10, b"1.2.840.10008.3.1.1.1")
    for cid, abstract, syntaxes in contexts:
        body = bytes([cid, 0, 0, 0]) + _item(0x30, abstract.encode())
        body += b"".join(_item(0x40, ts.encode()) for ts in syntaxes)
        items += _item(0x20, body)
    items += _item(0x50, _item(0x51, struct.pack(">I", max_pdu)) + _item(0x52, b"1.2.3.4.5.6"))
    head = struct.pack(">HH", 1, 0) + called.ljust(16).encode() + calling.ljust(16).encode() + bytes(32)
    return _pdu(0x01, head + items)


def _pdu(kind: int, body: bytes) -> bytes:
    return struct.pack(">BBL", kind, 0, len(body)) + body


def p_data(cid: int, control: int, data: bytes) -> bytes:
    """P-DATA-TF with one PDV (control bit 0: command, bit 1: last fragment)."""
    return _pdu(P_DATA, struct.pack(">LBB", len(data) + 2, cid, control) + data)


def store_command(sop_instance_uid: str = "1.2.3.4.5.6.7.8") -> bytes:
    """A C-STORE-RQ command set (PS3.7 9.3.1), Implicit VR Little Endian with its group length."""
    cmd = Dataset()
    cmd.AffectedSOPClassUID = CT
    cmd.CommandField = 0x0001
    cmd.MessageID = 1
    cmd.Priority = 0
    cmd.CommandDataSetType = 0x0000
    cmd.AffectedSOPInstanceUID = sop_instance_uid
    body = encode(cmd, True, True)
    return struct.pack("<HHL", 0, 0, 4) + struct.pack("<L", len(body)) + body


# --------------------------------------------------------------------------- peer
def exchange(
    port: int, *chunks: bytes, pause_s: float = 0.05, await_reply: bool = False
) -> tuple[list[int], float, list[bytes]]:
    """Send ``chunks`` (pausing between them), then stay silent, connected, reading until the
    listener closes: the listener must end a broken conversation by itself. With
    ``await_reply`` the peer waits for the answer to its first chunk (the A-ASSOCIATE-AC)
    before it goes on, as a requestor must (PS3.8 9.2: Sta5).

    Returns:
        The PDU types received, the seconds until the connection ended, and the PDU bodies.
    """
    started = time.monotonic()
    kinds: list[int] = []
    bodies: list[bytes] = []
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S * 5) as sock:
        buffer = b""
        try:
            for index, chunk in enumerate(chunks):
                sock.sendall(chunk)
                wait = TIMEOUT_S if await_reply and index == 0 else pause_s
                buffer += _read_for(sock, wait, whole_pdu=wait > pause_s)  # before a reset drops it
            sock.settimeout(TIMEOUT_S * 5)
            while data := sock.recv(65536):
                buffer += data
        except OSError:
            pass  # the listener reset the connection: that ends it too
        while len(buffer) >= 6:
            kind, _, length = struct.unpack(">BBL", buffer[:6])
            kinds.append(kind)
            bodies.append(buffer[6 : 6 + length])
            buffer = buffer[6 + length :]
    return kinds, time.monotonic() - started, bodies


def _read_for(sock: socket.socket, seconds: float, *, whole_pdu: bool = False) -> bytes:
    """Read what arrives within ``seconds`` (or, with ``whole_pdu``, until one PDU is in)."""
    sock.settimeout(seconds)
    got = b""
    try:
        while data := sock.recv(65536):
            got += data
            if whole_pdu and len(got) >= 6 and len(got) >= 6 + struct.unpack(">L", got[2:6])[0]:
                break
    except TimeoutError:
        pass  # nothing more for now
    return got


@pytest.fixture
def listener(tmp_path):
    ledger = open_ledger(StorageConfig(var_dir=str(tmp_path)))
    cfg = ListenerConfig(port=0, min_free_bytes=0, network_timeout_s=TIMEOUT_S, max_associations=32)
    lst = Listener(cfg, tmp_path / "spool", tmp_path / "rejected", ledger, quiet_period_s=60.0)
    lst.start()
    yield lst, ledger
    lst.stop()
    ledger.close()


def still_serves(lst: Listener) -> None:
    res = storescu([Path(get_testdata_file("CT_small.dcm"))], "127.0.0.1", lst.port, "PACSAI")
    assert res.returncode == 0, res.stderr[-300:]


def _random_cases(seed: int = 4) -> list[bytes]:
    rng = random.Random(seed)
    valid = associate_rq()
    cases = [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))) for _ in range(12)]
    for _ in range(12):  # a valid A-ASSOCIATE-RQ with a few bytes changed
        data = bytearray(valid)
        for _ in range(rng.randrange(1, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        cases.append(bytes(data))
    return cases


MALFORMED = {
    "unknown PDU type 0x09": _pdu(0x09, b"abcd"),
    "PDU type 0x00": _pdu(0x00, b""),
    "P-DATA before association": p_data(1, 0x03, store_command()),
    "A-RELEASE-RQ before association": _pdu(0x05, bytes(4)),
    "A-ASSOCIATE-AC sent to an acceptor": _pdu(A_ASSOCIATE_AC, bytes(68)),
    "A-ASSOCIATE-RQ shorter than it says, then close": associate_rq()[:40],
    "A-ASSOCIATE-RQ longer than it says": associate_rq()[:6] + associate_rq()[6:] + b"\x00" * 50,
    "A-ASSOCIATE-RQ with a variable item overrunning the PDU": associate_rq()[:-30] + b"\x50\x00\xff\xff",
    "A-ASSOCIATE-RQ without presentation contexts": associate_rq(contexts=()),
    "A-ASSOCIATE-RQ for another AE title": associate_rq(called="NOT_US"),
    "huge PDU length, then close": b"\x01\x00\xff\xff\xff\xff" + b"x" * 100,
    "six bytes of nothing": bytes(6),
    "a single byte": b"\x01",
}


def test_malformed_pdus_are_answered_or_closed_and_the_listener_keeps_serving(listener):
    """All cases at once (each may take the network timeout), then a normal C-STORE."""
    lst, _ = listener
    with ThreadPoolExecutor(len(MALFORMED)) as pool:
        results = dict(zip(MALFORMED, pool.map(lambda data: exchange(lst.port, data), MALFORMED.values()), strict=True))
    for name, (kinds, seconds, _) in results.items():
        assert seconds < TIMEOUT_S * 3, (name, seconds)
        assert set(kinds) <= {A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ABORT}, (name, kinds)
    assert results["A-ASSOCIATE-RQ for another AE title"][0] == [A_ASSOCIATE_RJ]
    assert results["unknown PDU type 0x09"][0] == [A_ABORT]
    assert results["P-DATA before association"][0] == [A_ABORT]
    still_serves(lst)


def test_random_bytes_and_mutated_requests_never_stop_the_listener(listener):
    lst, _ = listener
    still_serves(lst)  # start the listener's worker threads before counting
    baseline = threading.active_count()
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda data: exchange(lst.port, data), _random_cases()))
    assert all(seconds < TIMEOUT_S * 3 for _, seconds, _ in results), [s for _, s, _ in results]
    still_serves(lst)
    deadline = time.monotonic() + TIMEOUT_S * 3
    while threading.active_count() > baseline and time.monotonic() < deadline:
        time.sleep(0.1)  # association threads end after their peers
    assert threading.active_count() <= baseline


def test_a_peer_that_stalls_mid_pdu_is_cut_off_and_others_are_served_meanwhile(listener):
    lst, _ = listener
    stalls = [
        b"\x01\x00" + struct.pack(">L", 1000) + b"\x00\x01",  # announces 1000, sends 2
        b"\x01\x00\xff\xff\xff\xff" + b"x" * 100,  # announces 4 GiB
        associate_rq()[:3],
    ]  # not even a whole PDU header
    with ThreadPoolExecutor(len(stalls)) as pool:
        pending = [pool.submit(exchange, lst.port, data) for data in stalls]
        time.sleep(0.2)
        still_serves(lst)  # while three peers hold connections open
        for future in pending:
            kinds, seconds, _ = future.result()
            assert seconds < TIMEOUT_S * 3 and set(kinds) <= {A_ABORT}, (kinds, seconds)


def test_abrupt_closes_and_broken_messages_inside_an_association(listener, tmp_path):
    lst, ledger = listener
    rq = associate_rq()
    cases = {
        "close right after connecting": [],
        "close after the A-ASSOCIATE-RQ": [rq],
        "close in the middle of the data set": [rq, p_data(1, 0x03, store_command()), p_data(1, 0x00, b"\x08\x00")],
        "garbage command set": [rq, p_data(1, 0x03, b"\xde\xad\xbe\xef" * 8)],
        "PDV for a presentation context never proposed": [rq, p_data(77, 0x03, store_command())],
        "PDV length larger than its PDU": [rq, _pdu(P_DATA, struct.pack(">LBB", 5000, 1, 3) + b"x" * 10)],
        "data set before any command": [rq, p_data(1, 0x02, b"\x08\x00\x18\x00UI\x04\x001.2\x00")],
    }
    with ThreadPoolExecutor(len(cases)) as pool:
        results = dict(
            zip(
                cases,
                pool.map(lambda chunks: exchange(lst.port, *chunks, await_reply=True), cases.values()),
                strict=True,
            )
        )
    for name, chunks in cases.items():
        kinds, seconds, _ = results[name]
        assert seconds < TIMEOUT_S * 3, (name, seconds)
        assert set(kinds) <= {A_ASSOCIATE_AC, A_ABORT, P_DATA}, (name, kinds)
        if chunks:
            assert kinds[0] == A_ASSOCIATE_AC, (name, kinds)
    assert not ledger.intake.has_instance("1.2.3.4.5.6.7.8")  # nothing half-received was kept
    assert not list((tmp_path / "spool").rglob("*.part"))
    still_serves(lst)


def test_p_data_pipelined_before_the_association_is_accepted_is_aborted(listener):
    """A requestor may send P-DATA only after the A-ASSOCIATE-AC (PS3.8 9.2, Sta6). pynetdicom
    answers A-ABORT (AA-8) and then logs an InvalidEventError in its reactor thread when its own
    accept arrives in Sta13: noisy, but the thread ends and nothing leaks."""
    lst, _ = listener
    still_serves(lst)
    baseline = threading.active_count()
    for _ in range(6):
        kinds, seconds, _ = exchange(lst.port, associate_rq() + p_data(1, 0x03, store_command()))
        assert seconds < TIMEOUT_S * 3 and kinds and kinds[-1] == A_ABORT, kinds
    still_serves(lst)
    deadline = time.monotonic() + TIMEOUT_S * 3
    while threading.active_count() > baseline and time.monotonic() < deadline:
        time.sleep(0.1)
    assert threading.active_count() <= baseline


def test_an_unparseable_data_set_gets_a_failure_status_and_is_kept_aside(listener, tmp_path):
    lst, ledger = listener
    garbage = b"\x08\x00\x15\x11SQ\x00\x00\xff\xff\xff\xff" + bytes(range(1, 9)) * 4
    kinds, _, bodies = exchange(
        lst.port,
        associate_rq(),
        p_data(1, 0x03, store_command()),
        p_data(1, 0x02, garbage),
        _pdu(0x05, bytes(4)),
        await_reply=True,
    )
    assert kinds[0] == A_ASSOCIATE_AC
    [response] = [b for k, b in zip(kinds, bodies, strict=True) if k == P_DATA]
    command = decode(BytesIO(response[6:]), True, True)  # after the PDV header
    assert command.CommandField == 0x8001 and command.Status == 0xC000  # C-STORE-RSP: cannot understand
    rejected = [e for e in ledger.audit.events() if e.type == "instance_rejected"]
    assert rejected and list((tmp_path / "rejected").glob("*.dcm"))
    still_serves(lst)
