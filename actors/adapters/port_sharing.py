"""Associations evened out over the listener processes that share one port (``SO_REUSEPORT``).

The kernel hashes each new connection to one of the sockets sharing a port, whatever each
process is doing: four senders land on two listener processes 2:2 in only three cases of eight,
and 4:0 in one (bench_ingest: one process served every association while the other idled).
Here each process that accepts a plain (not TLS) connection while it serves more associations
than its least busy sibling passes the connected socket over to that sibling (``SCM_RIGHTS``
over a Unix datagram socket), which serves it as its own; the accepting process closes its copy.
Nothing of the association has happened yet (not one byte was read), so the peer sees nothing.

The siblings find each other in a small table beside the spool (``listeners/port-<port>.json``
in the var directory,
read and written under ``flock``): per process its socket's name and how many associations it
serves. The accepting process counts each connection where it goes, itself or the sibling (so
that two connections arriving at once do not both go to the same idle process), and the
process serving it uncounts it when it closes (EVT_CONN_CLOSE). A sibling that is gone (its socket
refuses) is dropped from the table and the connection is served where it arrived. A TLS
connection is never passed (its handshake happened on accept, in this process's TLS state).

Only processes of this user are heard: the receiver checks the sender's credentials
(``SO_PASSCRED``) and closes anything else it is sent.
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import json
import logging
import os
import secrets
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["PortSharing"]

logger = logging.getLogger(__name__)

_CREDS = struct.Struct("3i")  # struct ucred: pid, uid, gid
_FD = array.array("i").itemsize
_SPACE = socket.CMSG_SPACE(_FD * 4) + socket.CMSG_SPACE(_CREDS.size)


class PortSharing:
    """This process's side of the hand-over between the listener processes of one port."""

    def __init__(self, directory: Path, port: int, serve: Callable[[socket.socket, Any], None]) -> None:
        """Open this process's receiving socket and enter the table.

        Args:
            directory: The rendezvous directory (``<var>/listeners``), shared by the siblings.
            port: The shared port (one table per port).
            serve: Serves a connection passed to us: ``serve(sock, peer_address)``.
        """
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._table = directory / f"port-{port}.json"
        self._serve = serve
        self.name = f"pacsai-listener-{port}-{os.getpid()}-{secrets.token_hex(6)}"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self._sock.bind("\0" + self.name)  # abstract namespace: no file, no path length limit
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self.passed = 0
        """Connections this process passed to a sibling."""
        self.taken = 0
        """Connections siblings passed to this process."""
        with self._rows() as rows:
            rows[self.name] = 0
        self._thread = threading.Thread(target=self._receive_forever, name="port-sharing", daemon=True)
        self._thread.start()

    @contextlib.contextmanager
    def _rows(self) -> Iterator[dict[str, int]]:
        """The table (socket name -> associations served), locked; written back on exit."""
        fd = os.open(self._table, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            raw = os.pread(fd, 1 << 20, 0)
            try:
                rows = {str(k): int(v) for k, v in json.loads(raw or b"{}").items()}
            except (ValueError, AttributeError):
                rows = {}  # a torn or foreign file: start afresh
            yield rows
            data = json.dumps(rows).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
        finally:
            os.close(fd)  # releases the flock

    def place(self, conn: socket.socket) -> bool:
        """A connection was accepted here: pass it to the least busy sibling if it serves fewer
        associations than this process does; count it where it goes.

        Returns:
            Whether it was passed (the caller closes its copy and serves nothing).
        """
        if self._stop.is_set():  # left the table: serve it here
            return False
        with self._rows() as rows:
            mine = rows.get(self.name, 0)
            others = sorted((n, name) for name, n in rows.items() if name != self.name)
            for load, name in others:
                if load >= mine:
                    break
                try:
                    rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [conn.fileno()]))]
                    self._sock.sendmsg([b"c"], rights, 0, "\0" + name)  # (socket.send_fds ignores its address)
                except (TimeoutError, BlockingIOError):  # its queue is full: busy enough
                    continue
                except OSError:  # that sibling is gone: forget it, try the next
                    del rows[name]
                    continue
                rows[name] = load + 1
                self.passed += 1
                return True
            rows[self.name] = mine + 1
        return False

    def closed(self) -> None:
        """A connection of ours closed (EVT_CONN_CLOSE): uncount it."""
        with self._rows() as rows:
            if self.name in rows:
                rows[self.name] = max(0, rows[self.name] - 1)

    def _receive_forever(self) -> None:
        while not self._stop.is_set():
            try:
                self._receive_one()
            except TimeoutError:
                continue
            except OSError:
                return  # closed

    def _receive_one(self) -> None:
        """Receive one passed connection and serve it (what is not ours is closed).

        Raises:
            TimeoutError: Nothing came within the socket's timeout.
            OSError: The socket is closed (or, non-blocking, nothing is queued).
        """
        _msg, ancillary, _flags, _addr = self._sock.recvmsg(16, _SPACE)
        fds: list[int] = []
        uid = -1
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds += array.array("i", data[: len(data) - len(data) % _FD]).tolist()
            elif level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                _pid, uid, _gid = _CREDS.unpack(data[: _CREDS.size])
        if uid != os.getuid() or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            if fds:
                logger.warning("port sharing: a connection passed by another user (uid %d) was closed", uid)
            return
        self._take(fds[0])

    def _take(self, fd: int) -> None:
        conn = socket.socket(fileno=fd)
        try:
            peer = conn.getpeername()
        except OSError:  # the peer left meanwhile
            conn.close()
            self.closed()
            return
        self.taken += 1
        self._serve(conn, peer)

    def close(self) -> None:
        """Leave the table, then serve what siblings passed before they saw us leave (they
        pass under the table's lock, so nothing comes after), and stop receiving."""
        with self._rows() as rows:
            rows.pop(self.name, None)
        self._stop.set()
        self._thread.join(2.0)
        self._sock.setblocking(False)
        with contextlib.suppress(OSError):  # BlockingIOError: none left
            while True:
                self._receive_one()
        self._sock.close()
