"""The STOW-RS response (PS3.18 10.5.3): what we stored and what failed, with the reason.

Pure: the API hands the outcome of each part in; this module builds the response data set and
picks the HTTP status.

>>> outcome = [StowOutcome("1.2.840.10008.5.1.4.1.1.7", "1.2.3.1"),
...            StowOutcome("1.2.840.10008.5.1.4.1.1.7", "1.2.3.2", OUT_OF_RESOURCES)]
>>> stow_status(outcome)
202
>>> ds = stow_response(outcome, "https://bridge/dicomweb/studies/1.2.3")
>>> len(ds.ReferencedSOPSequence), hex(ds.FailedSOPSequence[0].FailureReason)
(1, '0xa700')
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydicom._uid_dict import UID_dictionary
from pydicom.dataset import Dataset

__all__ = [
    "CANNOT_UNDERSTAND",
    "OUT_OF_RESOURCES",
    "PROCESSING_FAILURE",
    "STUDY_MISMATCH",
    "StowOutcome",
    "UNSUPPORTED_SOP_CLASS",
    "storable",
    "stow_response",
    "stow_status",
]

OUT_OF_RESOURCES = 0xA700
"""Refused: out of resources (our disk floor, or the ledger cannot commit): send it again later."""
STUDY_MISMATCH = 0xA900
"""Error: the instance does not belong to the study in the request's path."""
CANNOT_UNDERSTAND = 0xC000
"""Error: cannot understand (no Part 10 header, unparseable data set, not application/dicom)."""
PROCESSING_FAILURE = 0x0110
"""Processing failure: anything unexpected."""
UNSUPPORTED_SOP_CLASS = 0x0122
"""Referenced SOP Class not supported: not a storage SOP class (a DICOMDIR, a query model);
C-STORE refuses these at association."""

_MEDIA_DIRECTORY = "1.2.840.10008.1.3.10"
"""Media Storage Directory Storage (DICOMDIR): a media file, never a network object."""


def storable(sop_class_uid: str) -> bool:
    """Whether STOW-RS takes instances of this SOP class: any storage class, private and
    unknown ones included, as C-STORE does; not DICOMDIR or a registered non-storage class.

    >>> storable("1.2.840.10008.5.1.4.1.1.7"), storable("1.2.840.10008.1.3.10"), storable("1.2.3.4")
    (True, False, True)
    >>> storable("1.2.840.10008.5.1.4.1.2.1.1")  # Patient Root Query/Retrieve - FIND
    False
    """
    if sop_class_uid == _MEDIA_DIRECTORY:
        return False
    entry = UID_dictionary.get(sop_class_uid)
    if entry is None:
        return True
    name, kind = entry[0], entry[1]
    return kind != "SOP Class" or "Storage" in name


@dataclass(frozen=True, slots=True)
class StowOutcome:
    """What happened to one part of a STOW-RS request."""

    sop_class_uid: str
    sop_instance_uid: str
    failure: int | None = None
    """``None``: stored (or already held); else the Failure Reason (0008,1197)."""
    retrieve_url: str = ""


def stow_status(outcomes: Sequence[StowOutcome]) -> int:
    """200 every part stored; 202 some failed; 409 none stored (PS3.18 10.5.3.1).

    >>> stow_status([])
    409
    """
    failed = sum(1 for o in outcomes if o.failure is not None)
    if outcomes and failed == 0:
        return 200
    return 202 if failed < len(outcomes) else 409


def stow_response(outcomes: Sequence[StowOutcome], retrieve_url: str) -> Dataset:
    """The response data set: Retrieve URL, Referenced SOP Sequence, Failed SOP Sequence."""
    ds = Dataset()
    stored = [o for o in outcomes if o.failure is None]
    failed = [o for o in outcomes if o.failure is not None]
    if stored:
        ds.RetrieveURL = retrieve_url
    ds.ReferencedSOPSequence = []
    for o in stored:
        item = Dataset()
        item.ReferencedSOPClassUID = o.sop_class_uid
        item.ReferencedSOPInstanceUID = o.sop_instance_uid
        if o.retrieve_url:
            item.RetrieveURL = o.retrieve_url
        ds.ReferencedSOPSequence.append(item)
    if failed:
        ds.FailedSOPSequence = []
        for o in failed:
            item = Dataset()
            item.ReferencedSOPClassUID = o.sop_class_uid
            item.ReferencedSOPInstanceUID = o.sop_instance_uid
            item.FailureReason = o.failure
            ds.FailedSOPSequence.append(item)
    if not stored:
        del ds.ReferencedSOPSequence
    return ds
