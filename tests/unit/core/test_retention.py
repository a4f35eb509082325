"""core.retention: what is past its retention and settled goes; nothing else does."""

from __future__ import annotations

from core.retention import DAY_S, Candidate, RetentionPolicy, Store, counts, due, purge_event
from core.types import AuditEventType

NOW = 1_000 * DAY_S


def test_only_settled_items_past_their_store_days_are_due():
    policy = RetentionPolicy.of(spool_after_delivery_days=7, rejected_days=30)
    items = [
        Candidate(Store.SPOOL, "old-delivered", NOW - 8 * DAY_S),
        Candidate(Store.SPOOL, "old-undelivered", NOW - 80 * DAY_S, settled=False),
        Candidate(Store.SPOOL, "young", NOW - 6 * DAY_S),
        Candidate(Store.SPOOL, "exactly", NOW - 7 * DAY_S),
        Candidate(Store.REJECTED, "rej-old", NOW - 31 * DAY_S),
        Candidate(Store.REJECTED, "rej-young", NOW - 29 * DAY_S),
        Candidate(Store.QUARANTINE, "forever", 0.0),  # quarantine_days None: kept forever
        Candidate(Store.HL7_RAW, "forever-too", 0.0),
    ]
    assert [c.key for c in due(items, policy, NOW)] == ["old-delivered", "exactly", "rej-old"]
    assert policy.active == {Store.SPOOL, Store.REJECTED}
    assert policy.cutoff(Store.QUARANTINE, NOW) is None


def test_nothing_is_purged_by_default():
    policy = RetentionPolicy.of()
    assert not policy.active
    assert due([Candidate(s, "x", 0.0) for s in Store], policy, NOW) == []


def test_zero_days_purges_everything_settled_at_once():
    policy = RetentionPolicy.of(hl7_raw_days=0)
    assert len(due([Candidate(Store.HL7_RAW, "a", NOW), Candidate(Store.HL7_RAW, "b", NOW + 1)], policy, NOW)) == 1


def test_the_purge_event_counts_per_store_and_names_nobody():
    purged = [Candidate(Store.SPOOL, "1.2.3|/var/spool/x.dcm", 0.0)] * 2 + [Candidate(Store.REJECTED, "r", 0.0)]
    event = purge_event({**counts(purged), "hl7_raw": 3, "quarantine": 0}, "system:retention", failed=1)
    assert event is not None and event.type is AuditEventType.DATA_PURGED
    assert event.detail == {"kind": "retention", "counts": {"hl7_raw": 3, "rejected": 1, "spool": 2}, "failed": 1}
    assert event.study_uid == "" and event.sop_instance_uid == "" and "1.2.3" not in event.canonical(0.0)
    assert purge_event({}, "system:retention") is None  # an idle round is not audited
