"""The HL7 v2 listener: MLLP in, durable inbox, FHIR context, ACK out.

For every frame: parse and check it, map it to FHIR (``core.v2intake``), store the raw message
and apply the change in one transaction (``ContextWriter``), and only then answer
(``core.acks``). The handler never raises: every failure becomes an ACK code.

Where that runs (issue 14): with ``hl7.parse_workers`` > 0, in worker processes
(``actors.adapters.hl7_workers``): that many deciders parse, check and map; on SQLite one
committer stores the decisions that reach it together in one commit (one fsync, at most
``hl7.batch_max`` messages) and answers each after it, and it also records the audit pump's
marks, so the listener's own connection does not take the store's write lock from it; on
PostgreSQL the event loop submits the transaction to the store (``Database.submit``; the
pool's transactions run side by side and the server groups their commits). With no workers
the event loop decides and submits, and on SQLite the store's writer thread group-commits.
Either way the event loop only waits: it frames, dispatches, and acknowledges. Two background
loops (``actors.polling.Loop``) keep other work off the ACK path: the audit pump, which turns
stored messages into ledger audit events, and the WAL checkpoint of the SQLite context store
(its commits never checkpoint themselves).

- ``AA`` / ``CA``: stored (and applied, or already applied before: not applied twice); an AA
  may carry an ERR of severity W naming an optional field that was ignored.
- ``AE`` + ERR: stored, but it broke a rule; ERR names the field. Or it could not be stored
  (ERR 207): the sender keeps it and resends.
- ``AR`` + ERR: not a message we take; its first bytes are kept for inspection.

Nothing here logs message content: log lines and audit events carry control IDs, message
types, error codes and locations, and keyed hashes; the reasons (which may quote received
values, i.e. PHI) go only to the sender and to the PHI vault.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from datetime import UTC, datetime
from typing import Any, TypeVar

from actors.adapters.hl7_workers import ParsePool, Stored, WorkerFailed
from actors.adapters.metrics import recorder
from actors.adapters.mllp import Frame, MllpServer
from actors.adapters.startup_gc import freeze_startup
from actors.adapters.tls import server_context, split_peer_label
from actors.polling import Loop
from core.acks import AckError, Disposition, ack_codes, build_ack
from core.audit import AuditEvent
from core.config import Hl7Config
from core.errors import MessageRejected, TransientIOError
from core.health import LoopHealth
from core.hl7 import MessageHeader, peek_header
from core.hl7_checks import SENDER_REFUSED, check_sender, peer_refusal
from core.identifiers import DEFAULT_KEY
from core.types import AuditEventType
from core.v2intake import Intake, IntakeRules, intake_of
from state.context_store import AuditMarks, ContextReader, ContextWriter, InboxEntry, context_file
from state.db import Database
from state.ledger import Ledger

__all__ = ["Hl7Listener"]

logger = logging.getLogger(__name__)

AUDIT_PERIOD_S = 0.2
AUDIT_CHUNK = 64
"""Audit events per ledger transaction: small, so the pump never holds the GIL for long."""
METRICS_FLUSH_S = 0.2
"""Longest an ACK waits to be counted in ``pacsai_hl7_messages_total``."""
CHECKPOINT_S = 1.0
"""Period of the context store's WAL checkpoint (SQLite)."""


T = TypeVar("T")


class _Settler:
    """Hands the store's results to the event loop: one wake-up per group commit.

    ``asyncio.wrap_future`` wakes the loop once per future (a ``call_soon_threadsafe``, a
    write to its self-pipe, from the store's writer thread); a group commit settles its
    messages one after another, so here the first one wakes the loop and the rest join it.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._ready: list[tuple[asyncio.Future[Any], Future[Any]]] = []

    def wrap(self, done: Future[T]) -> asyncio.Future[T]:
        """An asyncio future of the loop that settles like ``done``."""
        future: asyncio.Future[T] = self._loop.create_future()
        done.add_done_callback(lambda f: self._settled(future, f))
        return future

    def _settled(self, future: asyncio.Future[Any], done: Future[Any]) -> None:  # any thread
        with self._lock:
            self._ready.append((future, done))
            first = len(self._ready) == 1
        if first:
            self._loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        with self._lock:
            ready, self._ready = self._ready, []
        for future, done in ready:
            if future.cancelled():
                continue
            exc = done.exception()
            if exc is not None:
                future.set_exception(exc)
            else:
                future.set_result(done.result())


def _message_type(header: MessageHeader | None) -> str:
    """The metric label of a message's type: ``ADT^A01``; ``other`` for anything that is not
    two short codes (a label must never take whatever a peer sends)."""
    if header is None:
        return "unparsed"
    code, trigger = header.message_code, header.trigger_event
    ok = all(len(x) == 3 and x.isascii() and x.isalnum() for x in (code, trigger))
    return f"{code.upper()}^{trigger.upper()}" if ok else "other"


def _err_for(code: str, error: AckError | None) -> AckError | None:
    """What the ERR of one ACK says: nothing on CA, only a warning (severity W) on AA."""
    if code == "CA" or (code == "AA" and (error is None or error.severity != "W")):
        return None
    return error


class Hl7Listener:
    """MLLP server + context store writer + the loops that audit and checkpoint."""

    def __init__(
        self,
        cfg: Hl7Config,
        context: Database,
        ledger: Ledger | None,
        hash_key: bytes = DEFAULT_KEY,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Prepare the listener; ``start()`` opens the port.

        Args:
            cfg: The ``hl7`` config slice.
            context: The context store (``open_context(storage, writer=True,
                group_max=cfg.batch_max)``); the listener closes it in ``stop``.
            ledger: Where audit events go (``None``: not audited, for benchmarks only).
            hash_key: Key of the hashed identifiers (the DICOM listener's).
            clock: Wall clock.
        """
        self._cfg = cfg
        self._ledger = ledger
        self._clock = clock
        lst = cfg.listener
        self._rules = IntakeRules(
            hash_key,
            cfg.versions,
            cfg.processing_ids,
            lst.max_message_bytes,
            lst.max_field_chars,
            cfg.identifier_systems,
            cfg.accession_fields,
            cfg.validate_resources,
            cfg.default_assigning_authorities,
            lst.rejected_max_rows,
        )
        self._mapper = self._rules.mapper()
        self._pool = (
            ParsePool(self._rules, cfg.parse_workers, context_file(context), cfg.batch_max)
            if cfg.parse_workers
            else None
        )
        self._store = context
        self._writer = ContextWriter(context, rejected_max_rows=lst.rejected_max_rows)
        self._reader = ContextReader(context)
        self._server = MllpServer(
            lst.host,
            lst.port,
            self.handle,
            max_message_bytes=lst.max_message_bytes,
            idle_timeout_s=lst.idle_timeout_s,
            max_connections=lst.max_connections,
            max_connections_per_peer=lst.max_connections_per_peer,
            frame_deadline_s=lst.frame_deadline_s,
            ssl_context=server_context(lst.tls) if lst.tls else None,
            on_start=self._pool.start if self._pool else None,
            on_stop=self._pool.stop if self._pool else None,
            admit=self._admit if cfg.senders else None,
        )
        self._ack_prefix = f"{os.getpid() % 100000:05d}{int(clock()) % 1000:03d}"
        self._ack_seq = 0
        self._acked: collections.Counter[tuple[str, str]] = collections.Counter()
        self._settler: _Settler | None = None
        self._audit_lock = threading.Lock()  # one audit pass at a time: no event twice
        self._pump = Loop("hl7-audit", self._audit_round, AUDIT_PERIOD_S) if ledger is not None else None
        self._checkpointer = Loop("context-checkpoint", context.checkpoint, CHECKPOINT_S)
        self.counts: dict[str, int] = {d.value: 0 for d in Disposition}
        self._worker_commits = [0, 0]  # commits, messages committed: by the parse workers
        self.last_received_at = 0.0
        self._actor = f"hl7:{cfg.application}"

    @property
    def port(self) -> int:
        """The bound MLLP port."""
        return self._server.port

    @property
    def loops(self) -> tuple[Loop, ...]:
        """The background loops (the actor reports their health): audit pump, checkpoint."""
        return (self._checkpointer,) if self._pump is None else (self._pump, self._checkpointer)

    def server_health(self) -> LoopHealth:
        """The MLLP server's thread, and the frames it answered."""
        failed = sum(self.counts[d.value] for d in (Disposition.REJECTED, Disposition.FAILED))
        return LoopHealth(
            "mllp-server", self._server.serving, self._server.frames, failed, last_work_at=self.last_received_at
        )

    @staticmethod
    def tune_process() -> None:
        """Make this process favour ACK latency: switch threads every 1 ms instead of 5 ms,
        so the event loop never waits long behind the store's writer or the audit pump (call
        it in a process that runs only the listener, like its Ray actor)."""
        sys.setswitchinterval(0.001)

    def start(self) -> None:
        """Open the port and start the loops.

        What the process holds by now (modules, config, the stores) is moved out of the
        garbage collector's reach, once per process (``startup_gc.freeze_startup``): a full
        collection of it took ~100 ms, a stall of every connection's ACK.
        """
        freeze_startup()
        self._server.start()
        for loop in self.loops:
            loop.start()
        logger.info("HL7 MLLP listener on %s:%d", self._cfg.listener.host, self.port)

    def stop(self) -> None:
        """Stop the loops, close the port, audit what is left, close the store (commits in
        flight finish). The audit pump stops first: its marks may be waiting for the committer,
        which stops with the port."""
        for loop in self.loops:
            loop.stop()
        self._server.stop()
        self._record_counts()  # what the event loop had not recorded yet
        if self._ledger is not None:
            self.audit_once()
        self._store.close()

    # ------------------------------------------------------------ handler
    async def handle(self, received: Frame, peer: str) -> list[bytes]:
        """Answer one frame: the ACK(s) its MSH-15/16 ask for. Never raises."""
        now = self._clock()
        self.last_received_at = now
        header, disposition, error = await self._process(received, peer, now)
        self.counts[disposition.value] += 1
        at = datetime.fromtimestamp(now, UTC)
        replies = []
        kind = _message_type(header)
        for code in ack_codes(header, disposition):
            self._count(str(code), kind)
            self._ack_seq += 1
            text = build_ack(
                code,
                header,
                application=self._cfg.application,
                facility=self._cfg.facility,
                control_id=f"A{self._ack_prefix}{self._ack_seq}",
                at=at,
                error=_err_for(code, error),
            )
            replies.append(text.encode("utf-8"))
        return replies

    def _count(self, code: str, kind: str) -> None:
        """Count an ACK for ``pacsai_hl7_messages_total``: added up here and recorded at most
        every ``METRICS_FLUSH_S`` (a recording costs ~30 us of the event loop's time)."""
        if not self._acked:
            asyncio.get_running_loop().call_later(METRICS_FLUSH_S, self._record_counts)
        self._acked[(code, kind)] += 1

    def _record_counts(self) -> None:
        acked, self._acked = self._acked, collections.Counter()
        for (code, kind), n in acked.items():
            recorder.inc("pacsai_hl7_messages_total", n, ack_code=code, message_type=kind)

    async def _process(
        self, received: Frame, peer: str, now: float
    ) -> tuple[MessageHeader | None, Disposition, AckError | None]:
        header: MessageHeader | None = None
        try:
            refused = await self._refused(received, peer, now) if self._cfg.senders else None
            if refused is not None:
                return refused
            answer = await self._decide(received, peer, now)
            if isinstance(answer, Stored):  # a worker decided and stored it
                return self._stored(answer, peer)
            header = answer.header
            if answer.rejected:
                assert answer.error is not None
                return header, *(await self._rejected(received, peer, header, answer.error, now))
            assert header is not None
            entry = InboxEntry(header, received.payload, peer, now, answer.update, answer.error, answer.digest)
            disposition, error = await self._settle(self._writer.receive(entry))
            self._log(header, disposition, error)
            return header, disposition, error
        except (TransientIOError, OSError) as exc:
            logger.error("HL7 message %s not stored: %s", header.control_id if header else "?", exc)
            return header, Disposition.FAILED, AckError("207", "the message could not be stored; resend it later")
        except WorkerFailed as exc:  # the sender still gets an ACK naming its message
            header = peek_header(received.payload)
            logger.error("HL7 message %s not processed: %s", header.control_id if header else "?", exc)
            return header, Disposition.FAILED, AckError("207", "internal error; resend it later")
        except Exception:  # the one broad catch at the protocol boundary: log, answer AE
            logger.exception("HL7 handler failed for %s", header.control_id if header else "?")
            return header, Disposition.FAILED, AckError("207", "internal error; resend it later")

    async def _admit(self, peer: str) -> bool:
        """A connection from a peer no ``hl7.senders`` entry names (its address, its
        certificate's subject) is closed as it opens, with one ``hl7_peer_refused`` audit
        event: it never gets a message parsed, nor one audit event per message it sends
        (that was the way until stop 31: AR per message). A named peer's messages are still
        checked against MSH-3..6 (``_refused``)."""
        host, subject = split_peer_label(peer)
        reason = peer_refusal(host, subject, self._cfg)
        if reason is None:
            return True
        logger.warning("HL7 connection from %s refused: not an allowed sender", peer)
        detail = {"peer": peer, "reason": reason, "error_code": SENDER_REFUSED, "error_location": ""}
        if self._ledger is not None:
            event = AuditEvent(AuditEventType.HL7_PEER_REFUSED, self._actor, detail=detail)
            try:
                await asyncio.to_thread(self._ledger.audit.append, [event], self._clock())
            except Exception:  # noqa: BLE001 - the refusal stands whether or not its audit is stored
                logger.exception("hl7_peer_refused audit event not stored")
        return False

    async def _refused(
        self, received: Frame, peer: str, now: float
    ) -> tuple[MessageHeader | None, Disposition, AckError] | None:
        """Issue 13: AR and an ``hl7_peer_refused`` audit event for a frame whose peer or MSH-3..6
        is not an allowed sender (``core.hl7_checks.check_sender``); it is neither parsed further
        nor stored. ``None``: allowed, or no MSH to judge (the intake answers AR for that)."""
        header = peek_header(received.payload)
        if header is None:
            return None
        host, subject = split_peer_label(peer)
        try:
            check_sender(header, host, subject, self._cfg)
            return None
        except MessageRejected as exc:
            error = AckError(exc.error_code, exc.reason, exc.location)
        logger.warning(
            "HL7 message %s from %s refused: not an allowed sender (%s)",
            header.control_id,
            peer,
            error.location or "peer",
        )
        detail = {
            "peer": peer,
            "control_id": header.control_id,
            "message_type": _message_type(header),
            "sending_application": header.sending_application,
            "sending_facility": header.sending_facility,
            "error_code": error.code,
            "error_location": error.location,
        }
        if self._ledger is not None:
            event = AuditEvent(AuditEventType.HL7_PEER_REFUSED, self._actor, detail=detail)
            await asyncio.to_thread(self._ledger.audit.append, [event], now)
        return header, Disposition.REJECTED, error

    async def _decide(self, received: Frame, peer: str, now: float) -> Intake | Stored:
        """Parse, check and map the frame (and store it, on SQLite) in a parse worker; here
        when there is none (``hl7.parse_workers: 0``, or while a dead one is replaced)."""
        if self._pool is not None and self._pool.alive:
            return await self._pool.process(received.payload, received.size, received.oversized, now, peer)
        return intake_of(received.payload, received.size, received.oversized, self._rules, self._mapper)

    def _stored(self, answer: Stored, peer: str) -> tuple[MessageHeader | None, Disposition, AckError | None]:
        """Log what a worker did with a frame, as if it had been done here."""
        header, disposition, error = answer.header, answer.disposition, answer.error
        control_id = header.control_id if header else "?"
        if answer.commit:
            self._worker_commits[0] += 1
            self._worker_commits[1] += answer.commit
        if disposition is Disposition.REJECTED:
            assert error is not None
            logger.warning(
                "HL7 message %s from %s rejected (AR %s at %s)", control_id, peer, error.code, error.location or "-"
            )
            if answer.problem:
                logger.error("%s", answer.problem)
        elif disposition is Disposition.FAILED:
            logger.error("HL7 message %s %s", control_id, answer.problem)
        else:
            assert header is not None
            self._log(header, disposition, error)
        return header, disposition, error

    def worker_pids(self) -> dict[str, list[int]]:
        """Process IDs of the parse workers by part (``deciders``, ``committer``; empty lists
        with ``hl7.parse_workers: 0``): for benchmarks that account CPU per process."""
        return self._pool.pids() if self._pool is not None else {"deciders": [], "committer": []}

    def commit_stats(self) -> tuple[int, int]:
        """Commits of the context store and the transactions they held, this listener's and
        its workers' (for benchmarks: the size of the group commits)."""
        commits, items = self._worker_commits
        return commits + int(getattr(self._store, "commits", 0)), items + int(getattr(self._store, "items", 0))

    def _settle(self, done: Future[T]) -> asyncio.Future[T]:
        """``done`` (the store's future) as a future of the MLLP event loop."""
        if self._settler is None:
            self._settler = _Settler(asyncio.get_running_loop())
        return self._settler.wrap(done)

    async def _rejected(
        self,
        received: Frame,
        peer: str,
        header: MessageHeader | None,
        error: AckError,
        now: float,
    ) -> tuple[Disposition, AckError]:
        logger.warning(
            "HL7 message %s from %s rejected (AR %s at %s)",
            header.control_id if header else "?",
            peer,
            error.code,
            error.location or "-",
        )
        try:
            kept = self._writer.reject(received.payload, peer, header, error, now)
            await self._settle(kept)
        except Exception as store_exc:  # noqa: BLE001 - answering AR does not depend on keeping it
            logger.error("rejected message not kept: %s", type(store_exc).__name__)
        return Disposition.REJECTED, error

    @staticmethod
    def _log(header: MessageHeader, disposition: Disposition, error: AckError | None) -> None:
        if error is None:
            logger.debug("HL7 %s %s: %s", header.message_type, header.control_id, disposition)
        else:
            logger.warning(
                "HL7 %s %s: %s (ERR %s at %s)",
                header.message_type,
                header.control_id,
                disposition,
                error.code,
                error.location or "-",
            )

    # --------------------------------------------------------- audit pump
    def _audit_round(self) -> int:
        """One round of the pump: chunks until one comes back short (a backlog is drained at
        once, a trickle waits for the next round); a failure leaves the rows unaudited, and
        the loop logs it and tries again."""
        total = 0
        while True:
            done = self.audit_once(AUDIT_CHUNK)
            total += done
            if done < AUDIT_CHUNK or self._pump is None or self._pump.stopping:
                return total
            time.sleep(0.002)  # let the event loop answer between chunks

    def audit_once(self, limit: int = 500) -> int:
        """Append audit events for stored messages not yet audited; return how many.

        Raises:
            TransientIOError: The context store could not record the audit mark.
        """
        if self._ledger is None:
            return 0
        with self._audit_lock:
            return self._audit_pass(self._ledger, limit)

    def _audit_pass(self, ledger: Ledger, limit: int) -> int:
        received, rejected, conflicts = self._reader.unaudited(limit)
        if not received and not rejected and not conflicts:
            return 0
        events = (
            [self._received_event(r) for r in received]
            + [AuditEvent(AuditEventType.HL7_REJECTED, self._actor, detail=dict(r)) for r in rejected]
            + [self._conflict_event(r) for r in conflicts]
        )
        # At least once: a crash between these two lines repeats events (same inbox seq).
        ledger.audit.append(events, self._clock())
        marks = AuditMarks(
            tuple((r["seq"], r["resends"]) for r in received),
            tuple(r["seq"] for r in rejected),
            tuple((r["seq"], r["resends"]) for r in conflicts),
        )
        by_committer = self._pool.mark_audited(marks) if self._pool is not None else None
        if by_committer is None:
            self._writer.mark_audited(marks.inbox, marks.rejected, marks.conflicts).result(30)
        elif (stored := by_committer.result(30)).disposition is Disposition.FAILED:
            raise TransientIOError(stored.problem)
        elif stored.commit:  # the first of its commit: counted as the event loop counts them
            self._worker_commits[0] += 1
            self._worker_commits[1] += stored.commit
        return len(events)

    def _conflict_event(self, row: dict[str, Any]) -> AuditEvent:
        """A message stored for review: it reused an applied message's control ID."""
        detail = {
            "conflict_seq": row["seq"],
            "inbox_seq": row["inbox_seq"],
            "message_type": row["message_type"],
            "control_id": row["control_id"],
            "sending_application": row["sending_app"],
            "sending_facility": row["sending_facility"],
            "status": "conflict",
            "error_code": "205",
            "error_location": "MSH^1^10",
            "resends": row["resends"],
            "peer": row["peer"],
        }
        return AuditEvent(AuditEventType.HL7_RECEIVED, self._actor, detail=detail)

    def _received_event(self, row: dict[str, Any]) -> AuditEvent:
        detail = {
            "inbox_seq": row["seq"],
            "message_type": row["message_type"],
            "control_id": row["control_id"],
            "sending_application": row["sending_app"],
            "sending_facility": row["sending_facility"],
            "status": row["status"],
            "error_code": row["error_code"],
            "error_location": row["error_location"],
            "resends": row["resends"],
            "patient_key": row["patient_key"],
            "accession_key": row["accession_key"],
            "peer": row["peer"],
        }
        return AuditEvent(AuditEventType.HL7_RECEIVED, self._actor, detail=detail)
