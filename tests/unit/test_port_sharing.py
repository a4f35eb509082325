"""The hand-over of connections between listener processes of one port (real sockets)."""

from __future__ import annotations

import json
import queue
import socket

from actors.adapters.port_sharing import PortSharing


def _connection() -> tuple[socket.socket, socket.socket]:
    """An accepted TCP connection on loopback and its client end."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
    return accepted, client


def test_a_busier_process_passes_a_connection_to_an_idler_sibling_and_forgets_a_gone_one(tmp_path):
    served: queue.Queue[tuple[socket.socket, object]] = queue.Queue()
    busy = PortSharing(tmp_path, 104, lambda conn, peer: served.put((conn, peer)))
    idle = PortSharing(tmp_path, 104, lambda conn, peer: served.put((conn, peer)))
    table = tmp_path / "port-104.json"
    try:
        first, first_client = _connection()
        assert not idle.place(first)  # 0 vs 0: kept where it arrived, counted there
        assert json.loads(table.read_text()) == {busy.name: 0, idle.name: 1}
        second, client = _connection()
        assert idle.place(second)  # 1 vs 0: passed
        second.close()  # the accepting process's copy
        conn, peer = served.get(timeout=5)
        assert peer == client.getsockname() and busy.taken == 1 and idle.passed == 1
        client.sendall(b"over")
        assert conn.recv(4) == b"over"  # the same connection, now served by the sibling
        assert json.loads(table.read_text()) == {busy.name: 1, idle.name: 1}
        busy.closed()
        busy._stop.set()
        busy._thread.join()
        busy._sock.close()  # gone without leaving the table (a crash)
        third, _third_client = _connection()
        assert not idle.place(third)  # the sibling refuses: forgotten, kept here
        assert json.loads(table.read_text()) == {idle.name: 2}
        conn.close()
    finally:
        idle.close()
    assert json.loads(table.read_text()) == {}
