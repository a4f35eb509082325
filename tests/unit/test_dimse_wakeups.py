"""Issue 14: the listener's association loops wait for work (``actors.adapters.dimse_wakeups``),
on pynetdicom's own association, DUL and socket objects (not started: no thread runs them)."""

from __future__ import annotations

import select
import socket
import ssl
import threading
from typing import Any

import pytest
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.transport import AssociationSocket

from actors.adapters import dimse_wakeups
from actors.adapters.dimse_wakeups import REACTOR_DELAY_S, connection_closed, wait_for_work


def _acceptor() -> Association:
    return Association(AE(), "acceptor")


def _rung(bell: Any) -> bool:
    return bool(select.select([bell], [], [], 0)[0])


def test_queued_work_wakes_the_loop_it_is_for_and_what_was_queued_is_kept():
    assoc = _acceptor()
    assoc.dul.event_queue.put("Evt5")  # as the acceptor's socket queues it before the threads start
    assert wait_for_work(assoc)
    assert list(assoc.dul.event_queue.queue) == ["Evt5"]
    work, bell = assoc._pacsai_work, assoc._pacsai_bell
    assert not work.is_set() and not _rung(bell)  # moved, not put: the DUL's first pass finds it
    assoc.dul.to_provider_queue.put("a response")  # the handler's answer: the DUL must send it
    assert _rung(bell) and not work.is_set()
    bell.answer()
    assoc.dimse.msg_queue.put((1, "a request"))  # a complete DIMSE message: the reactor serves it
    assert work.is_set() and not _rung(bell)
    work.clear()
    assoc.dul.to_user_queue.put("A-RELEASE")
    assert work.is_set()
    assert assoc.dimse.msg_queue.get(block=False) == (1, "a request")  # still a queue


def test_a_started_association_or_queues_set_up_by_someone_else_are_left_alone():
    assoc = _acceptor()
    assoc.dimse.msg_queue = dimse_wakeups._WakingQueue(lambda: None, assoc.dimse.msg_queue)
    assert not wait_for_work(assoc)
    running = _acceptor()
    running.dul.is_alive = lambda: True  # type: ignore[method-assign]
    assert not wait_for_work(running)


def test_only_the_loops_own_sleeps_in_their_own_threads_wait_for_work(monkeypatch):
    slept: list[float] = []
    monkeypatch.setattr(dimse_wakeups.time, "sleep", slept.append)
    clock = dimse_wakeups._ReactorTime("_waits")
    clock.sleep(0.001)  # a thread of nobody's: the plain sleep
    assert slept == [0.001]
    assert clock.monotonic() > 0  # everything else is time's

    waited: list[float] = []
    thread = threading.current_thread()
    monkeypatch.setattr(thread, "_waits", lambda s: waited.append(s) or s == REACTOR_DELAY_S, raising=False)
    clock.sleep(REACTOR_DELAY_S)
    clock.sleep(0.01)  # not the loop's: declined, so slept
    assert waited == [REACTOR_DELAY_S, 0.01] and slept == [0.001, 0.01]


def test_the_association_reactor_returns_at_once_for_a_queued_message_and_else_waits(monkeypatch):
    assoc = _acceptor()
    assert wait_for_work(assoc)
    assoc.dul.is_alive = lambda: True  # type: ignore[method-assign]
    idle = getattr(assoc, dimse_wakeups._ASSOC_IDLE)
    waits: list[float | None] = []
    monkeypatch.setattr(assoc._pacsai_work, "wait", lambda timeout=None: waits.append(timeout) or False)
    assert not idle(0.01)  # kill()'s sleep, not the loop's
    assoc.dimse.msg_queue.put((1, "one"))
    assoc.dimse.msg_queue.put((1, "two"))  # two arrived during one pass: the next pass must not wait
    assert idle(REACTOR_DELAY_S) and waits == []
    assoc.dimse.msg_queue.queue.clear()
    assert idle(REACTOR_DELAY_S) and waits == [dimse_wakeups.IDLE_S]


@pytest.fixture
def tls_pair(pki):
    """A connected TLS server/client socket pair over loopback, with the test PKI."""
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(pki.server_cert, pki.server_key)
    client_ctx = ssl.create_default_context(cafile=str(pki.ca))
    raw_server, raw_client = socket.socketpair()
    out: dict[str, ssl.SSLSocket] = {}
    t = threading.Thread(target=lambda: out.update(server=server_ctx.wrap_socket(raw_server, server_side=True)))
    t.start()
    client = client_ctx.wrap_socket(raw_client, server_hostname="localhost")
    t.join(10)
    yield out["server"], client
    out["server"].close()
    client.close()


def test_the_dul_never_waits_while_tls_holds_decrypted_bytes(tls_pair, monkeypatch):
    server, client = tls_pair
    assoc = _acceptor()
    assoc.set_socket(AssociationSocket(assoc, client_socket=server))
    assert wait_for_work(assoc)
    assoc.dul.event_queue.queue.clear()
    idle = getattr(assoc.dul, dimse_wakeups._DUL_IDLE)
    delay = assoc.dul._run_loop_delay
    selects: list[list[Any]] = []

    def recording_select(r: list[Any], w: list[Any], x: list[Any], timeout: float) -> Any:
        selects.append(r)
        return [], [], []

    monkeypatch.setattr(dimse_wakeups.select, "select", recording_select)
    assert idle(delay) and len(selects) == 1 and server in selects[0]  # nothing to read: it waits
    client.sendall(b"P" * 100)  # one TLS record
    monkeypatch.undo()
    select.select([server], [], [], 5)
    assert server.recv(1) == b"P"  # the whole record is decrypted; 99 bytes stay in the TLS buffer
    assert server.pending() == 99 and not select.select([server], [], [], 0)[0]  # invisible to select
    monkeypatch.setattr(dimse_wakeups.select, "select", recording_select)
    selects.clear()
    assert idle(delay) and selects == []  # the loop goes on to read them


def test_the_doorbell_is_closed_with_the_connection_and_rings_no_more():
    assoc = _acceptor()
    assert wait_for_work(assoc)
    bell = assoc._pacsai_bell
    fd = bell.fileno()
    connection_closed(assoc)
    assert bell.closed and assoc._pacsai_work.is_set()
    with pytest.raises(OSError):
        select.select([fd], [], [], 0)  # the descriptor is closed
    assoc.dul.to_provider_queue.put("late")  # rings nothing, raises nothing
    idle = getattr(assoc.dul, dimse_wakeups._DUL_IDLE)
    assert not idle(assoc.dul._run_loop_delay)  # pynetdicom's own sleep until it is stopped
