"""MLLP (HL7 v2 Minimal Lower Layer Protocol): framing, an asyncio server, a small client.

A frame is ``<VT> message <FS><CR>`` (0x0B ... 0x1C 0x0D). The server keeps connections open
and answers every frame in order, as interface engines expect (hl7apy's MLLPServer closes
after one message; python-hl7's asyncio server keeps the connection but parses inside the
reader, which leaves no room to answer garbage with an AR). Hostile input is bounded:

- bytes outside a frame are dropped (more than ``max_message_bytes`` of them in a row and the
  connection is closed: the peer is not speaking MLLP);
- a frame longer than ``max_message_bytes`` is read to its end block without keeping it and
  handed to the handler as *oversized* (it answers AR) - the connection keeps working;
- a new start block inside a frame abandons the partial frame (a sender that restarted);
- a frame ends at FS: it is answered at once, whether or not the CR follows, and a CR that
  comes after the FS (in the same read or the next) is taken as the frame's end, not as a
  stray byte (issue #16: waiting for the CR left FS-only senders without an ACK);
- a connection silent for ``idle_timeout_s`` is closed; beyond ``max_connections`` new
  connections are closed at once, and so are those beyond ``max_connections_per_peer`` from
  one IP address;
- a frame still incomplete ``frame_deadline_s`` after its start block closes the connection
  (a peer dripping a byte just inside the idle timeout holds nothing for long).

TLS (TLS 1.2+, ``actors.adapters.tls.server_context``) is the asyncio server's ``ssl``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from actors.adapters.tls import peer_label
from core.limits import PeerSlots

__all__ = ["END", "Frame", "MllpClient", "MllpFramer", "MllpServer", "START", "frame"]

logger = logging.getLogger(__name__)

START = b"\x0b"
END = b"\x1c\x0d"
_FS = 0x1C
_HEAD = 4096


def frame(payload: bytes) -> bytes:
    """Wrap a message in MLLP start and end blocks."""
    return START + payload + END


@dataclass(frozen=True, slots=True)
class Frame:
    """One received frame: its payload, or its first bytes when it was oversized."""

    payload: bytes
    size: int
    oversized: bool = False


class MllpFramer:
    """Cuts a byte stream into frames, with bounded memory."""

    def __init__(self, max_bytes: int) -> None:
        """Args:
        max_bytes: Largest payload kept; longer frames come out oversized.
        """
        self._max = max_bytes
        self._buf = bytearray()
        self._in_frame = False
        self._size = 0
        self._after_fs = False
        self.dropped = 0
        """Bytes outside frames dropped since the last frame started."""
        self.opened = 0
        """Frames started so far (a change means a new frame began)."""

    @property
    def in_frame(self) -> bool:
        """Whether a frame has started and not ended."""
        return self._in_frame

    def feed(self, data: bytes) -> list[Frame]:
        """Consume received bytes; return the frames they completed."""
        out: list[Frame] = []
        i = 0
        while i < len(data):
            if not self._in_frame:
                if self._after_fs:  # the CR of the frame just closed, if it came late
                    self._after_fs = False
                    i += data[i] == 0x0D
                    continue
                start = data.find(START, i)
                if start < 0:
                    self.dropped += len(data) - i
                    break
                self.dropped += start - i
                self._open()
                i = start + 1
                continue
            i = self._scan(data, i, out)
        return out

    def _open(self) -> None:
        self._in_frame, self._size, self._after_fs = True, 0, False
        self.opened += 1
        self._buf.clear()
        self.dropped = 0

    def _scan(self, data: bytes, i: int, out: list[Frame]) -> int:
        """Consume frame bytes from ``i``; return where scanning continues."""
        ends = [p for p in (data.find(bytes([_FS]), i), data.find(START, i)) if p >= 0]
        stop = min(ends) if ends else len(data)
        self._keep(data[i:stop])
        if stop == len(data):
            return stop
        if data[stop] == START[0]:  # restart inside a frame: drop the partial one
            logger.warning("MLLP start block inside a frame; %d byte(s) abandoned", self._size)
            self._open()
            return stop + 1
        self._close(out)  # FS ends the frame; its CR, if any, is skipped when it comes
        self._after_fs = True
        return stop + 1

    def _keep(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size <= self._max:
            self._buf += chunk
            return
        if len(self._buf) > _HEAD:  # just went over: keep only the head, for the AR
            del self._buf[_HEAD:]
        self._buf += chunk[: max(0, _HEAD - len(self._buf))]

    def _close(self, out: list[Frame]) -> None:
        oversized = self._size > self._max
        payload = bytes(self._buf[:_HEAD] if oversized else self._buf)
        out.append(Frame(payload, self._size, oversized))
        self._in_frame = False
        self._buf.clear()


Handler = Callable[[Frame, str], Awaitable[list[bytes]]]


class _Watchdog:
    """Closes a connection that sent nothing for ``timeout_s`` while none of its frames was
    being answered.

    One timer per connection that re-arms itself when it finds the connection was active,
    instead of a timeout around every read (``asyncio.wait_for`` makes a task per read).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout_s: float, writer: asyncio.StreamWriter) -> None:
        self._loop, self._timeout, self._writer = loop, timeout_s, writer
        self._last = loop.time()
        self.busy = False
        self.expired = False
        self._timer = loop.call_later(timeout_s, self._check)

    def touch(self) -> None:
        """Activity now."""
        self._last = self._loop.time()

    def _check(self) -> None:
        left = self._last + self._timeout - self._loop.time()
        if self.busy or left > 0:
            self._timer = self._loop.call_later(self._timeout if self.busy else left, self._check)
            return
        self.expired = True
        self._writer.close()  # the session's read sees the end of the stream

    def cancel(self) -> None:
        """The session ended."""
        self._timer.cancel()


class MllpServer:
    """An asyncio MLLP server on its own thread; ``handler(frame, peer)`` returns the replies."""

    def __init__(
        self,
        host: str,
        port: int,
        handler: Handler,
        *,
        max_message_bytes: int = 1 << 20,
        idle_timeout_s: float = 600.0,
        max_connections: int = 64,
        max_connections_per_peer: int = 64,
        frame_deadline_s: float = 60.0,
        ssl_context: ssl.SSLContext | None = None,
        on_start: Callable[[], Awaitable[None]] | None = None,
        on_stop: Callable[[], Awaitable[None]] | None = None,
        admit: Callable[[str], Awaitable[bool]] | None = None,
    ) -> None:
        """Prepare the server; ``start()`` binds the port.

        ``admit(peer)`` runs as a connection opens (after the TLS handshake, so the peer's
        label names its certificate's subject): ``False`` closes it before a byte is read.

        ``on_start`` runs on the server's event loop before it accepts connections,
        ``on_stop`` after the last connection closed (the handler's own resources: the HL7
        listener's parse workers).
        """
        self._host, self._port = host, port
        self._handler = handler
        self._on_start, self._on_stop = on_start, on_stop
        self._admit = admit
        self._max = max_message_bytes
        self._idle = idle_timeout_s
        self._max_conn = max_connections
        self._slots = PeerSlots(max_connections_per_peer, max_connections)
        self._frame_deadline = frame_deadline_s
        self._ssl = ssl_context
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.connections = 0
        self.frames = 0
        self.refused = 0
        """Connections closed as they opened (over ``max_connections`` or the per-peer cap, or
        not admitted)."""

    @property
    def port(self) -> int:
        """The bound port.

        Raises:
            RuntimeError: The server is not started.
        """
        if self._server is None:
            raise RuntimeError("MLLP server is not started")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def serving(self) -> bool:
        """Whether the event loop's thread runs and the server accepts connections."""
        server, thread = self._server, self._thread
        return server is not None and thread is not None and thread.is_alive() and server.is_serving()

    def start(self) -> None:
        """Bind and serve on a daemon thread."""
        if self._on_start is not None:
            self._loop.run_until_complete(self._on_start())
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._serve, self._host, self._port, ssl=self._ssl, limit=1 << 16)
        )
        self._thread = threading.Thread(target=self._loop.run_forever, name="mllp", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop accepting, close open connections and the loop."""
        if self._server is None:
            return

        async def shutdown() -> None:
            assert self._server is not None
            self._server.close()
            for writer in list(self._writers):  # sessions see EOF and end
                writer.close()
            if self._tasks:
                await asyncio.wait(list(self._tasks), timeout=timeout_s / 2)
            await self._server.wait_closed()
            if self._on_stop is not None:
                await self._on_stop()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout_s)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = peer_label(writer.get_extra_info("peername"), writer.get_extra_info("ssl_object"))
        address = str((writer.get_extra_info("peername") or ("?",))[0])
        if not self._slots.acquire(address):  # issue 13: per-peer and total connection caps
            logger.warning("MLLP connection from %s refused: %d open", peer, self._slots.open)
            self.refused += 1
            writer.close()
            return
        if self._admit is not None and not await self._admit(peer):
            self._slots.release(address)
            self.refused += 1
            writer.close()
            return
        self._writers.add(writer)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)  # type: ignore[arg-type]
        self.connections += 1
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await self._session(reader, writer, peer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, TimeoutError) as exc:
            logger.info("MLLP connection %s ended: %s", peer, type(exc).__name__)
        finally:
            self._slots.release(address)
            self._writers.discard(writer)
            self._tasks.discard(task)  # type: ignore[arg-type]
            writer.close()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str) -> None:
        framer = MllpFramer(self._max)
        loop = asyncio.get_running_loop()
        watchdog = _Watchdog(loop, self._idle, writer)
        frame_due, opened = 0.0, 0  # when the frame being received must be complete
        try:
            while True:
                if framer.in_frame and framer.opened != opened:
                    frame_due, opened = loop.time() + self._frame_deadline, framer.opened
                data = await _read(reader, frame_due if framer.in_frame else None, self._frame_deadline)
                if not data:
                    if watchdog.expired:
                        raise TimeoutError(f"nothing received for {self._idle} s")
                    return
                watchdog.touch()
                watchdog.busy = True
                for received in framer.feed(data):
                    self.frames += 1
                    replies = await self._handler(received, peer)
                    for reply in replies:
                        writer.write(frame(reply))
                    await writer.drain()
                watchdog.busy = False
                watchdog.touch()
                if framer.dropped > self._max:
                    logger.warning("MLLP peer %s sent %d bytes outside frames; closing", peer, framer.dropped)
                    return
        finally:
            watchdog.cancel()


async def _read(reader: asyncio.StreamReader, due: float | None, deadline_s: float) -> bytes:
    """The next bytes; inside a frame, no later than ``due`` (loop time).

    Raises:
        TimeoutError: The frame was not complete by ``due``.
    """
    if due is None:
        return await reader.read(1 << 16)
    try:
        async with asyncio.timeout_at(due):
            return await reader.read(1 << 16)
    except TimeoutError:
        raise TimeoutError(f"frame not complete {deadline_s} s after its start block") from None


class MllpClient:
    """A blocking MLLP client on one persistent connection (tests, benchmarks, ORU out)."""

    def __init__(
        self,
        host: str,
        port: int,
        timeout_s: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> None:
        """Connect (and do the TLS handshake if a context is given)."""
        raw = socket.create_connection((host, port), timeout=timeout_s)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock: socket.socket = raw
        if ssl_context is not None:
            self._sock = ssl_context.wrap_socket(raw, server_hostname=server_hostname or host)
        self._framer = MllpFramer(16 << 20)
        self._ready: list[Frame] = []

    def close(self) -> None:
        """Close the connection."""
        self._sock.close()

    def send(self, payload: bytes, replies: int = 1) -> list[bytes]:
        """Send one message and wait for ``replies`` frames back.

        Raises:
            ConnectionError: The server closed the connection first.
        """
        self._sock.sendall(frame(payload))
        return self.receive(replies)

    def send_raw(self, data: bytes) -> None:
        """Send bytes as they are (for scripted bad peers)."""
        self._sock.sendall(data)

    def receive(self, count: int = 1) -> list[bytes]:
        """Wait for ``count`` frames.

        Raises:
            ConnectionError: The server closed the connection first.
        """
        while len(self._ready) < count:
            data = self._sock.recv(1 << 16)
            if not data:
                raise ConnectionError("MLLP server closed the connection")
            self._ready += self._framer.feed(data)
        out, self._ready = self._ready[:count], self._ready[count:]
        return [f.payload for f in out]
