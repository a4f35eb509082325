"""Quarantine: what happens to instances that failed validation, and what operators may do.

An instance that fails validation is *held*: it stays on disk byte-identical to what was sent,
with its reason codes, and no model sees it. An operator then either

- **releases** it (who and why are required and audited): the codes it was held for become
  *accepted* for that instance, and its study is opened again as a new job version. That job
  validates the instance afresh; if it shows only accepted codes it goes on to routing and the
  models, and the job records the accepted issues. A new problem (a code not accepted) holds it
  again. Nothing is changed in the file.
- **discards** it (a reason is required and audited): no job will ever include it. The file stays
  for retention, marked discarded in the ledger.

Each held instance has a short quarantine ID, ``Q<n>``; operators may also name it by its SOP
Instance UID, or name every held instance of a series or a study by that UID.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from core.errors import RejectedInput
from core.types import ValidationIssue

__all__ = [
    "QuarantineEntry",
    "QuarantineRef",
    "QuarantineState",
    "Verdict",
    "decide",
    "format_id",
    "issues_json",
    "parse_reference",
    "require_reason",
]

_QID = re.compile(r"^[Qq]?([0-9]{1,12})$")
_UID = re.compile(r"^[0-9]+(\.[0-9]+)+$")


class QuarantineState(enum.StrEnum):
    """States of a quarantine entry (one per instance)."""

    HELD = "held"
    """Failed validation; waits for an operator. No job processes it."""
    RELEASED = "released"
    """An operator accepted its issues; its study was opened again to process it."""
    DISCARDED = "discarded"
    """An operator discarded it; no job will include it. The file stays for retention."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """The validator's decision for one job.

    Attributes:
        held: ``{sop_instance_uid: issues}`` of instances to quarantine.
        accepted: ``{sop_instance_uid: issues}`` of released instances whose every issue an
            operator accepted: they go on, and the job records these issues.
    """

    held: dict[str, tuple[ValidationIssue, ...]]
    accepted: dict[str, tuple[ValidationIssue, ...]]


def decide(issues: Mapping[str, Sequence[ValidationIssue]], released: Mapping[str, Iterable[str]]) -> Verdict:
    """Split instances with issues into held and accepted.

    Args:
        issues: Every instance's issues (instances without issues may be absent or empty).
        released: ``{sop_instance_uid: accepted codes}`` of released instances.

    Returns:
        The verdict. An instance is accepted only if every one of its codes was accepted.

    >>> issue = ValidationIssue("slice_gap", "series 1.2: gap", "1.2.3")
    >>> decide({"1.2.3": [issue]}, {"1.2.3": ["slice_gap"]}).accepted["1.2.3"] == (issue,)
    True
    >>> list(decide({"1.2.3": [issue]}, {}).held)
    ['1.2.3']
    """
    held: dict[str, tuple[ValidationIssue, ...]] = {}
    accepted: dict[str, tuple[ValidationIssue, ...]] = {}
    for uid, found in issues.items():
        if not found:
            continue
        codes = {i.code for i in found}
        if uid in released and codes <= set(released[uid]):
            accepted[uid] = tuple(found)
        else:
            held[uid] = tuple(found)
    return Verdict(held, accepted)


@dataclass(frozen=True, slots=True)
class QuarantineEntry:
    """One quarantined instance as an operator sees it.

    Attributes:
        qid: Its number (shown as ``Q<qid>``).
        sop_instance_uid: The instance.
        study_uid: Its study.
        series_uid: Its series.
        job_id: The job that last held it.
        state: Held, released or discarded.
        codes: Its reason codes, sorted.
        reasons: Each issue (code, message naming the attribute, level).
        accepted_codes: Codes an operator accepted on release.
        created_at: When it was first held.
        updated_at: Its last change.
        decided_by: Who released or discarded it.
        decided_at: When.
        decision_reason: Why (required).
        instance: What was received (path, sha256, sender...), if the instance is recorded.
    """

    qid: int
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    job_id: int | None
    state: QuarantineState
    codes: tuple[str, ...]
    reasons: tuple[ValidationIssue, ...]
    accepted_codes: tuple[str, ...]
    created_at: float
    updated_at: float
    decided_by: str = ""
    decided_at: float | None = None
    decision_reason: str = ""
    modality: str = ""
    sop_class_uid: str = ""
    transfer_syntax: str = ""
    path: str = ""
    sha256: str = ""
    size: int = 0
    calling_ae: str = ""
    received_at: float | None = None

    @property
    def id(self) -> str:
        """The short ID operators use (``Q<qid>``)."""
        return format_id(self.qid)


def issues_json(issues: Iterable[ValidationIssue]) -> str:
    """Serialise issues as the ledger stores them: a JSON list of ``{code, message, level}``."""
    return json.dumps([{"code": i.code, "message": i.message, "level": i.level} for i in issues])


def format_id(qid: int) -> str:
    """The short quarantine ID shown to operators.

    >>> format_id(17)
    'Q17'
    """
    return f"Q{qid}"


@dataclass(frozen=True, slots=True)
class QuarantineRef:
    """What an operator named: a quarantine ID, or a SOP Instance / Series / Study UID."""

    qid: int | None = None
    uid: str | None = None


def parse_reference(text: str) -> QuarantineRef:
    """Parse an operator's reference to quarantined data.

    Raises:
        RejectedInput: ``text`` is neither ``Q<n>`` nor a UID.

    >>> parse_reference("Q12")
    QuarantineRef(qid=12, uid=None)
    >>> parse_reference("1.2.840.5").uid
    '1.2.840.5'
    """
    value = text.strip()
    match = _QID.match(value)
    if match:
        return QuarantineRef(qid=int(match.group(1)))
    if _UID.match(value) and len(value) <= 64:
        return QuarantineRef(uid=value)
    raise RejectedInput(
        f"quarantine ID: got {value[:70]!r}; expected Q<number> or a SOP Instance, Series or Study Instance UID",
        value[:70],
    )


def require_reason(reason: str | None, action: str) -> str:
    """Return the stripped reason, which operators must give to release or discard.

    Raises:
        RejectedInput: The reason is missing or blank.
    """
    text = (reason or "").strip()
    if not text:
        raise RejectedInput(f"reason: got nothing; expected why you {action} it (it is audited)")
    return text
