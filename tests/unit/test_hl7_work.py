"""actors.adapters._hl7_work: the parse worker's framing, its answers, and what it answers when
its commit fails (a fake store; the real one is in tests/integration/test_hl7_listener.py)."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any

import pytest

from actors.adapters._hl7_work import ANSWER, REQUEST, Request, Stored, _answer, _requests, dumps, loads
from core.acks import AckError, Disposition
from core.errors import MessageInvalid, TransientIOError
from core.v2fhir import V2FhirMapper
from core.v2intake import Intake, IntakeRules
from state.context_store import AuditMarks
from tests.hl7_messages import adt, orm

RULES = IntakeRules(b"test-key", ("2.5.1",), ("P",), 4096, 4096)
MAPPER = RULES.mapper()


def wire(payload: bytes, peer: str = "10.0.0.1:2575", at: float = 5.0, decided: bytes = b"") -> bytes:
    who = peer.encode()
    return REQUEST.pack(len(payload), len(payload), 0, at, len(who), len(decided)) + who + payload + decided


def request(raw: str) -> Request:
    return Request(raw.encode(), len(raw), False, 5.0, "10.0.0.1:2575")


class DownStore:
    """A context store whose commits fail."""

    dialect = "sqlite"

    def run(self, fn: Callable[[Any], Any]) -> Any:
        raise TransientIOError("context store unreachable")


def test_requests_come_out_whole_however_the_bytes_arrive():
    data = wire(b"MSH|first") + wire(b"MSH|second", peer="h:1", at=7.5)
    buffer = bytearray()
    got: list[Request] = []
    for i in range(0, len(data), 7):  # seven bytes at a time
        buffer += data[i : i + 7]
        got += list(_requests(buffer))
    assert [(r.payload, r.peer, r.received_at) for r in got] == [
        (b"MSH|first", "10.0.0.1:2575", 5.0),
        (b"MSH|second", "h:1", 7.5),
    ]
    assert buffer == bytearray()


def test_answers_survive_the_wire():
    intake = _answer([request(orm("W1"))], RULES, MAPPER, None, 8)[0]
    assert isinstance(intake, Intake) and intake.update is not None
    stored = Stored(intake.header, Disposition.APPLIED, AckError("103", "odd", "PV1^1^2", "W"), "", 3)
    for answer in (intake, stored):
        data = dumps(answer)
        (length,) = ANSWER.unpack_from(data)
        assert length == len(data) - ANSWER.size
        assert loads(memoryview(data)[ANSWER.size :]) == answer


def test_a_failed_commit_answers_ae_207_and_rejects_stay_rejects():
    batch = [request(adt("A01", "S1")), request("GARBAGE"), request(orm("S2"))]
    answers = _answer(batch, RULES, MAPPER, DownStore(), 256)  # type: ignore[arg-type]
    assert [a.disposition for a in answers] == [Disposition.FAILED, Disposition.REJECTED, Disposition.FAILED]  # type: ignore[attr-defined]
    failed = answers[0]
    assert isinstance(failed, Stored) and failed.error is not None
    assert (failed.error.code, failed.commit) == ("207", 0)
    assert "resend" in failed.error.text and failed.problem.startswith("not stored")
    assert answers[2].header.control_id == "S2"  # type: ignore[attr-defined]


def test_remembered_elements_never_let_an_invalid_resource_through():
    """The mapper validates a new resource with the elements it saw before taken as valid
    (core.v2fhir ``_validate_parts``); a bad element still fails, with the error naming it."""
    mapper = V2FhirMapper(b"test-key")
    good = {
        "resourceType": "Patient",
        "id": "p1",
        "identifier": [{"value": "4711", "type": {"coding": [{"code": "MR"}]}}],
        "name": [{"family": "DOE"}],
    }
    mapper._check(good, "C1")
    mapper._check({**good, "id": "p2"}, "C2")  # same elements, remembered
    assert len(mapper._elements) == 2
    bad_code = {**good, "id": "p3", "identifier": [{"value": "4711", "type": {"coding": [{"code": 5}]}}]}
    bad_date = {**good, "id": "p4", "birthDate": "1970-13-45"}
    for bad, where in ((bad_code, "Patient.identifier.0.type.coding.0.code"), (bad_date, "Patient.birthDate")):
        with pytest.raises(MessageInvalid) as caught:
            mapper._check(bad, "C3")
        assert where in str(caught.value) and caught.value.error_code == "207"
    with pytest.raises(MessageInvalid):  # an element repeated in a list that forbids it stays wrong
        mapper._check({**good, "id": "p5", "name": [None]}, "C4")


def test_the_committer_takes_a_deciders_answer_unopened_and_the_audit_marks():
    """The listener hands the committer a decider's answer as it came (``Request.decided``)
    and the audit pump's marks: the committer stores that decision (it does not decide the
    frame again), and a failed commit answers each as not stored."""
    decided = dumps(_answer([request(orm("C1"))], RULES, MAPPER, None, 8)[0])[ANSWER.size :]
    marks = pickle.dumps(AuditMarks(((1, 0),), (2,)))
    buffer = bytearray(wire(b"GARBAGE", decided=decided) + wire(b"", decided=marks))
    frame, mark = list(_requests(buffer))
    assert (frame.payload, frame.decided, mark.decided) == (b"GARBAGE", decided, marks)
    stored = _answer([frame, mark], RULES, MAPPER, DownStore(), 256)  # type: ignore[arg-type]
    assert [(s.header and s.header.control_id, s.disposition) for s in stored] == [  # type: ignore[attr-defined]
        ("C1", Disposition.FAILED),  # the decider's decision (GARBAGE alone would be AR)
        (None, Disposition.FAILED),
    ]
    assert stored[1].problem == "audit marks not stored: TransientIOError"  # type: ignore[attr-defined]


def test_a_worker_moves_what_it_keeps_out_of_the_collectors_reach_as_it_goes(monkeypatch):
    """Issue 14: a decider's full garbage collection of its caches stalled its frames 33-38 ms
    (finding nothing); it freezes at its start and, after collecting the young generation,
    again every ``FREEZE_EVERY`` frames, so no full collection has much to walk."""
    import socket
    import threading

    from actors.adapters import _hl7_work

    calls: list[tuple[str, int]] = []

    class Collector:  # the gc module as the worker uses it, recording instead
        @staticmethod
        def freeze() -> None:
            calls.append(("freeze", 0))

        @staticmethod
        def collect(generation: int = 2) -> int:
            calls.append(("collect", generation))
            return 0

    monkeypatch.setattr(_hl7_work, "gc", Collector)
    monkeypatch.setattr(_hl7_work, "FREEZE_EVERY", 4)
    ours, theirs = socket.socketpair()
    worker = threading.Thread(target=_hl7_work.serve, args=(theirs, RULES, None, 16))
    worker.start()
    answers = 0
    with ours:
        for n in range(10):
            ours.sendall(wire(adt("A01", f"F{n}").encode()))  # one at a time: a batch each
            (length,) = ANSWER.unpack(ours.recv(ANSWER.size, socket.MSG_WAITALL))
            assert isinstance(loads(memoryview(ours.recv(length, socket.MSG_WAITALL))), Intake)
            answers += 1
    worker.join(10)
    assert answers == 10 and not worker.is_alive()
    assert calls == [("freeze", 0)] + [("collect", 0), ("freeze", 0)] * 2  # at the start, after 4 and 8
