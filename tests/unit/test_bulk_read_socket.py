"""The listener's association socket (``actors.adapters.dimse._BulkReadSocket``) keeps
pynetdicom's ``recv`` contract while reading each PDU in few calls: over a real socket pair,
with pynetdicom's own association socket object."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.transport import AssociationSocket

from actors.adapters.dimse import PduTooLong, _BulkReadSocket


def _bulk(sock: socket.socket, cap: int = 16 << 20) -> _BulkReadSocket:
    wrapper = AssociationSocket(Association(AE(), "acceptor"), client_socket=sock)
    wrapper.__class__ = _BulkReadSocket  # as the listener does at EVT_CONN_OPEN
    wrapper.pdu_cap = cap
    return wrapper  # type: ignore[return-value]


@pytest.fixture
def pair():
    peer, ours = socket.socketpair()
    ours.settimeout(10)  # as the listener sets its network timeout: a wrong read fails, never hangs
    yield peer, ours
    peer.close()
    ours.close()


def _drip(peer: socket.socket, data: bytes, piece: int) -> threading.Thread:
    def send() -> None:
        for i in range(0, len(data), piece):
            peer.sendall(data[i : i + piece])
            time.sleep(0.001)

    thread = threading.Thread(target=send)
    thread.start()
    return thread


def test_a_pdu_arriving_in_pieces_is_read_whole_and_the_next_read_starts_after_it(pair):
    peer, ours = pair
    reader = _bulk(ours)
    payload = os.urandom(600_000)
    sending = _drip(peer, payload + b"\x04\x00\x00\x00\x00\x0a", 50_000)
    got = reader.recv(len(payload))
    assert bytes(got) == payload
    assert bytes(reader.recv(6)) == b"\x04\x00\x00\x00\x00\x0a"
    sending.join()


def test_a_peer_that_closes_early_gives_what_arrived(pair):
    peer, ours = pair
    reader = _bulk(ours)
    peer.sendall(b"x" * 10)
    peer.close()
    assert bytes(reader.recv(12 << 20)) == b"x" * 10  # announced 12 MiB, sent 10 bytes


def test_an_announcement_over_the_cap_is_not_read(pair):
    peer, ours = pair
    reader = _bulk(ours, cap=8 << 20)
    peer.sendall(b"y" * 100)
    with pytest.raises(PduTooLong):
        reader.recv((8 << 20) + 1)
    assert bytes(reader.recv(100)) == b"y" * 100  # nothing was consumed by the refused read
