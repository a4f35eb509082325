from __future__ import annotations

import base64
import json
import pickle

import pytest

from core.audit import GENESIS, AuditEvent, StoredEvent, chain_hash, check_chain, entry_from_canonical, verify_chain
from core.audit_seal import AuditKeys, AuditSigner, ChainHead, key_id_of
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


# ------------------------------------------------------------------ signed chain (issue 13)
SIGNER = AuditSigner.generate()
KEYS = AuditKeys([SIGNER.public])


def _columns(canonical):
    raw = json.loads(canonical)
    detail = json.dumps(raw["detail"], sort_keys=True)
    return (raw["type"], raw["actor"], raw["study_uid"], raw["sop_instance_uid"], raw["job_id"], detail, raw["at"])


def _signed(events, signer=SIGNER, legacy=0, rows=None):
    """Rows as the ledger stores them: the first ``legacy`` unsigned, the rest signed."""
    out, prev = [], GENESIS
    for seq, canonical in enumerate(rows or [e.canonical(at) for e, at in events], start=1):
        digest = chain_hash(prev, canonical)
        key, sig = (None, None) if seq <= legacy else (signer.key_id, signer.sign(seq, digest))
        out.append(StoredEvent(seq, canonical, prev, digest, key, sig, _columns(canonical)))
        prev = digest
    return out


def _head(rows, at=99.0, legacy=0):
    last = rows[-1]
    return ChainHead(last.seq, last.hash, last.key_id, last.sig, legacy, at)


MANY = [(AuditEvent(AuditEventType.JOB_RETRY, f"w{i}", f"1.{i}", job_id=i), 10.0 + i) for i in range(8)]


def test_a_signed_chain_verifies_with_its_key_and_reports_what_it_checked():
    rows = _signed(MANY)
    report = check_chain(rows, KEYS, head=_head(rows))
    assert report.broken is None and report.signed == 8 and report.last_seq == 8 and report.head_checked


def test_a_changed_column_is_found_even_though_hash_and_signature_hold():
    rows = _signed(MANY)
    columns = list(rows[2].columns)
    columns[1] = "someone-else"  # UPDATE audit SET actor = 'someone-else'
    rows[2] = StoredEvent(*[getattr(rows[2], f) for f in StoredEvent.__slots__[:-1]], tuple(columns))
    broken = check_chain(rows, KEYS).broken
    assert broken.seq == 3 and broken.reason == "column actor differs from the signed event"


def test_what_is_shown_comes_from_the_signed_json():
    canonical = MANY[3][0].canonical(13.0)
    entry = entry_from_canonical(4, canonical)
    assert (entry.seq, entry.actor, entry.study_uid, entry.job_id, entry.at) == (4, "w3", "1.3", 3, 13.0)


def test_a_deleted_middle_entry_is_found():
    rows = _signed(MANY)
    del rows[4]
    broken = check_chain(rows, KEYS).broken
    assert broken.seq == 6 and "jumps from 4 to 6" in broken.reason


def test_deleting_the_newest_entries_is_found_against_the_exported_head():
    rows = _signed(MANY)
    head = _head(rows)
    assert check_chain(rows[:5], KEYS).broken is None  # without the head, truncation is invisible
    broken = check_chain(rows[:5], KEYS, head=head).broken
    assert broken.seq == 6 and "6 to 8 are missing" in broken.reason


def test_a_chain_rewritten_and_resigned_with_another_key_is_refused():
    """The attacker changes an event and recomputes every later hash and signature, with a key
    of their own: the hashes hold, the signatures do not verify with a trusted key."""
    canonicals = [e.canonical(at) for e, at in MANY]
    canonicals[2] = canonicals[2].replace('"w2"', '"w9"')
    forged = _signed(MANY, signer=AuditSigner.generate(), rows=canonicals)
    broken = check_chain(forged, KEYS).broken
    assert broken.seq == 1 and "not a trusted key" in broken.reason
    # ... even when they reuse the real key id: the signature itself fails
    thief = AuditSigner.generate()
    thief.key_id = SIGNER.key_id
    broken = check_chain(_signed(MANY, signer=thief, rows=canonicals), KEYS).broken
    assert broken.seq == 1 and "does not verify" in broken.reason


def test_a_rewrite_with_hashes_recomputed_but_old_signatures_kept_is_found_at_the_rewritten_entry():
    rows = _signed(MANY)
    canonicals = [r.canonical for r in rows]
    canonicals[4] = canonicals[4].replace('"w4"', '"w9"')
    rechained = _signed(MANY, rows=canonicals)
    mixed = [
        StoredEvent(r.seq, r.canonical, r.prev_hash, r.hash, o.key_id, o.sig, r.columns)
        for r, o in zip(rechained, rows, strict=True)
    ]
    broken = check_chain(mixed, KEYS).broken
    assert broken.seq == 5 and "does not verify" in broken.reason


def test_legacy_entries_verify_by_hash_only_up_to_where_signing_started():
    rows = _signed(MANY, legacy=3)
    assert check_chain(rows, KEYS, legacy_until=3).broken is None
    broken = check_chain(rows, KEYS, legacy_until=2).broken  # the boundary cannot be moved up
    assert broken.seq == 3 and broken.reason == "unsigned entry after signing started"
    stripped = [StoredEvent(r.seq, r.canonical, r.prev_hash, r.hash, None, None, r.columns) for r in rows]
    assert check_chain(stripped, KEYS, legacy_until=3).broken.seq == 4  # signatures stripped


def test_an_exported_head_must_be_signed_and_agree_on_the_legacy_boundary():
    rows = _signed(MANY, legacy=3)
    good = _head(rows, legacy=3)
    assert check_chain(rows, KEYS, legacy_until=3, head=good).broken is None
    forged = ChainHead(good.seq, good.hash, good.key_id, base64.b64encode(b"x" * 64).decode(), 3, 99.0)
    assert "exported chain head" in check_chain(rows, KEYS, legacy_until=3, head=forged).broken.reason
    moved = ChainHead(good.seq, good.hash, good.key_id, good.sig, 8, 99.0)
    assert "legacy entries end at seq 3" in check_chain(rows, KEYS, legacy_until=3, head=moved).broken.reason
    assert ChainHead.from_json(good.to_json()) == good


def test_a_rotated_key_still_verifies_its_entries_once_trusted():
    old, new = AuditSigner.generate(), AuditSigner.generate()
    rows = _signed(MANY[:4], signer=old)
    prev = rows[-1].hash
    for seq, (e, at) in enumerate(MANY[4:], start=5):
        digest = chain_hash(prev, e.canonical(at))
        rows.append(StoredEvent(seq, e.canonical(at), prev, digest, new.key_id, new.sign(seq, digest)))
        prev = digest
    assert "not a trusted key" in check_chain(rows, AuditKeys([new.public])).broken.reason
    keys = AuditKeys.from_text([old.public_text()]).with_key(new.public)
    assert check_chain(rows, keys).broken is None and set(keys.ids) == {old.key_id, new.key_id}


def test_a_trusted_anchor_skips_old_signatures_but_not_their_hashes():
    rows = _signed(MANY)
    anchor = (5, rows[4].hash)
    bad_sig = [StoredEvent(r.seq, r.canonical, r.prev_hash, r.hash, r.key_id, "AAAA", r.columns) for r in rows]
    assert check_chain(bad_sig, KEYS, trusted=anchor).broken.seq == 6  # first entry after the anchor
    assert check_chain(rows, KEYS, trusted=(5, "0" * 64)).broken.seq == 5


def test_keys_load_from_pem_and_seed_and_refuse_other_text():
    pem = SIGNER.to_pem()
    assert AuditSigner.from_text(pem).key_id == SIGNER.key_id == key_id_of(SIGNER.public)
    seed = base64.b64encode(b"\x01" * 32).decode()
    assert AuditSigner.from_text(seed).key_id == AuditSigner.from_text(seed).key_id
    with pytest.raises(ValueError, match="32-byte"):
        AuditSigner.from_text(base64.b64encode(b"short").decode())
    with pytest.raises(ValueError, match="neither PEM nor base64"):
        AuditSigner.from_text("not a key!")
    with pytest.raises(ValueError, match="expected 32"):
        AuditKeys.from_text([base64.b64encode(b"x" * 16).decode()])
