"""Parse worker processes of the HL7 listener: parsing, mapping and storing off its GIL.

Deciding a frame (decoding, parsing, the checks, the FHIR mapping and its validation:
``core.v2intake``) is pure CPU, and so is most of storing it; in the listener's process both
held the GIL that the MLLP event loop and the store's writer thread took turns at, switching
threads between every SQL statement. With ``hl7.parse_workers`` > 0 that work runs in as many
processes, each fed over a socket pair (``actors.adapters._hl7_work``): on SQLite a worker
decides and stores a batch of frames in one commit and answers each with its disposition; on
PostgreSQL it answers with the decision and the listener stores it (its pool's threads wait on
the network, not on the GIL). The event loop only frames, dispatches and acknowledges.

Durability is the worker's commit: a worker answers "stored" only after it, and the listener
ACKs only such answers. A worker that dies loses nothing acknowledged: its frames in flight
are answered AE 207 (the sender resends; one that was committed before the death is then a
duplicate, acknowledged and not applied twice), and another worker is started.

Workers are forked from a ``forkserver`` that has imported the mapper's modules once (the
listener runs in a Ray worker, which must not fork itself, and a fresh interpreter per worker
would import fhir.resources each time). A worker exits when the listener's end of its socket
closes, also when the listener's process is killed. Each frame goes to the worker with the
fewest frames outstanding.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import multiprocessing as mp
import socket
from pathlib import Path
from typing import Any

from actors.adapters._hl7_work import ANSWER, REQUEST, Stored, loads, serve
from core.v2intake import Intake, IntakeRules

__all__ = ["ParsePool", "Stored", "WorkerFailed"]

logger = logging.getLogger(__name__)

_PRELOAD = ["actors.adapters._hl7_work"]


class WorkerFailed(RuntimeError):
    """A parse worker raised (a bug in the mapping) or died with the frame in flight."""


class _Channel(asyncio.Protocol):
    """The listener's side of one worker's socket: answers come in the order of requests."""

    def __init__(self, pool: ParsePool, process: Any) -> None:
        self.pool = pool
        self.process = process
        self.pending: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.transport: asyncio.Transport | None = None
        self.alive = True
        self._buffer = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, payload: bytes, size: int, oversized: bool, now: float, peer: str) -> asyncio.Future[Any]:
        assert self.transport is not None
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending.append(future)
        who = peer.encode("utf-8", "replace")[:1024]
        self.transport.write(REQUEST.pack(len(payload), size, int(oversized), now, len(who)) + who + payload)
        return future

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        start = 0
        while len(buffer) - start >= ANSWER.size:
            (length,) = ANSWER.unpack_from(buffer, start)
            end = start + ANSWER.size + length
            if len(buffer) < end:
                break
            with memoryview(buffer) as view:
                answer = loads(view[start + ANSWER.size : end])
            start = end
            future = self.pending.popleft()
            if future.done():  # the session was cancelled meanwhile
                continue
            if isinstance(answer, (Intake, Stored)):
                future.set_result(answer)
            else:
                future.set_exception(WorkerFailed(f"the mapping raised {answer}"))
        del buffer[:start]

    def connection_lost(self, exc: Exception | None) -> None:
        self.alive = False
        while self.pending:
            future = self.pending.popleft()
            if not future.done():
                future.set_exception(WorkerFailed("the parse worker died"))
        self.pool.lost(self)


class ParsePool:
    """``workers`` processes deciding (and on SQLite storing) frames; used from one event loop."""

    def __init__(self, rules: IntakeRules, workers: int, store: Path | None = None, batch_max: int = 256) -> None:
        """Args:
        rules: What frames are checked and mapped against.
        workers: How many processes (at least 1).
        store: The SQLite context store file the workers store into (``None``: they only
            decide, the listener stores).
        batch_max: Most messages a worker commits at once (``hl7.batch_max``).
        """
        self._args = (rules, store, batch_max)
        self._size = workers
        self._channels: list[_Channel] = []
        self._ctx = mp.get_context("forkserver")
        self._stopping = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.stores = store is not None
        """Whether workers answer ``Stored`` (else ``Intake``)."""
        self.restarts = 0
        """Workers replaced after they died."""

    @property
    def alive(self) -> int:
        """Workers that take frames now."""
        return sum(c.alive for c in self._channels)

    async def start(self) -> None:
        """Start the workers (on the event loop that will use the pool)."""
        self._ctx.set_forkserver_preload(_PRELOAD)
        for _ in range(self._size):
            await self._spawn()

    async def _spawn(self) -> None:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        with theirs:
            process = self._ctx.Process(target=serve, args=(theirs, *self._args), name="hl7-parse", daemon=True)
            await loop.run_in_executor(None, process.start)
        channel = _Channel(self, process)
        await loop.connect_accepted_socket(lambda: channel, ours)
        self._channels.append(channel)

    async def process(self, payload: bytes, size: int, oversized: bool, now: float, peer: str) -> Intake | Stored:
        """Decide (and on SQLite store) one frame in the worker with the fewest outstanding.

        Raises:
            WorkerFailed: The mapping raised, or the worker died with the frame in flight.
        """
        channel = min((c for c in self._channels if c.alive), key=lambda c: len(c.pending), default=None)
        if channel is None:
            raise WorkerFailed("no parse worker is running")
        answer: Intake | Stored = await channel.send(payload, size, oversized, now, peer)
        return answer

    def lost(self, channel: _Channel) -> None:
        """A worker's socket closed: forget it and, unless stopping, start another."""
        if channel in self._channels:
            self._channels.remove(channel)
        if self._stopping:
            return
        logger.error("HL7 parse worker %s died; starting another", channel.process.pid)
        self.restarts += 1
        task = asyncio.get_running_loop().create_task(self._respawn())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _respawn(self) -> None:
        try:
            await self._spawn()
        except (OSError, RuntimeError) as exc:  # the listener decides and stores frames itself meanwhile
            logger.error("HL7 parse worker not restarted: %s", exc)

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Close the workers' sockets (they finish their batch and exit) and wait for them."""
        self._stopping = True
        channels, self._channels = self._channels, []
        for channel in channels:
            if channel.transport is not None:
                channel.transport.close()
        loop = asyncio.get_running_loop()
        for channel in channels:
            await loop.run_in_executor(None, channel.process.join, timeout_s)
            if channel.process.is_alive():
                channel.process.kill()
        for task in list(self._tasks):
            task.cancel()
        await loop.shutdown_default_executor()  # the threads that started and joined workers
