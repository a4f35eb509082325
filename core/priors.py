"""Prior studies: what to ask the PACS, whose studies the answers are, which one to compare with.

Radiologists compare with prior exams; among the peers only dcm4chee links priors on its own
(``shared/reference/peers.md``). For each job the prior linker asks the PACS (Study Root C-FIND at
STUDY level, PS3.4 C.6.2) for the same patient's studies: Patient ID, plus Issuer of Patient ID
when the current study has one, within a look-back window, and of the current modality
(Modalities in Study) when so configured. The best candidate's series are listed (SERIES level)
to check Body Part Examined and to name the series to retrieve.

Patient safety: a Patient ID alone is not proof of identity (IDs are reused, merged, mistyped).
A candidate whose Patient's Name or Patient's Birth Date disagrees with the current study is
never linked; it is returned as a conflict, to be flagged for review and audited. Names compare
by PN component groups, ignoring case, surrounding spaces and trailing empty components; a value
missing on either side is no disagreement.

Ranking: same modality and body part first, then most recent first (Study Date, Study Time).
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass
from datetime import date, timedelta
from typing import Any

from pydicom.dataset import Dataset

from core.config import PriorsConfig
from core.ports import PacsQuery

__all__ = [
    "Conflict",
    "CurrentStudy",
    "InstanceRef",
    "PacsOutage",
    "PatientIdentity",
    "PriorFinder",
    "PriorSearch",
    "PriorStatus",
    "SeriesRecord",
    "StudyQuery",
    "StudyRecord",
]

_NOT_IMAGES = frozenset({"SR", "KO", "PR", "SEG", "RTSTRUCT", "DOC"})
"""Modalities of series that are not images to compare (results, selections, states)."""


def _norm_name(name: str) -> str:
    """PN for comparison: upper case, inner spaces collapsed, trailing empty components dropped."""
    groups = str(name).upper().split("=")
    norm = ["^".join(" ".join(c.split()) for c in g.split("^")).rstrip("^") for g in groups]
    return "=".join(norm).rstrip("=")


@dataclass(frozen=True, slots=True)
class PatientIdentity:
    """Who a study belongs to, as the DICOM Patient module says (kept in memory only).

    These values are PHI: they are compared, never logged or stored in the ledger.
    """

    patient_id: str
    issuer: str = ""
    name: str = ""
    birth_date: str = ""

    @classmethod
    def from_dataset(cls, ds: Dataset) -> PatientIdentity:
        """Read Patient ID, Issuer of Patient ID, Patient's Name and Birth Date."""
        return cls(
            patient_id=str(ds.get("PatientID", "") or "").strip(),
            issuer=str(ds.get("IssuerOfPatientID", "") or "").strip(),
            name=str(ds.get("PatientName", "") or "").strip(),
            birth_date=str(ds.get("PatientBirthDate", "") or "").strip(),
        )

    def disagreements(self, other: PatientIdentity) -> tuple[str, ...]:
        """Return the DICOM keywords whose values disagree (missing values never disagree).

        >>> a = PatientIdentity("P1", name="DOE^JANE", birth_date="19600101")
        >>> a.disagreements(PatientIdentity("P1", name="doe^jane^^", birth_date=""))
        ()
        >>> a.disagreements(PatientIdentity("P1", name="ROE^RICHARD", birth_date="19991231"))
        ('PatientName', 'PatientBirthDate')
        """
        out = []
        if self.patient_id != other.patient_id:
            out.append("PatientID")
        if self.issuer and other.issuer and self.issuer != other.issuer:
            out.append("IssuerOfPatientID")
        if self.name and other.name and _norm_name(self.name) != _norm_name(other.name):
            out.append("PatientName")
        if self.birth_date and other.birth_date and self.birth_date != other.birth_date:
            out.append("PatientBirthDate")
        return tuple(out)


@dataclass(frozen=True, slots=True)
class StudyQuery:
    """A STUDY-level C-FIND for one patient's other studies."""

    patient_id: str
    issuer: str
    modalities: tuple[str, ...]
    date_from: str
    date_to: str


@dataclass(frozen=True, slots=True)
class StudyRecord:
    """One study as the PACS describes it (C-FIND STUDY level)."""

    study_uid: str
    identity: PatientIdentity
    study_date: str = ""
    study_time: str = ""
    accession: str = ""
    description: str = ""
    modalities: tuple[str, ...] = ()
    n_instances: int | None = None


@dataclass(frozen=True, slots=True)
class SeriesRecord:
    """One series as the PACS describes it (C-FIND SERIES level)."""

    study_uid: str
    series_uid: str
    modality: str = ""
    body_part: str = ""
    description: str = ""
    n_instances: int | None = None


@dataclass(frozen=True, slots=True)
class InstanceRef:
    """A reference to one stored instance (for Pertinent Other Evidence, PS3.3 C.17.2)."""

    study_uid: str
    series_uid: str
    sop_class_uid: str
    sop_instance_uid: str

    def as_dataset(self) -> Dataset:
        """The four attributes highdicom needs to reference the instance as evidence."""
        ds = Dataset()
        ds.StudyInstanceUID = self.study_uid
        ds.SeriesInstanceUID = self.series_uid
        ds.SOPClassUID = self.sop_class_uid
        ds.SOPInstanceUID = self.sop_instance_uid
        return ds


@dataclass(frozen=True, slots=True)
class CurrentStudy:
    """The study a job is about, as far as prior linking needs it."""

    study_uid: str
    identity: PatientIdentity
    study_date: str
    modalities: tuple[str, ...]
    body_parts: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Conflict:
    """A study that shares the Patient ID but not the patient: never linked."""

    study_uid: str
    differing: tuple[str, ...]
    study_date: str = ""


class PriorStatus(enum.StrEnum):
    """Outcome of prior linking for a job."""

    FOUND = "found"
    """A prior study of the same patient was chosen."""
    NONE_FOUND = "none_found"
    """The PACS holds no eligible prior study (within the look-back window)."""
    UNAVAILABLE = "unavailable"
    """The PACS could not be queried; the job went on without priors."""
    DISABLED = "disabled"
    """Prior linking is switched off, or no PACS is configured."""
    NOT_LOOKED_UP = "not_looked_up"
    """Nothing was looked up (e.g. a job from before prior linking existed)."""


@dataclass(frozen=True, slots=True)
class PriorSearch:
    """What a search at the PACS found.

    Attributes:
        status: ``FOUND`` or ``NONE_FOUND``.
        study: The chosen prior study.
        series: Its image series that match the current modality and body part, best first.
        conflicts: Studies with the same Patient ID but another name or birth date.
        considered: Candidate studies the PACS returned.
        reason: In words, for the SR and the audit trail.
    """

    status: PriorStatus
    study: StudyRecord | None = None
    series: tuple[SeriesRecord, ...] = ()
    conflicts: tuple[Conflict, ...] = ()
    considered: int = 0
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict without patient identity (for the ledger)."""
        study = None
        if self.study is not None:
            study = asdict(self.study)
            study.pop("identity")
        return {
            "status": str(self.status),
            "study": study,
            "series": [asdict(s) for s in self.series],
            "conflicts": [asdict(c) for c in self.conflicts],
            "considered": self.considered,
            "reason": self.reason,
        }


class PacsOutage:
    """A bounded wait for an unreachable PACS, per outage rather than per job.

    While the PACS has been unreachable for less than ``wait_s``, jobs wait (and retry); after
    that they go on without priors at once, until a query succeeds again.
    """

    def __init__(self, wait_s: float) -> None:
        """Args:
        wait_s: How long an outage is waited out.
        """
        self.wait_s = wait_s
        self.down_since: float | None = None

    def keep_waiting(self, now: float) -> bool:
        """Record a failed query; return whether jobs should still wait for the PACS.

        >>> o = PacsOutage(10.0)
        >>> o.keep_waiting(100.0), o.keep_waiting(109.0), o.keep_waiting(110.0)
        (True, True, False)
        """
        if self.down_since is None:
            self.down_since = now
        return now - self.down_since < self.wait_s

    def succeeded(self) -> None:
        """A query succeeded: the outage is over."""
        self.down_since = None


class PriorFinder:
    """Finds and ranks a patient's prior studies through a ``PacsQuery`` port."""

    def __init__(self, cfg: PriorsConfig, pacs: PacsQuery) -> None:
        """Args:
        cfg: The priors config slice.
        pacs: C-FIND at the PACS (real adapter, or a fake in unit tests).
        """
        self._cfg = cfg
        self._pacs = pacs

    def query_for(self, current: CurrentStudy, today: date) -> StudyQuery:
        """Build the STUDY-level query for ``current``."""
        start = today - timedelta(days=self._cfg.lookback_days)
        return StudyQuery(
            patient_id=current.identity.patient_id,
            issuer=current.identity.issuer,
            modalities=current.modalities if self._cfg.same_modality else (),
            date_from=start.strftime("%Y%m%d"),
            date_to=today.strftime("%Y%m%d"),
        )

    def search(self, current: CurrentStudy, today: date) -> PriorSearch:
        """Query the PACS and choose the prior to link.

        Args:
            current: The job's study.
            today: The date the look-back window ends (from the injected clock).

        Returns:
            The search result; ``NONE_FOUND`` when no eligible study exists.

        Raises:
            DependencyUnavailable: The PACS cannot be queried.
        """
        if not current.identity.patient_id:
            return PriorSearch(PriorStatus.NONE_FOUND, reason="the current study has no Patient ID")
        query = self.query_for(current, today)
        studies = [s for s in self._pacs.find_studies(query) if self._eligible(s, current, query)]
        studies.sort(key=lambda s: (s.study_date, s.study_time), reverse=True)
        studies = studies[: self._cfg.max_candidates]
        conflicts = tuple(
            Conflict(s.study_uid, current.identity.disagreements(s.identity), s.study_date)
            for s in studies
            if current.identity.disagreements(s.identity)
        )
        conflicting = {c.study_uid for c in conflicts}
        same_patient = [s for s in studies if s.study_uid not in conflicting]
        study, series = self._choose(current, same_patient)
        if study is None:
            why = f"no prior study of this patient since {query.date_from}"
            if conflicts:
                why += f"; {len(conflicts)} study(ies) with the same Patient ID but another patient"
            return PriorSearch(PriorStatus.NONE_FOUND, None, (), conflicts, len(studies), why)
        why = f"prior study of {study.study_date or 'unknown date'} chosen of {len(studies)}"
        return PriorSearch(PriorStatus.FOUND, study, series, conflicts, len(studies), why)

    @staticmethod
    def _eligible(study: StudyRecord, current: CurrentStudy, query: StudyQuery) -> bool:
        """Client-side re-check of what the PACS may not have matched (issuer, dates, modality)."""
        if study.study_uid == current.study_uid:
            return False
        mine, theirs = current.identity.issuer, study.identity.issuer
        if mine and theirs and mine != theirs:
            return False
        if study.study_date and not query.date_from <= study.study_date <= query.date_to:
            return False
        wanted = set(query.modalities)
        return not wanted or not study.modalities or bool(wanted & set(study.modalities))

    def _choose(
        self, current: CurrentStudy, studies: list[StudyRecord]
    ) -> tuple[StudyRecord | None, tuple[SeriesRecord, ...]]:
        """Walk candidates newest first; the first full match wins, else the best partial."""
        best: tuple[int, StudyRecord, tuple[SeriesRecord, ...]] | None = None
        for study in studies:
            series = [s for s in self._pacs.find_series(study.study_uid) if s.modality not in _NOT_IMAGES]
            ranked = sorted(series, key=lambda s: -self._score(current, s))
            if not ranked:
                continue
            score = self._score(current, ranked[0])
            if not self._acceptable(current, ranked[0]):
                continue
            if score == 2:
                return study, tuple(s for s in ranked if self._score(current, s) == 2)
            if best is None or score > best[0]:
                best = (score, study, tuple(ranked))
        return (best[1], best[2]) if best else (None, ())

    @staticmethod
    def _score(current: CurrentStudy, series: SeriesRecord) -> int:
        same_modality = series.modality in current.modalities
        parts = {p.upper() for p in current.body_parts}
        same_part = not parts or series.body_part.upper() in parts
        return int(same_modality) + int(same_part)

    def _acceptable(self, current: CurrentStudy, series: SeriesRecord) -> bool:
        if self._cfg.same_modality and series.modality not in current.modalities:
            return False
        parts = {p.upper() for p in current.body_parts}
        return not (self._cfg.same_body_part and parts and series.body_part.upper() not in parts)
