"""The RIS's order status as completion evidence (HL7 v2 ORC-5 / OBR-25).

When the context bridge receives order updates from the RIS (ORM^O01 / OMI^O23, IHE RAD TF-2
RAD-13 Procedure Update), the order being reported complete says the technologist finished
the examination. It is weaker evidence than MPPS or an IAN: the images may still be on their
way, so the assembler completes the study only once nothing has arrived for
``assembly.order_settle_s`` after both the report and the latest instance.

The mapping (decided here, since HL7 does not define "examination complete" as such):

=====================================  ===========================  ======================
Field and value                        HL7 v2.5 meaning             ``OrderProgress``
=====================================  ===========================  ======================
ORC-5 ``CM``                           order is completed           ``COMPLETED``
ORC-5 ``CA`` / ``DC``                  canceled / discontinued      ``DISCONTINUED``
ORC-5 ``IP`` / ``A`` / ``HD``          in process / some results    ``IN_PROGRESS``
                                       / on hold
ORC-5 ``SC``                           in process, scheduled        ``SCHEDULED``
ORC-5 ``ER`` / ``RP``                  error / replaced             ``UNKNOWN``
OBR-25 ``P`` / ``R`` / ``F`` / ``C``   a report exists: the exam    ``COMPLETED``
                                       was performed
OBR-25 ``X``                           order canceled               ``DISCONTINUED``
OBR-25 ``I`` / ``A``                   procedure incomplete / some  ``IN_PROGRESS``
OBR-25 ``O`` / ``S``                   received / scheduled         ``SCHEDULED``
OBR-25 ``Y`` / ``Z``                   no order / no patient        ``UNKNOWN``
=====================================  ===========================  ======================

ORC-5 is HL7 Table 0038 (Order status), OBR-25 Table 0123 (Result status). Values outside the
tables are ``UNKNOWN`` and never complete a study. ``DISCONTINUED`` completes it with what
arrived, marked partial.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["OrderProgress", "OrderStatus", "from_service_request", "latest_order_status"]


class OrderProgress(enum.StrEnum):
    """Where the RIS says the order stands (see the module's mapping table)."""

    SCHEDULED = "scheduled"
    """Ordered or scheduled; not started."""
    IN_PROGRESS = "in_progress"
    """Being performed (or on hold): more images may come."""
    COMPLETED = "completed"
    """The examination was performed (ORC-5 CM, or a report exists)."""
    DISCONTINUED = "discontinued"
    """Canceled or discontinued: what arrived is all there will be."""
    UNKNOWN = "unknown"
    """A status that says nothing about the examination (error, replaced, undefined)."""


_ORC5 = {
    "CM": OrderProgress.COMPLETED,
    "CA": OrderProgress.DISCONTINUED,
    "DC": OrderProgress.DISCONTINUED,
    "IP": OrderProgress.IN_PROGRESS,
    "A": OrderProgress.IN_PROGRESS,
    "HD": OrderProgress.IN_PROGRESS,
    "SC": OrderProgress.SCHEDULED,
}
"""HL7 Table 0038 (ORC-5 Order Status)."""
_OBR25 = {
    "P": OrderProgress.COMPLETED,
    "R": OrderProgress.COMPLETED,
    "F": OrderProgress.COMPLETED,
    "C": OrderProgress.COMPLETED,
    "X": OrderProgress.DISCONTINUED,
    "I": OrderProgress.IN_PROGRESS,
    "A": OrderProgress.IN_PROGRESS,
    "O": OrderProgress.SCHEDULED,
    "S": OrderProgress.SCHEDULED,
}
"""HL7 Table 0123 (OBR-25 Result Status)."""


@dataclass(frozen=True, slots=True)
class OrderStatus:
    """One order status report from the RIS, for one study.

    Attributes:
        study_uid: Study Instance UID of the order (OMI IPC-3, or ZDS), if known.
        accession_key: Keyed hash of the accession number (the context store's join key).
        progress: What the status means for the examination.
        at: When the status was received.
        source: The HL7 field and value, e.g. ``ORC-5=CM`` (for the audit trail).
    """

    study_uid: str
    accession_key: str
    progress: OrderProgress
    at: float
    source: str = ""

    @classmethod
    def from_orc5(cls, study_uid: str, accession_key: str, value: str, at: float) -> OrderStatus:
        """From ORC-5 Order Status (HL7 Table 0038).

        >>> OrderStatus.from_orc5("1.2", "k", "cm", 0.0).progress
        <OrderProgress.COMPLETED: 'completed'>
        """
        code = str(value or "").strip().upper()
        return cls(study_uid, accession_key, _ORC5.get(code, OrderProgress.UNKNOWN), at, f"ORC-5={code}")

    @classmethod
    def from_obr25(cls, study_uid: str, accession_key: str, value: str, at: float) -> OrderStatus:
        """From OBR-25 Result Status (HL7 Table 0123).

        >>> OrderStatus.from_obr25("1.2", "k", "X", 0.0).progress
        <OrderProgress.DISCONTINUED: 'discontinued'>
        """
        code = str(value or "").strip().upper()
        return cls(study_uid, accession_key, _OBR25.get(code, OrderProgress.UNKNOWN), at, f"OBR-25={code}")


_SERVICE_REQUEST = {
    "completed": OrderProgress.COMPLETED,
    "revoked": OrderProgress.DISCONTINUED,
    "active": OrderProgress.IN_PROGRESS,
    "on-hold": OrderProgress.IN_PROGRESS,
    "draft": OrderProgress.SCHEDULED,
}
"""FHIR R4 ServiceRequest.status (what the context bridge stores from ORC-5, HL7 v2-to-FHIR IG
concept map OrderStatus) back to ``OrderProgress``: ``CM`` -> completed, ``CA``/``DC`` ->
revoked, ``IP``/``A``/``SC`` -> active, ``HD`` -> on-hold."""


def from_service_request(study_uid: str, accession_key: str, status: str, at: float) -> OrderStatus:
    """The order status of a stored FHIR ServiceRequest status (``_SERVICE_REQUEST``).

    >>> from_service_request("1.2", "k", "completed", 5.0).progress
    <OrderProgress.COMPLETED: 'completed'>
    >>> from_service_request("1.2", "k", "entered-in-error", 5.0).progress
    <OrderProgress.UNKNOWN: 'unknown'>
    """
    value = str(status or "").strip().lower()
    return OrderStatus(
        study_uid,
        accession_key,
        _SERVICE_REQUEST.get(value, OrderProgress.UNKNOWN),
        at,
        f"ServiceRequest.status={value}",
    )


def latest_order_status(statuses: Iterable[OrderStatus], study_uid: str, accession_key: str = "") -> OrderStatus | None:
    """The latest status of the study's order: matched on Study Instance UID, else accession key.

    ``UNKNOWN`` reports are skipped: they say nothing about the examination.

    >>> a = OrderStatus("1.2", "", OrderProgress.IN_PROGRESS, 1.0)
    >>> b = OrderStatus("", "k", OrderProgress.COMPLETED, 2.0)
    >>> latest_order_status([a, b], "1.2", "k").progress
    <OrderProgress.COMPLETED: 'completed'>
    """
    mine = [
        s
        for s in statuses
        if s.progress is not OrderProgress.UNKNOWN
        and ((study_uid and s.study_uid == study_uid) or (accession_key and s.accession_key == accession_key))
    ]
    return max(mine, key=lambda s: s.at) if mine else None
