"""Build the TID 1500 Comprehensive 3D SR for one model's result on one study (in memory).

The tree follows ``shared/reference/standards.md`` 1.3 / 1.4:

- Observer context: the AI is a device (TID 1004), one stable Device Observer UID per model
  name and version.
- One TID 1501 Measurement Group per finding: Tracking Identifier and UID (stable across SR
  versions of the same study and model, so that viewers and later versions relate findings),
  Finding = the finding's code, TID 4019 algorithm name / version / manufacturer / threshold,
  Presence of property = Present or Absent, Probability (122157, DCM) as a NUM in UCUM "1",
  and the source images it was computed from.
- For each positive finding the model localised (``Finding.region``), a second
  group with the same finding, presence and probability and where it is: TID 1410 (planar ROI)
  with a closed POLYLINE SCOORD on the exact source instance and frame, or TID 1411 (volumetric
  ROI) with an ELLIPSOID SCOORD3D in the frame of reference, selected from the instance and frame
  at its peak (AIR 6.5.3.4: locations in a Comprehensive 3D SR).
- For each image-quality flag (``Prediction.quality_flags``), a TID 1501 group whose
  finding is the flag (e.g. patient motion), present, computed from the flagged series.
- Every source instance in the Current Requested Procedure Evidence Sequence.
- Patient and study attributes are copied from the source by highdicom; ``copy_check`` lets the
  caller prove they are identical.
- Completion Flag COMPLETE, Verification Flag UNVERIFIED (no human signed it).
- A later version (late instances) names its predecessor in the Predecessor Documents Sequence
  (PS3.3 C.17.2.3) and keeps the findings' tracking UIDs.

Priors (issue #5), when a ``Comparison`` is given:

- Root "Qualitative Evaluations" container (TID 1500 row 12, (C0034375, UMLS)):
  (122140, DCM, "Comparison with Prior Study Done") = Yes / No, and
  (121066, DCM, "Prior Procedure Descriptions") naming the prior study (UID, date, what it is,
  which AI result) or saying why none was compared (none found, PACS unavailable, off).
- Per finding, in its TID 1501 group: (111424, DCM, "Comparison to previous studies") coded as
  New finding (129721008, SCT), Problem resolved (413322009, SCT), Increased (35105006, SCT),
  Decreased (1250004, SCT) or No change (260388006, SCT), and (111021, DCM,
  "Description of Change") with the probabilities (and sizes) before and after.
- The prior instances compared with (images, prior SR) in the Pertinent Other Evidence Sequence.
- With HL7 order context (issue #6): the order the SR fulfils, in the SR Document General
  Module's Referenced Request Sequence (0040,A370) (PS3.3 C.17.2): Study Instance UID,
  Accession Number, Requested Procedure Description and Code (OBR-4), and the reason for the
  study (OBR-31) as Reason for the Requested Procedure (0040,1002) and its Code Sequence
  (0040,100A), where IHE SWF puts OBR-31. TID 1500 has no row for an indication; the request
  is a property of the document, not a measurement.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from core.findings import LOCAL_SCHEME, term_for
from core.interval import Comparison, FindingChange, IntervalChange
from core.records import Finding, FrameRef, PlanarRegion, Prediction, VolumetricRegion
from core.types import CodedTerm
from core.uids import output_uid, uid_from_parts

__all__ = [
    "CHANGE_CODES",
    "COPIED_ATTRIBUTES",
    "ReferencedRequest",
    "SRBuilder",
    "SRIdentity",
    "describes_our_sr",
    "differing_attributes",
    "referenced_request_item",
    "stamp_times",
]

COPIED_ATTRIBUTES = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)
"""Patient and study attributes that results must carry exactly as the source has them
(IHE RAD TF-2x Appendix A.2, evidence documents)."""

_PROCEDURE = {
    "CR": codes.LN.XRUnspecifiedBodyRegion,
    "DX": codes.LN.XRUnspecifiedBodyRegion,
    "CT": codes.LN.CTUnspecifiedBodyRegion,
    "MR": codes.LN.MRIUnspecifiedBodyRegion,
    "PT": codes.LN.PETUnspecifiedBodyRegion,
    "NM": codes.LN.NMUnspecifiedBodyRegion,
}
_NO_UNITS = hd.sr.CodedConcept("1", "UCUM", "no units")
_QUALITATIVE = hd.sr.CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
_COMPARISON_DONE = hd.sr.CodedConcept("122140", "DCM", "Comparison with Prior Study Done")
_PRIOR_DESCRIPTION = hd.sr.CodedConcept("121066", "DCM", "Prior Procedure Descriptions")
_COMPARED_TO_PREVIOUS = hd.sr.CodedConcept("111424", "DCM", "Comparison to previous studies")
_DESCRIPTION_OF_CHANGE = hd.sr.CodedConcept("111021", "DCM", "Description of Change")
_YES = hd.sr.CodedConcept("373066001", "SCT", "Yes")
_NO = hd.sr.CodedConcept("373067005", "SCT", "No")
CHANGE_CODES: dict[IntervalChange, hd.sr.CodedConcept] = {
    IntervalChange.NEW: hd.sr.CodedConcept("129721008", "SCT", "New finding"),
    IntervalChange.RESOLVED: hd.sr.CodedConcept("413322009", "SCT", "Problem resolved"),
    IntervalChange.INCREASED: hd.sr.CodedConcept("35105006", "SCT", "Increased"),
    IntervalChange.DECREASED: hd.sr.CodedConcept("1250004", "SCT", "Decreased"),
    IntervalChange.UNCHANGED: hd.sr.CodedConcept("260388006", "SCT", "No change"),
}
"""Coded interval change per finding (the value of "Comparison to previous studies")."""


@dataclass(frozen=True, slots=True)
class SRIdentity:
    """Who writes the SR (General Equipment) and where it goes in the study."""

    manufacturer: str
    series_number: int
    institution_name: str | None = None
    group_source_images_max: int = 16
    """Per finding group, list the source images only up to this many (TID 1501 row 12 is
    optional); a 400-slice CT with 7 findings would otherwise repeat 2,800 references and
    take most of the SR writing time. The evidence sequence always lists every source."""


@dataclass(frozen=True, slots=True)
class ReferencedRequest:
    """The order an SR fulfils, from the HL7 context (no identifiers beyond the accession)."""

    reason: str = ""
    reason_codes: tuple[CodedTerm, ...] = ()
    procedure: CodedTerm | None = None
    procedure_description: str = ""


def _code_item(term: CodedTerm) -> Dataset:
    return hd.sr.CodedConcept(term.value, term.scheme, term.meaning[:64])


def referenced_request_item(source: Dataset, request: ReferencedRequest) -> Dataset:
    """One Referenced Request Sequence item (PS3.3 Table C.17-2) for ``source``'s study.

    Type 2 attributes we do not know (referenced study, placer / filler order numbers,
    requested procedure ID) are present and empty; LO values are cut to 64 characters.
    """
    item = Dataset()
    item.ReferencedStudySequence = []  # Type 2: no separate study reference
    item.StudyInstanceUID = source.StudyInstanceUID
    item.AccessionNumber = source.get("AccessionNumber", "")
    item.PlacerOrderNumberImagingServiceRequest = ""
    item.FillerOrderNumberImagingServiceRequest = ""
    item.RequestedProcedureID = ""
    item.RequestedProcedureDescription = request.procedure_description[:64]
    item.RequestedProcedureCodeSequence = [_code_item(request.procedure)] if request.procedure else []
    if request.reason:
        item.ReasonForTheRequestedProcedure = request.reason[:64]
    if request.reason_codes:
        item.ReasonForRequestedProcedureCodeSequence = [_code_item(c) for c in request.reason_codes]
    return item


def differing_attributes(source: Dataset, result: Dataset) -> list[str]:
    """Return the ``COPIED_ATTRIBUTES`` whose values differ between source and result."""
    return [
        kw
        for kw in COPIED_ATTRIBUTES
        if (kw in source) != (kw in result) or (kw in source and source[kw].value != result[kw].value)
    ]


class SRBuilder:
    """Builds the SR for one ``Prediction``."""

    def __init__(self, identity: SRIdentity) -> None:
        """Args:
        identity: Equipment identity and series placement.
        """
        self._identity = identity

    @staticmethod
    def sr_uids(study_uid: str, prediction: Prediction) -> tuple[str, str]:
        """Return the deterministic ``(SeriesInstanceUID, SOPInstanceUID)`` of the SR."""
        series = output_uid(study_uid, prediction.model_name, prediction.model_version, (), "sr-s")
        sop = output_uid(
            study_uid,
            prediction.model_name,
            prediction.model_version,
            prediction.source_uids,
            "sr",
        )
        return series, sop

    def build(
        self,
        sources: Sequence[Dataset],
        prediction: Prediction,
        previous_versions: Sequence[Dataset] = (),
        comparison: Comparison | None = None,
        request: ReferencedRequest | None = None,
        created_at: datetime | None = None,
    ) -> hd.sr.Comprehensive3DSR:
        """Build the SR.

        Args:
            sources: Headers (no pixel data needed) of every instance the prediction used,
                in a stable order; all from one study.
            prediction: The model's result.
            previous_versions: Earlier SRs this one supersedes (Predecessor Documents); only
                their SOP Class, SOP Instance, Series and Study Instance UIDs are read.
            comparison: What to state about prior studies (``None``: nothing, as before #5).
            request: The order the SR fulfils, with its reason (from HL7), if known.
            created_at: Content and creation date/time (the job's time, so the same input
                gives a byte-identical SR); ``None`` keeps highdicom's wall clock.

        Returns:
            The SR dataset.

        Raises:
            ValueError: ``sources`` is empty or spans studies.
        """
        if not sources:
            raise ValueError("an SR needs at least one source instance")
        study_uid = str(sources[0].StudyInstanceUID)
        if any(str(s.StudyInstanceUID) != study_uid for s in sources):
            raise ValueError("sources span more than one study")
        by_uid = {str(s.SOPInstanceUID): s for s in sources}
        used = [by_uid[u] for u in prediction.source_uids if u in by_uid] or list(sources)
        changes = {c.key: c for c in (comparison.changes if comparison else ())}
        groups: list[hd.sr.Template] = [
            self._group(study_uid, prediction, f, used, changes.get(f.key)) for f in prediction.findings
        ]
        groups += self._region_groups(study_uid, prediction)
        groups += self._quality_groups(study_uid, prediction, list(sources))
        report = hd.sr.MeasurementReport(
            observation_context=self._observer(prediction),
            procedure_reported=_PROCEDURE.get(str(sources[0].get("Modality", "")), codes.LN.XRUnspecifiedBodyRegion),
            imaging_measurements=groups,
            title=codes.DCM.ImagingMeasurementReport,
        )
        if comparison is not None:
            report[0].ContentSequence.append(_comparison_container(comparison))
        series_uid, sop_uid = self.sr_uids(study_uid, prediction)
        other = [r.as_dataset() for r in comparison.evidence] if comparison else []
        sr = hd.sr.Comprehensive3DSR(
            evidence=list(sources) + other,
            content=report,
            series_instance_uid=series_uid,
            series_number=self._identity.series_number,
            sop_instance_uid=sop_uid,
            instance_number=1,
            manufacturer=self._identity.manufacturer,
            institution_name=self._identity.institution_name,
            series_description=self._series_description(prediction),
            is_complete=True,
            is_final=False,
            previous_versions=list(previous_versions) or None,
            requested_procedures=([referenced_request_item(sources[0], request)] if request is not None else None),
        )
        schemes = {f.term.scheme for f in prediction.findings} | {
            term_for(q.key).scheme for q in prediction.quality_flags
        }
        if LOCAL_SCHEME in schemes:
            sr.CodingSchemeIdentificationSequence = [_local_scheme_item()]
        if created_at is not None:
            stamp_times(sr, created_at)
        return sr

    def _observer(self, prediction: Prediction) -> hd.sr.ObservationContext:
        device_uid = uid_from_parts("device", prediction.model_name, prediction.model_version)
        return hd.sr.ObservationContext(
            observer_device_context=hd.sr.ObserverContext(
                observer_type=codes.DCM.Device,
                observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                    uid=device_uid,
                    name=prediction.model_name[:64],
                    manufacturer_name=self._identity.manufacturer,
                    model_name=prediction.model_name[:64],
                ),
            )
        )

    def _group(
        self,
        study_uid: str,
        prediction: Prediction,
        finding: Finding,
        used: Sequence[Dataset],
        change: FindingChange | None = None,
    ) -> hd.sr.MeasurementsAndQualitativeEvaluations:
        algo = self._algorithm(prediction, finding.threshold)
        evaluations = [_presence(finding)]
        if change is not None and change.change in CHANGE_CODES:
            evaluations.append(hd.sr.QualitativeEvaluation(_COMPARED_TO_PREVIOUS, CHANGE_CODES[change.change]))
        group = hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=uid_from_parts("tracking", study_uid, prediction.family, finding.key),
                identifier=f"{prediction.family}:{finding.key}",
            ),
            finding_type=_coded(finding),
            algorithm_id=algo,
            qualitative_evaluations=evaluations,
            measurements=[_probability(finding, algo)],
            source_images=self._group_sources(used),
        )
        if change is not None:
            group[0].ContentSequence.append(_text(_DESCRIPTION_OF_CHANGE, change.describe()))
        return group

    def _group_sources(self, images: Sequence[Dataset]) -> list[hd.sr.SourceImageForMeasurementGroup] | None:
        """A group's source images, or none when there are more than the identity allows."""
        if not images or len(images) > self._identity.group_source_images_max:
            return None
        return [hd.sr.SourceImageForMeasurementGroup.from_source_image(s) for s in images]

    def _algorithm(self, prediction: Prediction, threshold: float) -> hd.sr.AlgorithmIdentification:
        return hd.sr.AlgorithmIdentification(
            name=prediction.model_name,
            version=prediction.model_version,
            parameters=[f"threshold={threshold:g}"],
            manufacturer=self._identity.manufacturer,
        )

    def _region_groups(self, study_uid: str, prediction: Prediction) -> list[hd.sr.Template]:
        """TID 1410 / 1411 groups of the localised findings (in finding order)."""
        out: list[hd.sr.Template] = []
        for finding in prediction.findings:
            region = finding.region
            if region is None:
                continue
            algo = self._algorithm(prediction, finding.threshold)
            common = {
                "tracking_identifier": hd.sr.TrackingIdentifier(
                    uid=uid_from_parts("tracking", study_uid, prediction.family, finding.key, "roi"),
                    identifier=f"{prediction.family}:{finding.key}:region",
                ),
                "finding_type": _coded(finding),
                "algorithm_id": algo,
                "qualitative_evaluations": [_presence(finding)],
                "measurements": [_probability(finding, algo)],
            }
            if isinstance(region, VolumetricRegion):
                out.append(
                    hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                        referenced_volume_surface=_surface(region), **common
                    )
                )
            else:
                out.append(
                    hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                        referenced_region=_planar_region(region), **common
                    )
                )
        return out

    def _quality_groups(self, study_uid: str, prediction: Prediction, sources: list[Dataset]) -> list[hd.sr.Template]:
        """One TID 1501 group per image-quality flag, referencing the flagged series."""
        out: list[hd.sr.Template] = []
        for flag in prediction.quality_flags:
            series = [s for s in sources if str(s.SeriesInstanceUID) == flag.series_instance_uid]
            term = term_for(flag.key)
            algo = hd.sr.AlgorithmIdentification(
                name=f"{prediction.model_name} image quality"[:64],
                version=prediction.model_version,
                parameters=[f"threshold={flag.threshold:g}", f"measured={flag.score:g}"],
                manufacturer=self._identity.manufacturer,
            )
            out.append(
                hd.sr.MeasurementsAndQualitativeEvaluations(
                    tracking_identifier=hd.sr.TrackingIdentifier(
                        uid=uid_from_parts(
                            "tracking", study_uid, prediction.family, "quality", flag.key, flag.series_instance_uid
                        ),
                        identifier=f"{prediction.family}:quality:{flag.key}",
                    ),
                    finding_type=hd.sr.CodedConcept(term.value, term.scheme, term.meaning),
                    algorithm_id=algo,
                    qualitative_evaluations=[
                        hd.sr.QualitativeEvaluation(codes.DCM.PresenceOfProperty, codes.SCT.Present)
                    ],
                    source_images=self._group_sources(series),
                )
            )
        return out

    @staticmethod
    def _series_description(prediction: Prediction) -> str:
        """Series Description (LO, 64 chars): the DEMO marker first, so truncation keeps it."""
        prefix = "DEMO AI, not for clinical use: " if prediction.demo else "AI (unverified): "
        return f"{prefix}{prediction.model_name} {prediction.model_version}"[:64]


def _coded(finding: Finding) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(finding.term.value, finding.term.scheme, finding.term.meaning)


def _presence(finding: Finding) -> hd.sr.QualitativeEvaluation:
    value = codes.SCT.Present if finding.present else codes.SCT.Absent
    return hd.sr.QualitativeEvaluation(codes.DCM.PresenceOfProperty, value)


def _probability(finding: Finding, algo: hd.sr.AlgorithmIdentification) -> hd.sr.Measurement:
    return hd.sr.Measurement(
        name=codes.DCM.Probability,
        value=round(float(finding.probability), 6),
        unit=_NO_UNITS,
        algorithm_id=algo,
    )


def _frames(frame: FrameRef) -> list[int] | None:
    return [int(frame.frame_number)] if frame.frame_number else None


def _planar_region(region: PlanarRegion) -> hd.sr.ImageRegion:
    """A closed POLYLINE in image coordinates on the exact source instance and frame."""
    return hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=np.asarray(region.polyline, dtype=np.float64),
        source_image=hd.sr.SourceImageForRegion(
            region.frame.sop_class_uid, region.frame.sop_instance_uid, _frames(region.frame)
        ),
    )


def _surface(region: VolumetricRegion) -> hd.sr.VolumeSurface:
    """An ELLIPSOID SCOORD3D (three axes' end points) in the frame of reference."""
    return hd.sr.VolumeSurface(
        graphic_type=hd.sr.GraphicTypeValues3D.ELLIPSOID,
        graphic_data=np.asarray(region.ellipsoid, dtype=np.float64),
        frame_of_reference_uid=region.frame_of_reference_uid,
        source_images=[
            hd.sr.SourceImageForSegmentation(
                region.frame.sop_class_uid, region.frame.sop_instance_uid, _frames(region.frame)
            )
        ],
    )


def stamp_times(ds: Dataset, when: datetime) -> None:
    """Set the object's content and creation date/time to ``when`` (the job's time).

    highdicom stamps the wall clock; results stamped with the job's own time instead are
    byte-identical when the same input is processed again (a retried stage, a replay).
    """
    date, time = when.strftime("%Y%m%d"), when.strftime("%H%M%S.%f")
    for prefix in ("Content", "InstanceCreation", "Series"):
        if f"{prefix}Date" in ds or prefix != "Series":
            setattr(ds, f"{prefix}Date", date)
            setattr(ds, f"{prefix}Time", time)
    for item in ds.get("ContributingEquipmentSequence", []):
        item.ContributionDateTime = when.strftime("%Y%m%d%H%M%S.%f")


def describes_our_sr(series_description: str, model_name: str) -> bool:
    """Whether a Series Description is one ``SRBuilder`` writes for ``model_name``.

    Used to find our earlier SRs at the PACS; kept next to the writer so the two agree.

    >>> describes_our_sr("DEMO AI, not for clinical use: cxr-net 0.1.0-demo", "cxr-net")
    True
    >>> describes_our_sr("AI (unverified): other-net 1.0", "cxr-net")
    False
    """
    return series_description.startswith(("DEMO AI", "AI (unverified)")) and (f": {model_name} " in series_description)


def _local_scheme_item() -> Dataset:
    """Coding Scheme Identification (PS3.3 C.12.1.1.2) declaring our local scheme."""
    item = Dataset()
    item.CodingSchemeDesignator = LOCAL_SCHEME
    item.CodingSchemeName = "PACS-AI Bridge local finding codes"
    item.CodingSchemeResponsibleOrganization = "PACS-AI Bridge"
    return item


def _text(name: hd.sr.CodedConcept, value: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(name=name, value=value, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)


def _comparison_container(comparison: Comparison) -> hd.sr.ContainerContentItem:
    """TID 1500 row 12: the study-level qualitative evaluations about priors."""
    container = hd.sr.ContainerContentItem(name=_QUALITATIVE, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
    container.ContentSequence = hd.sr.ContentSequence(
        [
            hd.sr.CodeContentItem(
                name=_COMPARISON_DONE,
                value=_YES if comparison.done else _NO,
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            ),
            _text(_PRIOR_DESCRIPTION, comparison.summary()),
        ]
    )
    return container
