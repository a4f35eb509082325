"""A radiologist's review of an AI result, back to the PACS as a new, VERIFIED SR (issue 12).

The reviewed SR is the AI's TID 1500 document with the reader's decisions added, so every
viewer that showed the AI result shows the review the same way:

- Verification Flag VERIFIED, the reader as Verifying Observer (PS3.3 C.17.2: name,
  organisation, date and time), and the reader as a second, person observer (TID 1002) beside
  the AI device observer.
- The AI SR in the Predecessor Documents Sequence (PS3.3 C.17.2.3): the review supersedes it
  and names it; the AI SR itself stays in the PACS unchanged.
- Per reviewed finding, in the finding's first TID 1501 Measurement Group: the reader's
  assessment (agree / disagree / override), the reader's own determination of the finding
  (Present 52101004 / Absent 2667000, SCT, the codes the AI's presence uses) and the comment
  (121106, DCM, "Comment").
- The final diagnosis in words in the root's Qualitative Evaluations container (TID 1500 row 12).

The assessment concepts have no PS3.16 code we could verify, so they are in our local scheme
(``99PACSAI``, declared in the Coding Scheme Identification Sequence). UIDs are derived from the
AI SR's, the reader and the review's version: building the same review twice gives the same
object, so delivery stays idempotent like the AI SR's.
"""

from __future__ import annotations

import copy
import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from core.findings import LOCAL_SCHEME
from core.review_submissions import verified_series_uid
from core.sr import stamp_times
from core.types import CodedTerm
from core.uids import uid_from_parts

__all__ = ["Assessment", "FindingReview", "Reader", "ReviewError", "verified_sr"]


class ReviewError(ValueError):
    """The review does not fit the AI SR it concerns (a finding it does not report)."""


class Assessment(enum.StrEnum):
    """What the reader says about one AI finding."""

    AGREE = "agree"
    DISAGREE = "disagree"
    OVERRIDE = "override"
    """The reader corrects the finding (its determination differs and is the reader's own)."""


_REL = hd.sr.RelationshipTypeValues.CONTAINS
_ASSESSMENT = hd.sr.CodedConcept("RV001", LOCAL_SCHEME, "Reader assessment of AI finding")
_DETERMINATION = hd.sr.CodedConcept("RV002", LOCAL_SCHEME, "Reader determination")
_FINAL_DIAGNOSIS = hd.sr.CodedConcept("RV003", LOCAL_SCHEME, "Reader final diagnosis")
_ASSESSMENT_VALUES = {
    Assessment.AGREE: hd.sr.CodedConcept("RV010", LOCAL_SCHEME, "Reader agrees with AI"),
    Assessment.DISAGREE: hd.sr.CodedConcept("RV011", LOCAL_SCHEME, "Reader disagrees with AI"),
    Assessment.OVERRIDE: hd.sr.CodedConcept("RV012", LOCAL_SCHEME, "Reader overrides AI"),
}
_PRESENT = hd.sr.CodedConcept("52101004", "SCT", "Present")
_ABSENT = hd.sr.CodedConcept("2667000", "SCT", "Absent")
_COMMENT = hd.sr.CodedConcept("121106", "DCM", "Comment")
_QUALITATIVE = ("C0034375", "UMLS")
_MEASUREMENTS = ("126010", "DCM")
_GROUP = ("125007", "DCM")
_FINDING = ("121071", "DCM")
_OBSERVER_CONTEXT = {"121005", "121012", "121013", "121014", "121015", "121016", "121017", "121008", "121009"}


@dataclass(frozen=True, slots=True)
class Reader:
    """The radiologist who reviewed.

    Attributes:
        user_id: The reader's login (in the UIDs and the audit trail, not in the object).
        name: DICOM person name, e.g. ``Reader^Rita``.
        organization: The Verifying Organization.
    """

    user_id: str
    name: str
    organization: str


@dataclass(frozen=True, slots=True)
class FindingReview:
    """The reader's decision on one AI finding.

    Attributes:
        term: The finding's code, as the AI SR reports it.
        assessment: Agree, disagree or override.
        present: The reader's own determination: is the finding there?
        comment: Free text, at most 1024 characters.
    """

    term: CodedTerm
    assessment: Assessment
    present: bool
    comment: str = ""


def _concept(item: Dataset) -> tuple[str, str]:
    code = item.ConceptNameCodeSequence[0]
    return str(code.CodeValue), str(code.CodingSchemeDesignator)


def _groups(root: Dataset) -> list[Dataset]:
    """The TID 1501 Measurement Groups under the Imaging Measurements container."""
    out: list[Dataset] = []
    for item in root.ContentSequence:
        if item.ValueType == "CONTAINER" and _concept(item) == _MEASUREMENTS:
            out += [g for g in item.get("ContentSequence", []) if g.ValueType == "CONTAINER" and _concept(g) == _GROUP]
    return out


def _finding_of(group: Dataset) -> tuple[str, str] | None:
    for item in group.get("ContentSequence", []):
        if item.ValueType == "CODE" and _concept(item) == _FINDING:
            code = item.ConceptCodeSequence[0]
            return str(code.CodeValue), str(code.CodingSchemeDesignator)
    return None


def _annotate(groups: list[Dataset], review: FindingReview) -> None:
    key = (review.term.value, review.term.scheme)
    group = next((g for g in groups if _finding_of(g) == key), None)
    if group is None:
        raise ReviewError(f"finding {review.term.scheme}:{review.term.value}: not reported by this AI SR")
    items = [
        hd.sr.CodeContentItem(name=_ASSESSMENT, value=_ASSESSMENT_VALUES[review.assessment], relationship_type=_REL),
        hd.sr.CodeContentItem(
            name=_DETERMINATION, value=_PRESENT if review.present else _ABSENT, relationship_type=_REL
        ),
    ]
    if review.comment:
        items.append(hd.sr.TextContentItem(name=_COMMENT, value=review.comment[:1024], relationship_type=_REL))
    group.ContentSequence.extend(items)


def _add_person_observer(root: Dataset, reader: Reader) -> None:
    """TID 1002 after the existing observer context (the AI device, TID 1004)."""
    last = max((i for i, item in enumerate(root.ContentSequence) if _concept(item)[0] in _OBSERVER_CONTEXT), default=-1)
    person = hd.sr.ObserverContext(
        observer_type=hd.sr.CodedConcept("121006", "DCM", "Person"),
        observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(name=reader.name),
    )
    for offset, item in enumerate(person):
        root.ContentSequence.insert(last + 1 + offset, item)


def _add_final_diagnosis(root: Dataset, text: str) -> None:
    item = hd.sr.TextContentItem(name=_FINAL_DIAGNOSIS, value=text[:1024], relationship_type=_REL)
    for container in root.ContentSequence:
        if container.ValueType == "CONTAINER" and _concept(container) == _QUALITATIVE:
            container.ContentSequence.append(item)
            return
    qualitative = hd.sr.ContainerContentItem(
        name=hd.sr.CodedConcept(*_QUALITATIVE, "Qualitative Evaluations"), relationship_type=_REL
    )
    qualitative.ContentSequence = hd.sr.ContentSequence([item])
    root.ContentSequence.append(qualitative)


def _predecessor(ai_sr: Dataset) -> Dataset:
    sop = Dataset()
    sop.ReferencedSOPClassUID = ai_sr.SOPClassUID
    sop.ReferencedSOPInstanceUID = ai_sr.SOPInstanceUID
    series = Dataset()
    series.SeriesInstanceUID = ai_sr.SeriesInstanceUID
    series.ReferencedSOPSequence = DicomSequence([sop])
    study = Dataset()
    study.StudyInstanceUID = ai_sr.StudyInstanceUID
    study.ReferencedSeriesSequence = DicomSequence([series])
    return study


def _verifier(reader: Reader, when: datetime) -> Dataset:
    item = Dataset()
    item.VerifyingObserverName = reader.name
    item.VerifyingObserverIdentificationCodeSequence = DicomSequence()
    item.VerifyingOrganization = reader.organization[:64]
    item.VerificationDateTime = when.strftime("%Y%m%d%H%M%S.%f")
    return item


def _ensure_local_scheme(ds: Dataset) -> None:
    schemes = ds.get("CodingSchemeIdentificationSequence", [])
    if any(s.CodingSchemeDesignator == LOCAL_SCHEME for s in schemes):
        return
    item = Dataset()
    item.CodingSchemeDesignator = LOCAL_SCHEME
    item.CodingSchemeName = "PACS-AI Bridge local finding codes"
    item.CodingSchemeResponsibleOrganization = "PACS-AI Bridge"
    ds.CodingSchemeIdentificationSequence = DicomSequence([*schemes, item])


def verified_sr(
    ai_sr: Dataset,
    reader: Reader,
    reviews: Sequence[FindingReview],
    final_diagnosis: str,
    when: datetime,
    review_version: int = 1,
) -> Dataset:
    """The reviewed SR: a copy of ``ai_sr`` with the reader's decisions, VERIFIED by the reader.

    Args:
        ai_sr: The AI's SR as the PACS holds it (not changed).
        reader: Who reviewed.
        reviews: One decision per reviewed finding (findings not listed are left as the AI said).
        final_diagnosis: The reader's final diagnosis, in words.
        when: When the review was signed (content and verification date/time).
        review_version: The reader's n-th review of this AI SR (a re-review is a new object).

    Raises:
        ReviewError: A review names a finding the AI SR does not report, or none is given.
    """
    if not reviews:
        raise ReviewError("reviews: empty; expected a decision on at least one finding")
    ds = copy.deepcopy(ai_sr)
    parts = ("verified", str(ai_sr.SOPInstanceUID), reader.user_id, str(review_version))
    ds.SOPInstanceUID = uid_from_parts(*parts)
    ds.SeriesInstanceUID = verified_series_uid(str(ai_sr.SeriesInstanceUID))
    ds.SeriesDescription = f"AI result reviewed: {str(ai_sr.get('SeriesDescription', ''))}"[:64]
    if getattr(ds, "file_meta", None) is not None and "MediaStorageSOPInstanceUID" in ds.file_meta:
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.VerificationFlag = "VERIFIED"
    ds.VerifyingObserverSequence = DicomSequence([_verifier(reader, when)])
    ds.PredecessorDocumentsSequence = DicomSequence([_predecessor(ai_sr)])
    _ensure_local_scheme(ds)
    groups = _groups(ds)
    for review in reviews:
        _annotate(groups, review)
    _add_person_observer(ds, reader)
    if final_diagnosis:
        _add_final_diagnosis(ds, final_diagnosis)
    stamp_times(ds, when)
    return ds
