"""The parse worker processes of the HL7 listener (``actors.adapters.hl7_workers`` runs them).

A worker answers the frames its socket brings, in order. It has one of two parts:

- A decider (no store file) decides each frame (``core.v2intake``) and answers at once with
  the decision: parsing, the checks, the FHIR mapping and its validation, all pure CPU.
- The committer (the context store's file, SQLite: there is one) stores what the deciders
  decided: all the frames that reached it together in one transaction
  (``ContextWriter.store_batch``: one fsync, each message in a savepoint of its own) before it
  answers any of them: an answer that says a message was stored comes after its commit. It is
  the store's only writer while it runs, so no commit waits for another process's lock, and
  the deciders go on deciding while it writes and fsyncs.

Both are single-threaded on purpose: nothing competes with them for their GIL. They log
nothing (their answers say what the listener logs) and exit when the listener's end of the
socket closes.

Wire format: a request is ``!IIBdHI`` (payload length, frame size, oversized, received at,
peer length, decision length), the peer (UTF-8), the payload and, for the committer, the
decider's answer as it came (the listener does not open it); an answer is ``!I`` (length)
and a pickle of ``Intake`` (decided), ``Stored`` (decided and stored) or the name of an
exception.
"""

from __future__ import annotations

import dataclasses
import gc
import io
import pickle
import socket
import struct
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.acks import AckError, Disposition
from core.context import ContextUpdate, OrderIndex, PatientMerge
from core.errors import TransientIOError
from core.hl7 import Issue, MessageHeader
from core.v2fhir import V2FhirMapper
from core.v2intake import Intake, IntakeRules, intake_of
from state.context_store import AuditMarks, ContextWriter, InboxEntry, Rejection, open_context_file
from state.db import Database

__all__ = ["ANSWER", "REQUEST", "Request", "Stored", "dumps", "loads", "serve"]

REQUEST = struct.Struct("!IIBdHI")
ANSWER = struct.Struct("!I")
_NOT_STORED = "the message could not be stored; resend it later"
_INTERNAL = "internal error; resend it later"
_WRITERS: weakref.WeakKeyDictionary[Database, ContextWriter] = weakref.WeakKeyDictionary()
FREEZE_EVERY = 256
"""Frames between two ``gc.freeze`` calls of a worker (see ``serve``)."""


@dataclass(frozen=True, slots=True)
class Request:
    """One frame to decide (and store), as the listener received it."""

    payload: bytes
    size: int
    oversized: bool
    received_at: float
    peer: str
    decided: bytes = b""
    """A decider's answer (a pickle, for the committer); empty: decide it here."""


@dataclass(frozen=True, slots=True)
class Stored:
    """What became of a frame a worker decided and stored.

    Attributes:
        header: Its MSH, if one could be read.
        disposition: Applied, duplicate, invalid, conflict, rejected or failed.
        error: The ERR of its ACK (or a warning), if any.
        problem: Why storing failed, for the listener's log (no message content).
        commit: The number of messages in its commit, on the first of them (else 0).
    """

    header: MessageHeader | None
    disposition: Disposition
    error: AckError | None
    problem: str = ""
    commit: int = 0


_BY_FIELDS = {
    cls: tuple(f.name for f in dataclasses.fields(cls))
    for cls in (Intake, Stored, MessageHeader, ContextUpdate, OrderIndex, PatientMerge, AckError, Issue)
}
"""The frozen dataclasses of an answer, and their fields in constructor order."""


class _Pickler(pickle.Pickler):
    """Pickles the answers' dataclasses as constructor calls.

    A frozen dataclass with slots unpickles through ``dataclasses._dataclass_setstate``,
    which looks its fields up again for every object; the listener unpickles on its event
    loop, where a call of the class is cheaper.
    """

    def reducer_override(self, obj: Any) -> Any:
        names = _BY_FIELDS.get(type(obj))
        if names is None:
            return NotImplemented
        return type(obj), tuple(getattr(obj, n) for n in names)


def dumps(answer: object) -> bytes:
    """An answer as its wire bytes (length first)."""
    buffer = io.BytesIO()
    buffer.write(b"\0" * ANSWER.size)
    _Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(answer)
    data = buffer.getbuffer()
    ANSWER.pack_into(data, 0, len(data) - ANSWER.size)
    out = bytes(data)
    data.release()
    return out


def loads(data: memoryview) -> Any:
    """An answer from its pickle (without the length)."""
    return pickle.loads(data)  # noqa: S301 - our own worker process


def _requests(buffer: bytearray) -> Iterator[Request]:
    """The complete requests at the head of ``buffer`` (taken out of it)."""
    start = 0
    while len(buffer) - start >= REQUEST.size:
        length, size, oversized, at, peer_len, decided_len = REQUEST.unpack_from(buffer, start)
        body = start + REQUEST.size
        payload = body + peer_len
        end = payload + length + decided_len
        if len(buffer) < end:
            break
        peer = bytes(buffer[body:payload]).decode("utf-8", "replace")
        decided = bytes(buffer[payload + length : end])
        yield Request(bytes(buffer[payload : payload + length]), size, bool(oversized), at, peer, decided)
        start = end
    del buffer[:start]


def serve(sock: socket.socket, rules: IntakeRules, store: Path | None, batch_max: int) -> None:
    """The worker: answer requests until the listener's end closes.

    Without ``store`` (a decider) each frame is answered as soon as it is decided. With it
    (the committer) a batch is what has arrived when the worker is free, joined by what
    arrives while it is read (before the commit takes the store's lock): a frame that came in
    meanwhile shares this commit instead of waiting for the next one.

    What the worker keeps (the imported modules' objects, fhir.resources' ~90k; the mapper's
    caches of validated resources and elements) is moved out of the garbage collector's reach
    (``gc.freeze``) at the start and again every ``FREEZE_EVERY`` frames: a decider's full
    collection of its caches took 33-38 ms, during which its frames waited (the largest ACK
    delays of ``bench_hl7.py``), and found nothing; a whole benchmark run's collections
    found 10 objects. What a frozen object leaves behind is still freed by its reference
    count (a cache entry dropped), and the youngest generation is collected before each
    freeze, so a reference cycle is frozen as garbage only if it died after surviving one.
    """
    mapper = rules.mapper()
    db = open_context_file(store) if store is not None else None
    gc.freeze()
    unfrozen = 0
    buffer = bytearray()
    try:
        with sock:
            open_ = True
            while open_:
                batch = list(_requests(buffer))
                unfrozen += len(batch)
                if unfrozen >= FREEZE_EVERY:  # young garbage collected first, not frozen
                    gc.collect(0)
                    gc.freeze()
                    unfrozen = 0
                if not batch:
                    chunk = sock.recv(1 << 20)
                    if not chunk:
                        return
                    buffer += chunk
                    continue
                if db is None:
                    for r in batch:  # each answer goes out as soon as it is decided
                        if not _send(sock, [_decide(r, rules, mapper)]):
                            return
                    continue
                decided = [_decide(r, rules, mapper) for r in batch]
                while len(batch) < batch_max:
                    open_, more = _late(sock, buffer)
                    if not more:
                        break
                    batch += more
                    decided += [_decide(r, rules, mapper) for r in more]
                if not _send(sock, _settle(batch, decided, db, batch_max, rules.rejected_max_rows)):
                    return
    finally:
        if db is not None:
            db.close()


def _send(sock: socket.socket, answers: Sequence[object]) -> bool:
    """Send answers; ``False``: the listener went away (what was committed is resent to it)."""
    try:
        sock.sendall(b"".join(dumps(a) for a in answers))
    except OSError:
        return False
    return True


def _late(sock: socket.socket, buffer: bytearray) -> tuple[bool, list[Request]]:
    """Whether the socket is still open, and the requests that arrived by now (no waiting)."""
    try:
        chunk = sock.recv(1 << 20, socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        return True, []
    if not chunk:
        return False, []
    buffer += chunk
    return True, list(_requests(buffer))


def _decide(r: Request, rules: IntakeRules, mapper: V2FhirMapper) -> Intake | str | AuditMarks:
    """The decision on a frame: a decider's (``r.decided``), else made here; or the audit
    pump's marks (the listener's, for the committer's next commit)."""
    if r.decided:
        decision: Intake | str | AuditMarks = pickle.loads(r.decided)  # noqa: S301 - our own processes
        return decision
    try:
        return intake_of(r.payload, r.size, r.oversized, rules, mapper)
    except Exception as exc:  # noqa: BLE001 - a bug in the mapping: the listener answers AE
        return type(exc).__name__


def _answer(
    batch: Sequence[Request], rules: IntakeRules, mapper: V2FhirMapper, db: Database | None, batch_max: int
) -> list[object]:
    decided = [_decide(r, rules, mapper) for r in batch]
    return _settle(batch, decided, db, batch_max, rules.rejected_max_rows)


def _settle(
    batch: Sequence[Request],
    decided: Sequence[Intake | str | AuditMarks],
    db: Database | None,
    batch_max: int,
    quota: int,
) -> list[object]:
    """The answers: the decisions (no store: PostgreSQL), or what storing them did."""
    if db is None:
        return list(decided)
    out: list[object] = []
    for first in range(0, len(batch), batch_max):
        out += _store(db, batch[first : first + batch_max], decided[first : first + batch_max], quota)
    return out


def _store(
    db: Database, batch: Sequence[Request], decided: Sequence[Intake | str | AuditMarks], quota: int
) -> list[Stored]:
    """Store what can be stored in one commit; answer the rest as failed."""
    items: list[InboxEntry | Rejection | AuditMarks] = []
    where: list[int] = []
    out = [
        Stored(None, Disposition.FAILED, AckError("207", _INTERNAL), f"failed: the mapping raised {d}")
        if isinstance(d, str)
        else Stored(None if isinstance(d, AuditMarks) else d.header, Disposition.FAILED, None)
        for d in decided
    ]
    for i, (r, d) in enumerate(zip(batch, decided, strict=True)):
        if isinstance(d, str):
            continue
        if isinstance(d, AuditMarks):
            items.append(d)
        elif d.rejected:
            assert d.error is not None
            items.append(Rejection(r.payload, r.peer, d.header, d.error, r.received_at))
        else:
            assert d.header is not None
            items.append(InboxEntry(d.header, r.payload, r.peer, r.received_at, d.update, d.error, d.digest))
        where.append(i)
    try:
        results: Sequence[object] = _writer(db, quota).store_batch(items) if items else []
    except Exception as exc:  # noqa: BLE001 - the commit failed: nothing of the batch is stored
        results = [exc] * len(items)
    for n, (i, item, result) in enumerate(zip(where, items, results, strict=True)):
        out[i] = _stored(item, result, len(items) if n == 0 else 0)
    return out


def _writer(db: Database, quota: int) -> ContextWriter:
    """The worker's one writer of ``db`` (it remembers the resources it opened)."""
    writer = _WRITERS.get(db)
    if writer is None:
        writer = _WRITERS[db] = ContextWriter(db, rejected_max_rows=quota)
    return writer


def _stored(item: InboxEntry | Rejection | AuditMarks, result: object, commit: int) -> Stored:
    if isinstance(item, AuditMarks):
        failed = isinstance(result, Exception)
        problem = f"audit marks not stored: {type(result).__name__}" if failed else ""
        return Stored(None, Disposition.FAILED if failed else Disposition.APPLIED, None, problem, commit)
    if isinstance(item, Rejection):  # answered AR whether or not its head could be kept
        problem = "" if not isinstance(result, Exception) else f"rejected message not kept: {type(result).__name__}"
        return Stored(item.header, Disposition.REJECTED, item.error, problem, commit)
    if isinstance(result, (TransientIOError, OSError)):
        return Stored(item.header, Disposition.FAILED, AckError("207", _NOT_STORED), f"not stored: {result}")
    if isinstance(result, Exception):
        return Stored(
            item.header, Disposition.FAILED, AckError("207", _INTERNAL), f"not stored: {type(result).__name__}"
        )
    disposition, error = result  # type: ignore[misc]
    return Stored(item.header, disposition, error, "", commit)
