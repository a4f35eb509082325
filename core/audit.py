"""Audit events and the hash chain that makes the trail tamper-evident.

Each stored event carries ``hash = sha256(prev_hash || canonical_json(event))``. Changing,
removing or reordering any stored event breaks every later hash, which ``verify_chain`` finds.
The hash is unkeyed, so entries are also signed (``core.audit_seal``): rewriting a row and
re-hashing the rest needs the signing key. What is shown is read from the signed canonical JSON
(``entry_from_canonical``); the plain columns beside it (for indexes) must equal it.
Events carry UIDs and hashed identifiers only, never names or patient IDs (PS3.15 A.5 records
*who did what to which object*; the object is named by UID).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from core.audit_seal import AuditKeys, ChainHead
from core.types import AuditEventType

__all__ = [
    "AuditEntry",
    "AuditEvent",
    "ChainBreak",
    "ChainReport",
    "GENESIS",
    "StoredEvent",
    "chain_hash",
    "check_chain",
    "entry_from_canonical",
    "verify_chain",
]

GENESIS = "0" * 64
"""The ``prev_hash`` of the first event."""


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One thing that happened, by whom, to what.

    Attributes:
        type: What happened.
        actor: Who did it: a pipeline stage (``"stage:validator"``) or a user (``"user:alice"``).
        study_uid: The study concerned, if any.
        sop_instance_uid: The instance concerned, if any.
        job_id: The ledger job, if any.
        detail: Small JSON-serialisable context (reason codes, model version, status).
    """

    type: AuditEventType
    actor: str
    study_uid: str = ""
    sop_instance_uid: str = ""
    job_id: int | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def canonical(self, at: float) -> str:
        """Return the canonical JSON that the chain hash covers."""
        return json.dumps(
            {
                "type": str(self.type),
                "actor": self.actor,
                "study_uid": self.study_uid,
                "sop_instance_uid": self.sop_instance_uid,
                "job_id": self.job_id,
                "detail": self.detail,
                "at": round(at, 6),
            },
            sort_keys=True,
            separators=(",", ":"),
            default=str,
        )


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """An audit event as stored: its place in the chain and when it was appended."""

    seq: int
    at: float
    type: str
    actor: str
    study_uid: str
    sop_instance_uid: str
    job_id: int | None
    detail: dict[str, Any]


def chain_hash(prev_hash: str, canonical: str) -> str:
    """Return the hash of an event given the previous event's hash."""
    return hashlib.sha256((prev_hash + canonical).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class ChainBreak:
    """Where a stored chain stops verifying."""

    seq: int
    reason: str


_COLUMNS = ("type", "actor", "study_uid", "sop_instance_uid", "job_id", "detail", "at")
"""The plain columns stored beside the canonical JSON, in ``StoredEvent.columns`` order."""


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One stored row as the verifier sees it.

    Attributes:
        seq: Its place in the chain.
        canonical: The canonical JSON the hash and the signature cover.
        prev_hash: The previous entry's hash.
        hash: Its chain hash.
        key_id: The key that signed it (``None``: a legacy entry from before signing).
        sig: Its signature (base64), or ``None``.
        columns: The plain columns ``(type, actor, study_uid, sop_instance_uid, job_id,
            detail_json, at)``, or ``None`` where the caller has none to compare.
    """

    seq: int
    canonical: str
    prev_hash: str
    hash: str
    key_id: str | None = None
    sig: str | None = None
    columns: tuple[Any, ...] | None = None


def entry_from_canonical(seq: int, canonical: str) -> AuditEntry:
    """The entry as shown: every field from the signed canonical JSON, none from the columns."""
    raw = json.loads(canonical)
    job_id = raw["job_id"]
    return AuditEntry(
        seq,
        float(raw["at"]),
        raw["type"],
        raw["actor"],
        raw["study_uid"],
        raw["sop_instance_uid"],
        None if job_id is None else int(job_id),
        raw["detail"],
    )


def _column_mismatch(canonical: str, columns: tuple[Any, ...]) -> str | None:
    """The first plain column that differs from the canonical JSON, or ``None``."""
    try:
        raw = json.loads(canonical)
        detail = json.loads(columns[5])
    except (ValueError, TypeError):
        return "canonical JSON or detail column is not JSON"
    values = dict(zip(_COLUMNS, columns, strict=True))
    values["detail"] = detail
    values["at"] = round(float(columns[6]), 6)
    values["job_id"] = None if columns[4] is None else int(columns[4])
    for name in _COLUMNS:
        if values[name] != raw.get(name):
            return f"column {name} differs from the signed event"
    return None


@dataclass(frozen=True, slots=True)
class ChainReport:
    """The outcome of checking a stored chain.

    Attributes:
        broken: The first bad entry, or ``None``.
        entries: How many entries were read.
        last_seq: The newest entry's sequence number (0: none).
        last_hash: Its hash.
        signed: How many entries carried a verified signature.
        head_checked: Whether an exported head was checked (truncation).
    """

    broken: ChainBreak | None
    entries: int
    last_seq: int
    last_hash: str
    signed: int
    head_checked: bool


def _entry_problem(
    row: StoredEvent, expected_prev: str, last_seq: int, keys: AuditKeys | None, legacy_until: int
) -> str | None:
    """Why one entry fails, or ``None``: its place, its hash, its columns, its signature."""
    if row.seq != last_seq + 1:
        return f"sequence jumps from {last_seq} to {row.seq}"
    if row.prev_hash != expected_prev:
        return "prev_hash does not match the previous event"
    if chain_hash(row.prev_hash, row.canonical) != row.hash:
        return "event content does not match its hash"
    if row.columns is not None and (mismatch := _column_mismatch(row.canonical, row.columns)):
        return mismatch
    if keys is None or (row.seq <= legacy_until and row.sig is None):
        return None  # signatures not checked, or a legacy entry from before signing started
    problem = keys.problem(row.key_id, row.seq, row.hash, row.sig)
    return None if problem is None else ("unsigned entry after signing started" if not row.sig else problem)


def _head_problem(head: ChainHead, keys: AuditKeys | None, legacy_until: int) -> str | None:
    """Why an exported head cannot be trusted, or ``None`` (a forged head file is refused)."""
    if head.legacy_until != legacy_until:
        return f"legacy entries end at seq {legacy_until}, the exported head says {head.legacy_until}"
    if keys is not None and (problem := keys.problem(head.key_id, head.seq, head.hash, head.sig)):
        return f"exported chain head: {problem}"
    return None


def check_chain(
    rows: Iterable[StoredEvent | tuple[int, str, str, str]],
    keys: AuditKeys | None = None,
    legacy_until: int = 0,
    head: ChainHead | None = None,
    trusted: tuple[int, str] | None = None,
) -> ChainReport:
    """Check stored entries in ``seq`` order; the first bad one is ``broken``.

    Args:
        rows: The entries (plain ``(seq, canonical, prev_hash, hash)`` tuples: hashes only).
        keys: Trusted public keys; ``None``: signatures are not checked.
        legacy_until: Entries up to this one may be unsigned (from before signing started).
        head: An exported head: the chain must reach it, with the same hash there.
        trusted: ``(seq, hash)`` of an entry whose signature was verified before: entries up
            to it are checked by hash only (the hash chain ties them to it), which keeps a
            periodic check cheap.
    """
    expected_prev, last_seq, signed, n = GENESIS, 0, 0, 0
    if head is not None and (problem := _head_problem(head, keys, legacy_until)):
        return ChainReport(ChainBreak(head.seq, problem), 0, 0, GENESIS, 0, True)
    for item in rows:
        row = item if isinstance(item, StoredEvent) else StoredEvent(*item)
        below = trusted is not None and row.seq <= trusted[0]
        problem = _entry_problem(row, expected_prev, last_seq, None if below else keys, legacy_until)
        if problem is None and trusted is not None and row.seq == trusted[0] and row.hash != trusted[1]:
            problem = "hash differs from the one verified before"
        if problem is None and head is not None and row.seq == head.seq and row.hash != head.hash:
            problem = f"hash differs from the exported chain head (seq {head.seq})"
        if problem is not None:
            return ChainReport(ChainBreak(row.seq, problem), n, last_seq, expected_prev, signed, head is not None)
        n, signed = n + 1, signed + (row.sig is not None)
        expected_prev, last_seq = row.hash, row.seq
    broken = None
    if head is not None and last_seq < head.seq:
        broken = ChainBreak(
            last_seq + 1, f"entries {last_seq + 1} to {head.seq} are missing: the exported head is at seq {head.seq}"
        )
    return ChainReport(broken, n, last_seq, expected_prev, signed, head is not None)


def verify_chain(
    rows: Iterable[StoredEvent | tuple[int, str, str, str]],
    keys: AuditKeys | None = None,
    legacy_until: int = 0,
    head: ChainHead | None = None,
) -> ChainBreak | None:
    """Check stored entries in ``seq`` order (``check_chain``).

    Returns:
        ``None`` if the chain is intact, else the first break.
    """
    return check_chain(rows, keys, legacy_until, head).broken
