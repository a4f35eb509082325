"""Audit events and the hash chain that makes the trail tamper-evident.

Each stored event carries ``hash = sha256(prev_hash || canonical_json(event))``. Changing,
removing or reordering any stored event breaks every later hash, which ``verify_chain`` finds.
Events carry UIDs and hashed identifiers only, never names or patient IDs (PS3.15 A.5 records
*who did what to which object*; the object is named by UID).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from core.types import AuditEventType

__all__ = ["AuditEntry", "AuditEvent", "ChainBreak", "GENESIS", "chain_hash", "verify_chain"]

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


def verify_chain(rows: Iterable[tuple[int, str, str, str]]) -> ChainBreak | None:
    """Check stored events ``(seq, canonical, prev_hash, hash)`` in ``seq`` order.

    Returns:
        ``None`` if the chain is intact, else the first break.
    """
    expected_prev = GENESIS
    last_seq = 0
    for seq, canonical, prev_hash, digest in rows:
        if seq != last_seq + 1:
            return ChainBreak(seq, f"sequence jumps from {last_seq} to {seq}")
        if prev_hash != expected_prev:
            return ChainBreak(seq, "prev_hash does not match the previous event")
        if chain_hash(prev_hash, canonical) != digest:
            return ChainBreak(seq, "event content does not match its hash")
        expected_prev, last_seq = digest, seq
    return None
