"""Our result objects as the ledger keeps them: outbox items, SR versions, review flags."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from core.records import Prediction

__all__ = ["DeliveryState", "OutboxEntry", "OutboxItem", "OutputKind", "ReviewFlag", "SrVersion"]


class OutputKind(enum.StrEnum):
    """What a result object is."""

    SR = "sr"
    """A TID 1500 Comprehensive 3D SR."""
    PM = "pm"
    """A Parametric Map (a Grad-CAM heatmap)."""


class DeliveryState(enum.StrEnum):
    """Where an outbox item is."""

    PENDING = "pending"
    """Waiting for (another) C-STORE to the PACS."""
    DELIVERED = "delivered"
    """The PACS answered success."""


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """A result object written durably to ``var/outbox``, to be stored to the PACS."""

    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    kind: OutputKind
    family: str
    path: str


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """An outbox item as stored, with its delivery state."""

    item_id: int
    job_id: int
    item: OutboxItem
    state: DeliveryState
    attempts: int
    last_error: str
    created_at: float
    delivered_at: float | None
    priority: int = 0


@dataclass(frozen=True, slots=True)
class SrVersion:
    """One SR we wrote for a study and model family (a late instance makes the next one).

    Attributes:
        sop_instance_uid: The SR's SOP Instance UID.
        sop_class_uid: Its SOP Class UID.
        series_instance_uid: Its series (ours, left out of the PACS's counts).
        study_uid: The study.
        job_id: The job that wrote it.
        job_version: That job's version.
        family: Model family.
        model_name: Algorithm name.
        model_version: Algorithm version.
        predecessor_uid: The SR version it supersedes, or empty.
        prediction: What the model said (interval change of later studies reads it).
        created_at: When it was written.
    """

    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    study_uid: str
    job_id: int
    job_version: int
    family: str
    model_name: str
    model_version: str
    predecessor_uid: str
    prediction: Prediction
    created_at: float = 0.0


@dataclass(frozen=True, slots=True)
class ReviewFlag:
    """Something a person must look at, e.g. a prior with our Patient ID but another name."""

    flag_id: int
    at: float
    kind: str
    study_uid: str
    other_study_uid: str
    job_id: int | None
    detail: Mapping[str, Any] = field(default_factory=dict)
    resolved: bool = False
