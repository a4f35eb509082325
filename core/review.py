"""Review flags: what the bridge could not decide alone, and who may settle it, why.

A flag is raised, with an audit event, when a prior is refused (``core.priors.RefusalKind``),
when a study reaches its SR version cap (``core.versions.CapReached``) and when a sender's
completion rule is tightened (``core.sources.SenderTightened``). A reviewer resolves it with a
resolution, and must give a reason; the resolution and reason go into the audit trail (PS3.15
A.5: who did what to which object). A resolved flag stays as it is: resolving it again is
refused.

Who may resolve what (``RULES``): patient identity is the PACS administrator's (the data
steward who can correct the PACS); a radiologist may also confirm or reject a pair whose
identity was merely unverifiable, and dismiss a conflict, but never declare two studies whose
names or issuers disagree to be the same patient. Operational flags belong to the operator or
the PACS administrator. The resolutions feed back: ``confirmed_priors`` lets the prior linker
link a confirmed pair, ``released_versions`` lets delivery send a held version.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from core.errors import AccessDenied, RejectedInput
from core.priors import Conflict

__all__ = [
    "FlagKind",
    "FlagState",
    "REASON_MAX",
    "RULES",
    "Resolution",
    "ReviewFlag",
    "ReviewRole",
    "Reviewer",
    "confirmed_priors",
    "flag_for_refusal",
    "released_versions",
    "resolve",
]

REASON_MAX = 1024
"""Longest reason kept (it is shown, audited and stored)."""


class FlagKind(enum.StrEnum):
    """What a flag asks a reviewer to look at."""

    PRIOR_IDENTITY_CONFLICT = "prior_identity_conflict"
    """An earlier study shares the Patient ID, but its name or birth date disagrees."""
    PRIOR_ISSUER_MISMATCH = "prior_issuer_mismatch"
    """An earlier study shares the Patient ID, but the PACS returned another issuer."""
    PRIOR_UNVERIFIED = "prior_unverified"
    """An earlier study shares the Patient ID, but its identity could not be checked."""
    SR_VERSION_CAP = "sr_version_cap"
    """A study and model family reached ``sr.max_versions``; a newer version is held."""
    SENDER_TIGHTENED = "sender_tightened"
    """A sender's completion rule was tightened after it completed a study too early."""


class FlagState(enum.StrEnum):
    """Whether a flag still needs a reviewer."""

    OPEN = "open"
    """Raised, not resolved."""
    RESOLVED = "resolved"
    """Resolved, by whom and why recorded; final."""


class Resolution(enum.StrEnum):
    """How a reviewer settled a flag."""

    SAME_PATIENT = "same_patient"
    """Checked: both studies are this patient's; the prior may be linked."""
    DIFFERENT_PATIENT = "different_patient"
    """Checked: another patient; never link them (correct the ID at the source)."""
    RELEASED = "released"
    """The held SR version may be sent beyond the cap."""
    ACKNOWLEDGED = "acknowledged"
    """Seen; nothing to change."""


class ReviewRole(enum.StrEnum):
    """Roles that may resolve flags."""

    PACS_ADMIN = "pacs_admin"
    """Owns patient identity and routing at the PACS (data steward): any flag."""
    RADIOLOGIST = "radiologist"
    """Reads the studies: prior flags, except declaring a conflicting pair the same patient."""
    OPERATOR = "operator"
    """Runs the bridge: operational flags (version cap, sender tightened)."""


_ANY_PRIOR = frozenset({ReviewRole.PACS_ADMIN, ReviewRole.RADIOLOGIST})
_ADMIN = frozenset({ReviewRole.PACS_ADMIN})
_OPS = frozenset({ReviewRole.OPERATOR, ReviewRole.PACS_ADMIN})

RULES: Mapping[FlagKind, Mapping[Resolution, frozenset[ReviewRole]]] = {
    FlagKind.PRIOR_UNVERIFIED: {
        Resolution.SAME_PATIENT: _ANY_PRIOR,
        Resolution.DIFFERENT_PATIENT: _ANY_PRIOR,
        Resolution.ACKNOWLEDGED: _ANY_PRIOR,
    },
    FlagKind.PRIOR_IDENTITY_CONFLICT: {
        Resolution.SAME_PATIENT: _ADMIN,
        Resolution.DIFFERENT_PATIENT: _ANY_PRIOR,
        Resolution.ACKNOWLEDGED: _ANY_PRIOR,
    },
    FlagKind.PRIOR_ISSUER_MISMATCH: {
        Resolution.SAME_PATIENT: _ADMIN,
        Resolution.DIFFERENT_PATIENT: _ANY_PRIOR,
        Resolution.ACKNOWLEDGED: _ANY_PRIOR,
    },
    FlagKind.SR_VERSION_CAP: {Resolution.RELEASED: _OPS, Resolution.ACKNOWLEDGED: _OPS},
    FlagKind.SENDER_TIGHTENED: {Resolution.ACKNOWLEDGED: _OPS},
}
"""Per flag kind, the resolutions it takes and the roles that may choose each."""


@dataclass(frozen=True, slots=True)
class Reviewer:
    """Who is resolving (``user`` as the audit trail names it, e.g. ``user:alice``)."""

    user: str
    roles: frozenset[ReviewRole]


@dataclass(frozen=True, slots=True)
class ReviewFlag:
    """One review flag.

    Attributes:
        flag_id: The ledger's id (0 before it is stored).
        kind: What to look at.
        study_uid: The study it concerns.
        other_study_uid: The other study (a refused prior), if any.
        detail: Small JSON context without identifiers (differing keywords, counts).
        raised_at: When it was raised.
        state: Open or resolved.
        resolution: How it was resolved.
        resolved_by: Who resolved it.
        resolved_at: When.
        reason: Why, in the reviewer's words.
        job_id: The job that raised it, if any.
        subject: Tells flags of one kind and study apart where there is no other study (the
            family and version of a capped SR, the sender of a tightened rule).
    """

    flag_id: int
    kind: FlagKind
    study_uid: str
    other_study_uid: str = ""
    detail: Mapping[str, Any] = field(default_factory=dict)
    raised_at: float = 0.0
    state: FlagState = FlagState.OPEN
    resolution: Resolution | None = None
    resolved_by: str = ""
    resolved_at: float | None = None
    reason: str = ""
    job_id: int | None = None
    subject: str = ""

    @property
    def is_open(self) -> bool:
        """Whether it still needs a reviewer."""
        return self.state is FlagState.OPEN

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict (for the ledger and ``--json`` output)."""
        return {
            "flag_id": self.flag_id,
            "kind": str(self.kind),
            "study_uid": self.study_uid,
            "other_study_uid": self.other_study_uid,
            "detail": dict(self.detail),
            "raised_at": self.raised_at,
            "state": str(self.state),
            "resolution": str(self.resolution) if self.resolution else None,
            "resolved_by": self.resolved_by,
            "resolved_at": self.resolved_at,
            "reason": self.reason,
            "job_id": self.job_id,
            "subject": self.subject,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> ReviewFlag:
        """Read what ``to_json`` wrote."""
        resolution = raw.get("resolution")
        return cls(
            int(raw["flag_id"]),
            FlagKind(raw["kind"]),
            raw["study_uid"],
            raw.get("other_study_uid", ""),
            dict(raw.get("detail") or {}),
            float(raw.get("raised_at", 0.0)),
            FlagState(raw.get("state", "open")),
            Resolution(resolution) if resolution else None,
            raw.get("resolved_by", ""),
            raw.get("resolved_at"),
            raw.get("reason", ""),
            raw.get("job_id"),
            raw.get("subject", ""),
        )

    def audit_detail(self) -> dict[str, Any]:
        """The detail of the resolution's audit event."""
        return {
            "flag_id": self.flag_id,
            "kind": str(self.kind),
            "other_study_uid": self.other_study_uid,
            "resolution": str(self.resolution) if self.resolution else None,
            "reason": self.reason,
        }


def flag_for_refusal(refusal: Conflict, study_uid: str, detail: Mapping[str, Any], at: float) -> ReviewFlag:
    """The flag a refused prior raises (kind from ``RefusalKind``; not stored yet)."""
    return ReviewFlag(
        0,
        FlagKind(str(refusal.kind)),
        study_uid,
        refusal.study_uid,
        {"differing": list(refusal.differing), **detail},
        at,
    )


def resolve(flag: ReviewFlag, reviewer: Reviewer, resolution: Resolution, reason: str, at: float) -> ReviewFlag:
    """Resolve a flag (the caller stores it and its audit event in one transaction).

    Args:
        flag: The open flag.
        reviewer: Who resolves it.
        resolution: How.
        reason: Why; required.
        at: When.

    Returns:
        The resolved flag.

    Raises:
        RejectedInput: The flag is resolved already, the resolution does not fit its kind, the
            reason is empty or longer than ``REASON_MAX``, or no user is named.
        AccessDenied: None of the reviewer's roles may choose this resolution.
    """
    subject = f"review flag {flag.flag_id}"
    if flag.state is FlagState.RESOLVED:
        raise RejectedInput(
            f"Got a resolution for a flag resolved by {flag.resolved_by}; expected an open flag", subject
        )
    allowed = RULES[flag.kind]
    if resolution not in allowed:
        raise RejectedInput(
            f"Got {str(resolution)!r} for a {flag.kind} flag; expected one of {sorted(str(r) for r in allowed)}",
            subject,
        )
    text = " ".join(str(reason or "").split())
    if not text or len(text) > REASON_MAX:
        raise RejectedInput(f"Got a reason of {len(text)} characters; expected 1 to {REASON_MAX}", subject)
    if not reviewer.user.strip():
        raise RejectedInput("Got no user; expected who resolves the flag", subject)
    if not reviewer.roles & allowed[resolution]:
        raise AccessDenied(reviewer.user, f"resolve {flag.kind} as {resolution}")
    return replace(
        flag,
        state=FlagState.RESOLVED,
        resolution=resolution,
        resolved_by=reviewer.user.strip(),
        resolved_at=at,
        reason=text,
    )


def confirmed_priors(flags: Iterable[ReviewFlag], study_uid: str) -> frozenset[str]:
    """Earlier studies a reviewer confirmed as this patient's (``PriorFinder.search(confirmed=)``).

    Only unverified pairs count; a conflict resolved as the same patient still needs the PACS
    corrected, after which the pair is no longer a conflict.
    """
    return frozenset(
        f.other_study_uid
        for f in flags
        if f.kind is FlagKind.PRIOR_UNVERIFIED and f.study_uid == study_uid and f.resolution is Resolution.SAME_PATIENT
    )


def released_versions(flags: Iterable[ReviewFlag], study_uid: str, family: str) -> frozenset[int]:
    """SR versions an operator released over the cap (``plan_delivery(released=)``)."""
    return frozenset(
        int(f.detail["held_version"])
        for f in flags
        if f.kind is FlagKind.SR_VERSION_CAP
        and f.study_uid == study_uid
        and f.resolution is Resolution.RELEASED
        and f.detail.get("family") == family
    )
