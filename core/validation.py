"""Validation of received instances, their series and their study (issue #4).

Every problem has a machine-readable reason code (``core.reasons.ReasonCode``) and a message
that names the attribute (keyword and tag), what was found and what was expected; messages never
carry patient names or IDs. The validator never raises on a dataset: a dataset too broken to
inspect is itself a finding (``UNREADABLE``).

Three levels (``core.reasons.Level``):

- instance (:meth:`Validator.inspect`): the attributes the models and the SR need (Patient ID,
  Study / Series / SOP Instance UIDs, SOP Class UID, Modality, the Image Pixel module, the Image
  Plane module of CT / MR / PET images, Pixel Spacing where a model measures), each with a valid
  value for its VR; File Meta Information and the C-STORE request agreeing with the data set;
  Pixel Data consistent with its description and decodable (``core.pixels``).
- series (:meth:`Validator.check_collection`): one Modality and Frame of Reference, slices of
  one size and orientation, no duplicate positions, no gaps (``core.geometry``).
- study: one patient (Patient ID, issuer, birth date, sex) and one Accession Number and Study
  Date.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from core._elements import Attributes, ElementError, describe, read
from core._verdicts import UID_SYNTAX as _UID
from core._verdicts import Verdict as _Verdict
from core._verdicts import verdict_key
from core.config import ValidationConfig
from core.geometry import GeometryPolicy, Slice, check_plane, check_stack
from core.instance_checks import (
    NON_PATIENT_SOP_CLASSES,
    check_complete,
    check_functional_groups,
    check_identity,
    check_meta,
    check_transfer_syntax,
)
from core.limits import pixel_count_problem
from core.pixels import DecodeMode, check_pixel_data, check_pixels, describe_pixels
from core.reasons import Level, Problem, ReasonCode
from core.types import ValidationIssue

__all__ = [
    "InstanceFacts",
    "NON_PATIENT_SOP_CLASSES",
    "ReasonCode",
    "ValidationPolicy",
    "Validator",
    "attribute_text",
]

_PATIENT = ("PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex")
_VERDICTS_KEPT = 512
_STUDY = ("AccessionNumber", "StudyDate")
_STACK = ("EchoNumbers", "TemporalPositionIdentifier", "TriggerTime", "AcquisitionNumber")
_FACT_TEXTS = ("FrameOfReferenceUID", *_PATIENT, *_STUDY, *_STACK)
"""Read with ``quick_text``, whose result depends on whether a check decoded them first."""
_PLANE_SOP_CLASSES = frozenset(
    {"1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.128"}
)
"""CT, MR and PET Image Storage: the Image Plane module is mandatory (PS3.3 A.3, A.4, A.21)."""


_Check = Callable[[Attributes, str, str], list[Problem]]
"""An instance check: ``(attributes, transfer syntax, expected SOP Instance UID) -> problems``."""


@dataclass(frozen=True, slots=True)
class ValidationPolicy:
    """What the validator demands beyond the standard's minimum.

    Attributes:
        decode: How much encapsulated Pixel Data is decoded.
        pixel_spacing_modalities: Modalities whose models measure: Pixel Spacing is required.
        geometry: Tolerances of the series geometry checks.
        max_pixels: Ceiling on Rows x Columns x Frames x Samples, checked before any decode.
    """

    decode: DecodeMode = DecodeMode.ALL_FRAMES
    pixel_spacing_modalities: frozenset[str] = frozenset({"CT", "MR", "PT"})
    geometry: GeometryPolicy = field(default_factory=GeometryPolicy)
    max_pixels: int = 1 << 31

    @classmethod
    def from_config(cls, cfg: ValidationConfig) -> ValidationPolicy:
        """Build the policy from its config slice."""
        return cls(
            DecodeMode(cfg.decode),
            frozenset(m.upper() for m in cfg.pixel_spacing_modalities),
            GeometryPolicy(cfg.orientation_tolerance, cfg.position_tolerance_mm, cfg.gap_tolerance),
            max_pixels=cfg.max_pixels,
        )


@dataclass(frozen=True, slots=True)
class InstanceFacts:
    """What the series and study checks need from one instance. Identifiers are keyed hashes.

    Attributes:
        sop_instance_uid: The instance.
        series_instance_uid: Its series.
        study_instance_uid: Its study.
        modality: Modality.
        frame_of_reference_uid: Frame of Reference UID.
        slice: Its plane, for single-frame images with a valid one.
        patient: Hashed Patient ID, Issuer of Patient ID, Patient's Birth Date, Patient's Sex.
        study: Hashed Accession Number and Study Date.
    """

    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    modality: str = ""
    frame_of_reference_uid: str = ""
    slice: Slice | None = None
    patient: tuple[str, ...] = ()
    study: tuple[str, ...] = ()


class Validator:
    """Checks instances, series and studies against the policy. Pure; never raises on data."""

    def __init__(self, policy: ValidationPolicy | None = None) -> None:
        """Args:
        policy: Demands and tolerances (defaults: decode every frame).
        """
        self.policy = policy or ValidationPolicy()
        self._verdicts: dict[bytes, _Verdict] = {}

    def check_instance(
        self, ds: Dataset, transfer_syntax_uid: str = "", expected_sop_instance_uid: str = ""
    ) -> list[ValidationIssue]:
        """Return every problem of one instance (empty when it is fine). Never raises.

        Args:
            ds: The full dataset (with Pixel Data when it has any).
            transfer_syntax_uid: The transfer syntax it arrived in (default: its File Meta's).
            expected_sop_instance_uid: The SOP Instance UID the C-STORE request named.
        """
        return self.inspect(ds, transfer_syntax_uid, expected_sop_instance_uid)[0]

    def inspect(
        self, ds: Dataset, transfer_syntax_uid: str = "", expected_sop_instance_uid: str = ""
    ) -> tuple[list[ValidationIssue], InstanceFacts]:
        """Check one instance and return its problems and the facts the collection checks need.

        Args:
            ds: The full dataset.
            transfer_syntax_uid: The transfer syntax it arrived in (default: its File Meta's).
            expected_sop_instance_uid: The SOP Instance UID the C-STORE request named.

        Returns:
            ``(issues, facts)``; never raises.
        """
        try:
            known, key = self._known_clean(ds, transfer_syntax_uid, expected_sop_instance_uid)
        except Exception:  # noqa: BLE001 - the shortcut only ever answers "clean"; the full
            known, key = None, None  # checks below find and word whatever broke it
        if known is not None:
            return [], known
        issues, facts, verdict = self._inspect(ds, transfer_syntax_uid, expected_sop_instance_uid, key is not None)
        if key is not None and verdict is not None:
            if len(self._verdicts) >= _VERDICTS_KEPT:
                self._verdicts.clear()  # bounded; a clear (not LRU) is safe under threads
            self._verdicts[key] = verdict
        return issues, facts

    def _inspect(
        self, ds: Dataset, transfer_syntax_uid: str, expected_sop_instance_uid: str, keyed: bool = False
    ) -> tuple[list[ValidationIssue], InstanceFacts, _Verdict | None]:
        """Every check, in order; also, for a clean keyed instance, what its series shares (see
        ``core._verdicts``)."""
        attrs = Attributes(ds)
        sop = expected_sop_instance_uid or _safe_text(attrs, "SOPInstanceUID")
        problems: list[Problem] = []
        for check in self._checks():
            try:
                problems += check(attrs, transfer_syntax_uid, expected_sop_instance_uid)
            except Exception as exc:  # noqa: BLE001 - the validator is a boundary: data from a
                # network peer that breaks a check in an unforeseen way is a finding, not a crash.
                problems.append(
                    Problem(ReasonCode.UNREADABLE, f"{check.__name__}: {type(exc).__name__}: {str(exc)[:200]}")
                )
        problems += [p for p in attrs.problems if p not in problems]
        issues = [ValidationIssue(str(p.code), p.message, sop, str(p.level)) for p in problems]
        replay = tuple(k for k in _FACT_TEXTS if attrs.decoded(k))
        facts = self._facts(attrs, sop)
        return issues, facts, (self._verdict(ds, attrs, replay) if keyed and not issues else None)

    @staticmethod
    def _verdict(ds: Dataset, attrs: Attributes, replay: tuple[str, ...]) -> _Verdict | None:
        try:
            shared, plane = _shared_facts(attrs), _plane(attrs)
        except Exception:  # noqa: BLE001 - facts that fall back are not remembered
            return None
        keyword, desc, problems = describe_pixels(Attributes(ds))
        return None if problems else _Verdict(keyword, desc, replay, shared, plane)

    def _known_clean(self, ds: Dataset, ts: str, expected_sop: str) -> tuple[InstanceFacts | None, bytes | None]:
        """The facts of an instance whose series-invariant attributes are byte for byte those of
        an instance found clean before, and whose own attributes pass; else ``None`` (then the
        full checks run). Also the verdict key (``None``: not rememberable)."""
        attrs = Attributes(ds)
        key = verdict_key(attrs, ts)
        verdict = self._verdicts.get(key) if key is not None else None
        if verdict is None or not self._own_attributes_clean(attrs, ts, expected_sop, verdict):
            return None, key
        for keyword in verdict.replay:  # decode what the full checks decode, so that the facts
            attrs.get(keyword)  # compare values read the same way
        if attrs.problems:
            return None, None
        sop = expected_sop or _safe_text(attrs, "SOPInstanceUID")
        series, study, modality, frame_of_reference, patient, study_facts = verdict.shared
        placed = _placed(attrs, sop, verdict.plane, attrs.numbers("ImagePositionPatient"))
        facts = InstanceFacts(sop, series, study, modality, frame_of_reference, placed, patient, study_facts)
        return facts, key

    def _own_attributes_clean(self, attrs: Attributes, ts: str, expected_sop: str, verdict: _Verdict) -> bool:
        """Whether the checks of what differs between the slices of a series find nothing: the
        end of the file, the SOP Instance UID, File Meta and C-STORE agreement, Image Position
        (Patient), the Pixel Data itself. Stricter than the full checks: anything unusual is
        left to them."""
        if check_complete(attrs, ts, expected_sop) or check_meta(attrs, ts, expected_sop):
            return False
        sop = attrs.text("SOPInstanceUID")
        if not sop or len(sop) > 64 or not _UID.match(sop):
            return False
        if sop in (attrs.text("StudyInstanceUID"), attrs.text("SeriesInstanceUID")):
            return False
        position = attrs.numbers("ImagePositionPatient")
        if position is not None and len(position) != 3:
            return False
        if self._pixel_ceiling(attrs):
            return False
        if verdict.keyword is not None and verdict.desc is not None:
            syntax = _syntax(attrs, ts)
            if check_pixel_data(attrs, verdict.keyword, verdict.desc, syntax, self.policy.decode):
                return False
        return not attrs.problems

    def _checks(self) -> tuple[_Check, ...]:
        return (
            check_complete,
            check_transfer_syntax,
            check_identity,
            check_meta,
            self._check_plane,
            self._check_pixels,
            check_functional_groups,
        )

    def _check_pixels(self, attrs: Attributes, ts: str, _sop: str) -> list[Problem]:
        return self._pixel_ceiling(attrs) or check_pixels(attrs, _syntax(attrs, ts), self.policy.decode)

    def _pixel_ceiling(self, attrs: Attributes) -> list[Problem]:
        """A declared image larger than ``max_pixels`` (a pixel bomb), found before any decode."""
        rows, columns = attrs.integer("Rows"), attrs.integer("Columns")
        if not rows or not columns:
            return []  # not an image, or the pixel description checks say what is wrong
        frames, samples = attrs.integer("NumberOfFrames") or 1, attrs.integer("SamplesPerPixel") or 1
        found = pixel_count_problem(rows, columns, frames, samples, self.policy.max_pixels)
        return [Problem(ReasonCode.INVALID_VALUE, found)] if found else []

    def _check_plane(self, attrs: Attributes, _ts: str, _sop: str) -> list[Problem]:
        orientation = attrs.numbers("ImageOrientationPatient")
        position = attrs.numbers("ImagePositionPatient")
        spacing = attrs.numbers("PixelSpacing")
        problems = check_plane(orientation, position, spacing)
        sop_class = attrs.text("SOPClassUID")
        required = list(
            ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing")
            if sop_class in _PLANE_SOP_CLASSES
            else ()
        )
        modality = attrs.text("Modality").upper()
        if modality in self.policy.pixel_spacing_modalities and not _has_spacing(attrs):
            required.append("PixelSpacing")
        for keyword in dict.fromkeys(required):
            if not attrs.present(keyword) and not (keyword == "PixelSpacing" and _has_spacing(attrs)):
                problems.append(
                    Problem(
                        ReasonCode.MISSING_ATTRIBUTE,
                        f"{describe(keyword)}: missing; expected a value (needed for {modality or sop_class} geometry)",
                    )
                )
        return problems

    def _facts(self, attrs: Attributes, sop: str) -> InstanceFacts:
        try:
            series, study, modality, frame_of_reference, patient, study_facts = _shared_facts(attrs)
            return InstanceFacts(
                sop, series, study, modality, frame_of_reference, _slice(attrs, sop), patient, study_facts
            )
        except Exception:  # noqa: BLE001 - facts of an unreadable dataset are just its UID
            return InstanceFacts(sop, "", "")

    def check_collection(self, facts: Iterable[InstanceFacts]) -> list[ValidationIssue]:
        """Return series- and study-level problems, one issue per instance they concern.

        Args:
            facts: The facts of every instance of one job (one study, possibly several series).
        """
        items = list(facts)
        issues: list[ValidationIssue] = []
        for members, problem in _study_problems(items) + self._series_problems(items):
            issues += [
                ValidationIssue(str(problem.code), problem.message, m.sop_instance_uid, str(problem.level))
                for m in members
            ]
        return issues

    def _series_problems(self, items: list[InstanceFacts]) -> list[_Found]:
        found = []
        for series_uid, members in _group(items, lambda f: f.series_instance_uid).items():
            problems = _differing(
                members,
                f"series {series_uid}",
                _SERIES_NAMES,
                lambda f: (f.modality, f.frame_of_reference_uid),
                ReasonCode.SERIES_ATTRIBUTE_MISMATCH,
                Level.SERIES,
            )
            slices = [f.slice for f in members if f.slice is not None]
            problems += check_stack(series_uid, slices, self.policy.geometry)
            found += [(members, p) for p in problems]
        return found


_Found = tuple[list[InstanceFacts], Problem]
_SERIES_NAMES = ("Modality (0008,0060)", "FrameOfReferenceUID (0020,0052)")


def _study_problems(items: list[InstanceFacts]) -> list[_Found]:
    found = []
    for study_uid, members in _group(items, lambda f: f.study_instance_uid).items():
        where = f"study {study_uid}"
        problems = _differing(
            members,
            where,
            tuple(describe(k) for k in _PATIENT),
            lambda f: f.patient,
            ReasonCode.PATIENT_MISMATCH,
            Level.STUDY,
        )
        problems += _differing(
            members,
            where,
            tuple(describe(k) for k in _STUDY),
            lambda f: f.study,
            ReasonCode.STUDY_ATTRIBUTE_MISMATCH,
            Level.STUDY,
        )
        found += [(members, p) for p in problems]
    return found


def _differing(
    members: Sequence[InstanceFacts],
    where: str,
    names: Sequence[str],
    values_of: Callable[[InstanceFacts], tuple[str, ...]],
    code: ReasonCode,
    level: Level,
) -> list[Problem]:
    """One problem per attribute with more than one distinct non-empty value among members."""
    problems = []
    for index, name in enumerate(names):
        values = {v[index] for v in map(values_of, members) if len(v) > index} - {""}
        if len(values) > 1:
            problems.append(Problem(code, f"{name}: {len(values)} different values in {where}; expected one", level))
    return problems


def _group(items: Iterable[InstanceFacts], key: Callable[[InstanceFacts], str]) -> dict[str, list[InstanceFacts]]:
    groups: dict[str, list[InstanceFacts]] = defaultdict(list)
    for item in items:
        groups[key(item)].append(item)
    return dict(groups)


def attribute_text(ds: Dataset, keyword: str) -> str:
    """Return an attribute's first value as stripped text; ``""`` when absent or unreadable.

    Unlike ``ds.get(keyword)`` this never raises, whatever pydicom's reading validation mode,
    so that data with invalid values is still filed (and then flagged by the validator). Values
    pydicom can convert come decoded in the data set's character set; others from raw bytes.
    """
    try:
        value = ds.get(keyword)
        first = value[0] if isinstance(value, MultiValue | list | tuple) and value else value
        return "" if first is None else str(first).strip()
    except (ValueError, TypeError, LookupError, AttributeError, OverflowError, IndexError):
        pass  # an invalid value: read its bytes instead
    try:
        elem = read(ds, keyword)
    except ElementError:
        return ""
    first = elem.first if elem is not None else None
    return "" if first is None else str(first).strip()


def _fingerprint(value: str) -> str:
    """A keyed hash of an identifier, for comparing instances without holding the identifier.

    Facts live only inside one validator process, so Python's own string hash (SipHash with a
    random per-process key) serves, at a tenth of the cost of an HMAC. ``""`` stays ``""``.
    """
    return format(hash(("pacsai-facts", value)) & 0xFFFFFFFFFFFFFFFF, "016x") if value else ""


def _shared_facts(attrs: Attributes) -> tuple[str, str, str, str, tuple[str, ...], tuple[str, ...]]:
    """The facts every instance of a series shares: Series and Study UIDs, Modality, Frame of
    Reference, hashed patient and study attributes (``core._verdicts`` keys all they read)."""
    return (
        _safe_text(attrs, "SeriesInstanceUID"),
        _safe_text(attrs, "StudyInstanceUID"),
        _safe_text(attrs, "Modality").upper(),
        attrs.quick_text("FrameOfReferenceUID"),
        tuple(_fingerprint(attrs.quick_text(k)) for k in _PATIENT),
        tuple(_fingerprint(attrs.quick_text(k)) for k in _STUDY),
    )


def _safe_text(attrs: Attributes, keyword: str) -> str:
    elem = attrs.get(keyword)
    first = elem.first if elem is not None else None
    return "" if first is None else str(first).strip()


def _syntax(attrs: Attributes, ts: str) -> str:
    return str(ts) if ts else attrs.meta_text("TransferSyntaxUID")


def _has_spacing(attrs: Attributes) -> bool:
    return attrs.present("PixelSpacing") or attrs.present("ImagerPixelSpacing") or _shared_spacing(attrs)


def _shared_spacing(attrs: Attributes) -> bool:
    """Enhanced multi-frame images keep Pixel Spacing in the functional groups (PS3.3 C.7.6.16)."""
    for keyword in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        try:
            groups = attrs.ds.get(keyword)
            measures = groups[0].get("PixelMeasuresSequence") if groups else None
            if measures and measures[0].get("PixelSpacing"):
                return True
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            continue  # an unreadable sequence holds no usable spacing: reported as missing
    return False


def _slice(attrs: Attributes, sop: str) -> Slice | None:
    return _placed(attrs, sop, _plane(attrs), attrs.numbers("ImagePositionPatient"))


_Plane = tuple[tuple[float, ...], int, int]


def _plane(attrs: Attributes) -> _Plane | None:
    """Orientation, Rows and Columns of a single-frame image with a valid orientation (what its
    series shares of a slice); ``None`` otherwise."""
    orientation = attrs.numbers("ImageOrientationPatient")
    frames = attrs.integer("NumberOfFrames") if attrs.present("NumberOfFrames") else 1
    rows, columns = attrs.integer("Rows"), attrs.integer("Columns")
    if orientation is None or frames != 1 or rows is None or columns is None or check_plane(orientation, None, None):
        return None
    return tuple(orientation), rows, columns


def _placed(attrs: Attributes, sop: str, plane: _Plane | None, position: tuple[float, ...] | None) -> Slice | None:
    if plane is None or position is None or len(position) != 3:
        return None
    stack = tuple(attrs.quick_text(k) for k in _STACK)
    return Slice(sop, plane[1], plane[2], plane[0], tuple(position), stack)
