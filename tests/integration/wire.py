"""A recording TCP relay: what an SCU really sent, byte for byte.

dcmtk's storescu does not send a file's bytes as they are on disk: it parses the file and
encodes the data set again (sequences and items get explicit lengths, Data Set Trailing Padding
(FFFC,FFFC) is dropped, group lengths are recomputed, encapsulated Pixel Data becomes OB,
deflated data is compressed again). So "the spool equals the file" is the wrong check for it;
"the spool equals the wire" is the right one. This relay sits between the SCU and the listener,
forwards every byte both ways, and reassembles the data sets the SCU sent from the P-DATA-TF
PDUs (PS3.8 9.3.5: each PDV item has a message control header whose bit 0 says command (1) or
data set (0) and whose bit 1 says last fragment).
"""

from __future__ import annotations

import socket
import struct
import threading

__all__ = ["RecordingRelay"]


class _PduParser:
    """Incremental parser of one direction of an association: collects sent data sets."""

    def __init__(self, sink: list[bytes]) -> None:
        self._buffer = bytearray()
        self._dataset = bytearray()
        self._sink = sink

    def feed(self, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) >= 6:
            kind, _, length = struct.unpack(">BBL", self._buffer[:6])
            if len(self._buffer) < 6 + length:
                return
            pdu = bytes(self._buffer[6 : 6 + length])
            del self._buffer[: 6 + length]
            if kind == 0x04:
                self._pdvs(pdu)

    def _pdvs(self, pdu: bytes) -> None:
        pos = 0
        while pos + 6 <= len(pdu):
            (item_length,) = struct.unpack(">L", pdu[pos : pos + 4])
            control = pdu[pos + 5]
            fragment = pdu[pos + 6 : pos + 4 + item_length]
            if not control & 0x01:  # a data set fragment, not a command
                self._dataset += fragment
                if control & 0x02:
                    self._sink.append(bytes(self._dataset))
                    self._dataset = bytearray()
            pos += 4 + item_length


class RecordingRelay:
    """Listens on a free local port and relays each connection to ``upstream_port``."""

    def __init__(self, upstream_port: int) -> None:
        self._upstream = upstream_port
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._server.getsockname()[1])
        self.datasets: list[bytes] = []
        """Every data set an SCU sent through the relay, in order."""
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._active = 0
        self._thread = threading.Thread(target=self._accept, daemon=True, name="relay")
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return  # closed
            with self._lock:
                self._active += 1
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        found: list[bytes] = []
        try:
            upstream = socket.create_connection(("127.0.0.1", self._upstream))
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            back = threading.Thread(target=_pump, args=(upstream, client, None), daemon=True)
            back.start()
            _pump(client, upstream, _PduParser(found))
            back.join(timeout=30)
            upstream.close()
        finally:
            client.close()
            with self._idle:
                self.datasets += found
                self._active -= 1
                self._idle.notify_all()

    def wait_idle(self, timeout_s: float = 30.0) -> bool:
        """Wait until every relayed connection has ended (and its data sets are recorded)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._active == 0, timeout_s)

    def close(self) -> None:
        """Stop accepting connections."""
        self._server.close()


def _pump(src: socket.socket, dst: socket.socket, parser: _PduParser | None) -> None:
    try:
        while data := src.recv(65536):
            if parser is not None:
                parser.feed(data)
            dst.sendall(data)
    except OSError:
        pass  # either side closed: the association is over
    finally:
        for s, how in ((dst, socket.SHUT_WR), (src, socket.SHUT_RD)):
            try:
                s.shutdown(how)
            except OSError:
                pass  # already closed by the peer
