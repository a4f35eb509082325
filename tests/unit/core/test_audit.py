from __future__ import annotations

import pickle

from core.audit import GENESIS, AuditEvent, chain_hash, verify_chain
from core.types import AuditEventType


def _chain(events):
    rows, prev = [], GENESIS
    for seq, (event, at) in enumerate(events, start=1):
        canonical = event.canonical(at)
        digest = chain_hash(prev, canonical)
        rows.append((seq, canonical, prev, digest))
        prev = digest
    return rows


EVENTS = [
    (AuditEvent(AuditEventType.INSTANCE_RECEIVED, "listener:A", "1.2", "1.2.3"), 10.0),
    (AuditEvent(AuditEventType.VALIDATED, "stage:validator", "1.2", job_id=1), 11.0),
    (AuditEvent(AuditEventType.SR_DELIVERED, "stage:delivery", "1.2", "2.25.1", 1, {"status": "0x0000"}), 12.0),
]


def test_intact_chain_verifies():
    assert verify_chain(_chain(EVENTS)) is None


def test_changed_event_is_found():
    rows = _chain(EVENTS)
    seq, canonical, prev, digest = rows[1]
    rows[1] = (seq, canonical.replace("stage:validator", "stage:evil"), prev, digest)
    broken = verify_chain(rows)
    assert broken is not None and broken.seq == 2 and "content" in broken.reason


def test_removed_event_is_found():
    rows = _chain(EVENTS)
    del rows[1]
    broken = verify_chain(rows)
    assert broken is not None and broken.seq == 3


def test_canonical_form_is_stable_and_has_no_unordered_keys():
    e = AuditEvent(AuditEventType.ROUTED, "x", detail={"b": 1, "a": 2})
    assert e.canonical(1.0) == e.canonical(1.0)
    assert e.canonical(1.0).index('"a"') < e.canonical(1.0).index('"b"')


def test_event_pickles():
    e = EVENTS[2][0]
    assert pickle.loads(pickle.dumps(e)) == e
