"""Parse worker processes of the HL7 listener: parsing, mapping and storing off its GIL.

Deciding a frame (decoding, parsing, the checks, the FHIR mapping and its validation:
``core.v2intake``) is pure CPU, and so is most of storing it; in the listener's process both
held the GIL that the MLLP event loop and the store's writer thread took turns at, switching
threads between every SQL statement. With ``hl7.parse_workers`` > 0 that work runs in other
processes, each fed over a socket pair (``actors.adapters._hl7_work``): that many deciders,
which answer each frame with its decision as soon as it is made, and on SQLite one committer,
to which the listener passes each decision as it came (it does not open it). The committer
stores all the decisions that reach it together in one commit and answers each with its
disposition. It is the store's one writer, so no commit waits on another process's lock
(two workers that each stored held the file's write lock ~77 % of the time between them),
its commits take what the deciders finished meanwhile, and the deciders never stop for a
write or an fsync. On PostgreSQL there is no committer: the listener stores the decisions
(its pool's threads wait on the network, not on the GIL). The event loop only frames,
dispatches and acknowledges.

Durability is the committer's commit: it answers "stored" only after it, and the listener
ACKs only such answers. A worker that dies loses nothing acknowledged: its frames in flight
are answered AE 207 (the sender resends; one that was committed before the death is then a
duplicate, acknowledged and not applied twice), and another one is started. While the
committer is being replaced the listener stores the decisions itself.

Workers are forked from a ``forkserver`` that has imported the mapper's modules once (the
listener runs in a Ray worker, which must not fork itself, and a fresh interpreter per worker
would import fhir.resources each time). A worker exits when the listener's end of its socket
closes, also when the listener's process is killed. Each frame goes to the decider with the
fewest frames outstanding.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import multiprocessing as mp
import pickle
import socket
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from actors.adapters._hl7_work import ANSWER, REQUEST, Stored, loads, serve
from core.v2intake import Intake, IntakeRules
from state.context_store import AuditMarks

__all__ = ["ParsePool", "Stored", "WorkerFailed"]

logger = logging.getLogger(__name__)

_PRELOAD = ["actors.adapters._hl7_work"]


class WorkerFailed(RuntimeError):
    """A parse worker raised (a bug in the mapping) or died with the frame in flight."""


class _Channel(asyncio.Protocol):
    """The listener's side of one worker's socket: answers come in the order of requests.

    ``raw``: answers are handed over as their pickled bytes, unopened (a decider's, for the
    committer).
    """

    def __init__(self, pool: ParsePool, process: Any, committer: bool, raw: bool) -> None:
        self.pool = pool
        self.process = process
        self.committer = committer
        self.raw = raw
        self.pending: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.transport: asyncio.Transport | None = None
        self.alive = True
        self._buffer = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(
        self, payload: bytes, size: int, oversized: bool, now: float, peer: str, decided: bytes = b""
    ) -> asyncio.Future[Any]:
        assert self.transport is not None
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending.append(future)
        who = peer.encode("utf-8", "replace")[:1024]
        head = REQUEST.pack(len(payload), size, int(oversized), now, len(who), len(decided))
        self.transport.write(b"".join((head, who, payload, decided)))
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
            if self.raw:
                answer: Any = bytes(buffer[start + ANSWER.size : end])
            else:
                with memoryview(buffer) as view:
                    answer = loads(view[start + ANSWER.size : end])
            start = end
            future = self.pending.popleft()
            if future.done():  # the session was cancelled meanwhile
                continue
            if isinstance(answer, (Intake, Stored, bytes)):
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
    """``workers`` deciders and (SQLite) one committer; used from one event loop."""

    def __init__(self, rules: IntakeRules, workers: int, store: Path | None = None, batch_max: int = 256) -> None:
        """Args:
        rules: What frames are checked and mapped against.
        workers: How many deciders (at least 1).
        store: The SQLite context store file the committer stores into (``None``: no
            committer, the listener stores).
        batch_max: Most messages a worker commits at once (``hl7.batch_max``).
        """
        self._rules, self._store, self._batch_max = rules, store, batch_max
        self._size = workers
        self._channels: list[_Channel] = []
        self._ctx = mp.get_context("forkserver")
        self._stopping = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.stores = store is not None
        """Whether a committer stores the decisions (``process`` answers ``Stored``; else ``Intake``)."""
        self.restarts = 0
        """Workers replaced after they died."""

    @property
    def alive(self) -> int:
        """Deciders that take frames now."""
        return sum(c.alive and not c.committer for c in self._channels)

    @property
    def committing(self) -> bool:
        """Whether the committer runs (SQLite; else the listener stores the decisions)."""
        return self._committer() is not None

    def pids(self) -> dict[str, list[int]]:
        """Process IDs of the running workers by part (``deciders``, ``committer``): for
        benchmarks that account CPU per process."""
        out: dict[str, list[int]] = {"deciders": [], "committer": []}
        for c in self._channels:
            if c.alive and c.process.pid is not None:
                out["committer" if c.committer else "deciders"].append(c.process.pid)
        return out

    def _committer(self) -> _Channel | None:
        return next((c for c in self._channels if c.committer and c.alive), None)

    async def start(self) -> None:
        """Start the workers (on the event loop that will use the pool)."""
        self._loop = asyncio.get_running_loop()
        self._ctx.set_forkserver_preload(_PRELOAD)
        for _ in range(self._size):
            await self._spawn(committer=False)
        if self.stores:
            await self._spawn(committer=True)

    async def _spawn(self, committer: bool) -> None:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        args = (theirs, self._rules, self._store if committer else None, self._batch_max)
        with theirs:
            name = "hl7-commit" if committer else "hl7-parse"
            process = self._ctx.Process(target=serve, args=args, name=name, daemon=True)
            await loop.run_in_executor(None, process.start)
        channel = _Channel(self, process, committer, raw=self.stores and not committer)
        await loop.connect_accepted_socket(lambda: channel, ours)
        self._channels.append(channel)

    async def process(self, payload: bytes, size: int, oversized: bool, now: float, peer: str) -> Intake | Stored:
        """Decide one frame in the decider with the fewest outstanding, then (SQLite) store
        it in the committer: ``Stored``; ``Intake`` when there is no committer (PostgreSQL,
        or while it is replaced): the caller stores it.

        Raises:
            WorkerFailed: The mapping raised, or a worker died with the frame in flight.
        """
        channel = min(
            (c for c in self._channels if c.alive and not c.committer), key=lambda c: len(c.pending), default=None
        )
        if channel is None:
            raise WorkerFailed("no parse worker is running")
        answer: Intake | Stored | bytes = await channel.send(payload, size, oversized, now, peer)
        if not isinstance(answer, bytes):
            return answer
        committer = self._committer()
        if committer is not None:
            stored: Stored = await committer.send(payload, size, oversized, now, peer, answer)
            return stored
        decided = loads(memoryview(answer))
        if not isinstance(decided, Intake):
            raise WorkerFailed(f"the mapping raised {decided}")
        return decided

    def mark_audited(self, marks: AuditMarks) -> Future[Stored] | None:
        """Have the committer record the audit pump's marks in its next commit (from any
        thread): the listener's own connection then never takes the store's write lock from
        it. ``None``: no committer runs (the caller records them itself)."""
        if self._loop is None or self._stopping or not self.committing:
            return None
        return asyncio.run_coroutine_threadsafe(self._mark(marks), self._loop)

    async def _mark(self, marks: AuditMarks) -> Stored:
        committer = self._committer()
        if committer is None:
            raise WorkerFailed("the committer is not running")
        stored: Stored = await committer.send(b"", 0, False, 0.0, "", pickle.dumps(marks))
        return stored

    def lost(self, channel: _Channel) -> None:
        """A worker's socket closed: forget it and, unless stopping, start another."""
        if channel in self._channels:
            self._channels.remove(channel)
        if self._stopping:
            return
        logger.error("HL7 parse worker %s died; starting another", channel.process.pid)
        self.restarts += 1
        task = asyncio.get_running_loop().create_task(self._respawn(channel.committer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _respawn(self, committer: bool) -> None:
        try:
            await self._spawn(committer)
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
