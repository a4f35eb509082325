"""Deterministic output UIDs (DESIGN.md, "Idempotency").

An output UID is ``2.25.<uuid5 as integer>`` (PS3.5 B.2: UUID-derived UIDs) of the study UID, the
model name and version, the sorted input instance UIDs and the output kind. Writing the same
result twice therefore yields the same SOP Instance UID, and a retried C-STORE to the PACS is a
duplicate, never a second report.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

__all__ = ["NAMESPACE", "output_uid", "uid_from_parts"]

NAMESPACE = uuid.UUID("0b6c4b1e-2f8e-5d8a-9a39-7a3c6f0f6a11")
"""Our uuid5 namespace; never change it, or output UIDs stop being stable across releases."""


def uid_from_parts(*parts: str) -> str:
    """Return a ``2.25.`` UID derived from ``parts`` (order matters).

    >>> uid_from_parts("a", "b") == uid_from_parts("a", "b")
    True
    >>> uid_from_parts("a", "b").startswith("2.25.")
    True
    """
    key = "\x1f".join(parts)
    return f"2.25.{uuid.uuid5(NAMESPACE, key).int}"


def output_uid(
    study_uid: str,
    model_name: str,
    model_version: str,
    input_uids: Iterable[str],
    kind: str,
) -> str:
    """Return the deterministic UID of one output object or series.

    Args:
        study_uid: Study Instance UID of the source study.
        model_name: Algorithm name.
        model_version: Algorithm version.
        input_uids: SOP Instance UIDs the result was computed from (order does not matter).
        kind: What the UID names, e.g. ``"sr"``, ``"sr-series"``, ``"pm"``.

    Returns:
        A UID of at most 64 characters.
    """
    return uid_from_parts(study_uid, model_name, model_version, *sorted(input_uids), kind)
