"""Our result objects as the ledger keeps them: outbox items and SR versions.

Review flags are ``core.review.ReviewFlag`` (one type for the rules and the stored row).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from core.records import Prediction
from core.versions import DeliveryPlan, SRVersion, VersionState

__all__ = ["DeliveryClaim", "DeliveryState", "OutboxEntry", "OutboxItem", "OutputKind", "SrVersion"]


class OutputKind(enum.StrEnum):
    """What a result object is."""

    SR = "sr"
    """A TID 1500 Comprehensive 3D SR."""
    PM = "pm"
    """A Parametric Map (a Grad-CAM heatmap)."""
    KEY_IMAGE = "key_image"
    """A Secondary Capture key image: a positive finding's heatmap and region burned in (issue 12)."""
    KOS = "kos"
    """A Key Object Selection document pointing at one result's key images (issue 12)."""


class DeliveryState(enum.StrEnum):
    """Where an outbox item is."""

    PENDING = "pending"
    """Waiting for (another) C-STORE to the PACS."""
    DELIVERED = "delivered"
    """The PACS answered success."""
    SUPERSEDED = "superseded"
    """A newer SR version of the study replaced it before it was sent: never sent."""


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
        state: Where its delivery stands (``core.versions``).
        incomplete: Whether it was built marked partial (incomplete series flag).
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
    state: VersionState = VersionState.PENDING
    incomplete: bool = False

    def plan_view(self) -> SRVersion:
        """This version as ``core.versions`` plans with it."""
        return SRVersion(self.job_version, self.state, self.sop_instance_uid, self.predecessor_uid, self.incomplete)


@dataclass(frozen=True, slots=True)
class DeliveryClaim:
    """What delivery may do with a job's SR version of one family, as the ledger applied it.

    Attributes:
        plan: The plan (``core.versions.plan_delivery``) over every version of the study and
            family, applied atomically (superseded versions marked).
        own: The job's own version's state afterwards: ``SENDING`` (send it now), ``HELD``,
            ``SUPERSEDED`` (never send it), or ``PENDING`` (wait).
    """

    plan: DeliveryPlan
    own: VersionState
