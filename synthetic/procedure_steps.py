"""What a modality and a PACS say about a synthetic study: MPPS and IAN attribute lists.

A modality reports its work as a Modality Performed Procedure Step (PS3.4 F, IHE RAD-6 /
RAD-7): an N-CREATE ``IN PROGRESS`` when it starts, an N-SET ``COMPLETED`` (or
``DISCONTINUED``) listing every instance it made when it ends. A PACS may announce what it
holds with an Instance Availability Notification (PS3.4 R, IHE RAD-49). These builders make
those attribute lists for datasets of ``synthetic_dicom`` / ``synthetic_studies``.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydicom.dataset import Dataset

from synthetic.synthetic_dicom import synthetic_uid

__all__ = ["ian_notice", "mpps_n_create", "mpps_n_set", "mpps_uid", "split_series"]


def mpps_uid(study: Sequence[Dataset]) -> str:
    """A deterministic MPPS SOP Instance UID for a study."""
    return synthetic_uid("mpps", str(study[0].StudyInstanceUID))


def _ref(ds: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = ds.SOPClassUID
    item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    return item


def _by_series(datasets: Sequence[Dataset]) -> dict[str, list[Dataset]]:
    out: dict[str, list[Dataset]] = {}
    for ds in datasets:
        out.setdefault(str(ds.SeriesInstanceUID), []).append(ds)
    return out


def mpps_n_create(study: Sequence[Dataset], station_ae: str = "MODALITY") -> Dataset:
    """The N-CREATE Attribute List of a step starting: ``IN PROGRESS`` (PS3.4 Table F.7.2-1)."""
    first = study[0]
    ds = Dataset()
    scheduled = Dataset()
    scheduled.StudyInstanceUID = first.StudyInstanceUID
    scheduled.AccessionNumber = first.get("AccessionNumber", "")
    scheduled.RequestedProcedureID = "RP1"
    scheduled.ScheduledProcedureStepID = "SPS1"
    ds.ScheduledStepAttributesSequence = [scheduled]
    ds.PatientName = first.get("PatientName", "")
    ds.PatientID = first.get("PatientID", "")
    ds.PatientBirthDate = first.get("PatientBirthDate", "")
    ds.PatientSex = first.get("PatientSex", "")
    ds.PerformedProcedureStepID = "PPS1"
    ds.PerformedStationAETitle = station_ae
    ds.PerformedProcedureStepStartDate = first.get("StudyDate", "")
    ds.PerformedProcedureStepStartTime = first.get("StudyTime", "")
    ds.PerformedProcedureStepStatus = "IN PROGRESS"
    ds.Modality = first.Modality
    ds.StudyID = first.get("StudyID", "")
    ds.PerformedSeriesSequence = []
    return ds


def mpps_n_set(study: Sequence[Dataset], status: str = "COMPLETED", reason: str = "") -> Dataset:
    """The N-SET Modification List of a step ending, listing every instance of ``study``.

    Args:
        study: The instances the modality made (listed in the Performed Series Sequence).
        status: ``COMPLETED`` or ``DISCONTINUED``.
        reason: For ``DISCONTINUED``: a Discontinuation Reason code meaning (CID 9300).
    """
    ds = Dataset()
    ds.PerformedProcedureStepStatus = status
    ds.PerformedProcedureStepEndDate = study[0].get("StudyDate", "")
    ds.PerformedProcedureStepEndTime = study[0].get("StudyTime", "")
    series = []
    for series_uid, members in _by_series(study).items():
        item = Dataset()
        item.SeriesInstanceUID = series_uid
        item.SeriesDescription = members[0].get("SeriesDescription", "")
        item.RetrieveAETitle = ""
        item.ReferencedImageSequence = [_ref(m) for m in members]
        series.append(item)
    ds.PerformedSeriesSequence = series
    if reason:
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "110514", "DCM", reason
        ds.PerformedProcedureStepDiscontinuationReasonCodeSequence = [code]
    return ds


def ian_notice(study: Sequence[Dataset], availability: str = "ONLINE", retrieve_ae: str = "PACS") -> Dataset:
    """The N-CREATE Attribute List of an Instance Availability Notification (PS3.3 C.4.23)."""
    ds = Dataset()
    ds.StudyInstanceUID = study[0].StudyInstanceUID
    ds.ReferencedPerformedProcedureStepSequence = []
    series = []
    for series_uid, members in _by_series(study).items():
        item = Dataset()
        item.SeriesInstanceUID = series_uid
        refs = []
        for m in members:
            ref = _ref(m)
            ref.InstanceAvailability = availability
            ref.RetrieveAETitle = retrieve_ae
            refs.append(ref)
        item.ReferencedSOPSequence = refs
        series.append(item)
    ds.ReferencedSeriesSequence = series
    return ds


def split_series(study: Sequence[Dataset], parts: int) -> list[list[Dataset]]:
    """Split one series into ``parts`` contiguous series of one study (new UIDs and numbers), as
    a scanner sends several reconstructions of one examination."""
    size = -(-len(study) // parts)
    chunks = [list(study[i : i + size]) for i in range(0, len(study), size)]
    for n, chunk in enumerate(chunks, start=1):
        series_uid = synthetic_uid(str(chunk[0].StudyInstanceUID), "split-series", n)
        for ds in chunk:
            ds.SeriesInstanceUID = series_uid
            ds.SeriesNumber = 10 + n
    return chunks
