"""Prior studies: what to ask the PACS, whose studies the answers are, which one to compare with.

Radiologists compare with prior exams; among the peers only dcm4chee links priors on its own
(``shared/reference/peers.md``). For each job the prior linker asks the PACS (Study Root C-FIND at
STUDY level, PS3.4 C.6.2) for the same patient's studies: Patient ID, plus Issuer of Patient ID
when the current study has one, within a look-back window, and of the current modality
(Modalities in Study) when so configured. The best candidate's series are listed (SERIES level)
to check Body Part Examined and to name the series to retrieve.

Only studies truly earlier than the current one are priors (issue 18): the look-back window
ends at the current study's Study Date (not today, so a late or re-processed study is never
compared with a newer one), and a candidate on the same day must have an earlier Study Time.
A candidate whose date, or same-day time, is missing cannot be proven earlier and is left out.

Patient safety: a Patient ID alone is not proof of identity (IDs are reused, merged, mistyped,
and an unidentified emergency registration has nothing else). Each earlier candidate is one of:

- **linkable**: Patient ID, Patient's Name and Patient's Birth Date present on both sides and
  equal, and Issuer of Patient ID equal or absent on both sides;
- **identity conflict**: the name or birth date disagrees (``RefusalKind.IDENTITY_CONFLICT``);
- **issuer mismatch**: the PACS returned another Issuer of Patient ID, so the same Patient ID
  names a patient of another assigning authority (``RefusalKind.ISSUER_MISMATCH``);
- **unverified**: the name or birth date is empty on either side, or only one side has an
  issuer (the PACS did not return it); not linked unless ``priors.link_unverified`` is set or a
  reviewer confirmed the pair (``RefusalKind.UNVERIFIED``).

Every refusal is returned (``PriorSearch.conflicts``) so that the prior linker audits it and
raises a review flag (``core.review``). Names compare by PN component groups, ignoring case,
surrounding spaces and trailing empty components.

Ranking: the closest earlier study first; among those, a full match of modality and body part
wins over a partial one.
"""

from __future__ import annotations

import enum
from collections.abc import Set
from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta
from typing import Any

from pydicom.dataset import Dataset

from core.config import PriorsConfig
from core.numbers import ascii_digits
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
    "RefusalKind",
    "SeriesRecord",
    "StudyQuery",
    "StudyRecord",
    "is_earlier",
]

_NOT_IMAGES = frozenset({"SR", "KO", "PR", "SEG", "RTSTRUCT", "DOC"})
"""Modalities of series that are not images to compare (results, selections, states)."""


def _norm_name(name: str) -> str:
    """PN for comparison: upper case, inner spaces collapsed, trailing empty components dropped."""
    groups = str(name).upper().split("=")
    norm = ["^".join(" ".join(c.split()) for c in g.split("^")).rstrip("^") for g in groups]
    return "=".join(norm).rstrip("=")


def _da(value: str) -> str | None:
    """A DA value as ``YYYYMMDD`` (PS3.5 6.2; ACR-NEMA ``YYYY.MM.DD`` too), or ``None``."""
    text = str(value or "").strip().replace(".", "")
    try:
        datetime.strptime(text, "%Y%m%d")
    except ValueError:
        return None
    return text


def _tm(value: str) -> str | None:
    """A TM value as ``HHMMSS.FFFFFF`` (PS3.5 6.2: ``HH``, ``HHMM``, ``HHMMSS[.F{1,6}]``)."""
    text = str(value or "").strip().replace(":", "")
    whole, _, fraction = text.partition(".")
    if len(whole) not in (2, 4, 6) or not ascii_digits(whole) or (fraction and not ascii_digits(fraction)):
        return None
    hhmmss = whole.ljust(6, "0")
    if int(hhmmss[:2]) > 23 or int(hhmmss[2:4]) > 59 or int(hhmmss[4:]) > 60:  # 60: leap second
        return None
    return f"{hhmmss}.{fraction[:6].ljust(6, '0')}"


def is_earlier(study_date: str, study_time: str, than_date: str, than_time: str) -> bool:
    """Whether a study is provably earlier than another (Study Date, then Study Time).

    On the same day both Study Times are needed; a missing or malformed date or needed time
    proves nothing, so the answer is ``False``.

    >>> is_earlier("20250101", "", "20260601", "")
    True
    >>> is_earlier("20260601", "0730", "20260601", "120000"), is_earlier("20260601", "", "20260601", "1200")
    (True, False)
    >>> is_earlier("20260601", "183000", "20260601", "120000")
    False
    """
    mine, theirs = _da(study_date), _da(than_date)
    if mine is None or theirs is None or mine > theirs:
        return False
    if mine < theirs:
        return True
    t_mine, t_theirs = _tm(study_time), _tm(than_time)
    return t_mine is not None and t_theirs is not None and t_mine < t_theirs


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

    def unverified(self, other: PatientIdentity) -> tuple[str, ...]:
        """Return the DICOM keywords that cannot be compared: empty on either side, or (the
        issuer) present on one side only.

        >>> PatientIdentity("P1", "HOSP", "DOE^JANE", "19600101").unverified(PatientIdentity("P1"))
        ('PatientName', 'PatientBirthDate', 'IssuerOfPatientID')
        >>> PatientIdentity("P1", "", "DOE^JANE", "19600101").unverified(
        ...     PatientIdentity("P1", "", "Doe^Jane", "19600101"))
        ()
        """
        out = []
        if not _norm_name(self.name) or not _norm_name(other.name):
            out.append("PatientName")
        if not self.birth_date or not other.birth_date:
            out.append("PatientBirthDate")
        if bool(self.issuer) != bool(other.issuer):
            out.append("IssuerOfPatientID")
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
    """The study a job is about, as far as prior linking needs it.

    Attributes:
        study_time: Study Time (TM); needed to order studies of the same day.
    """

    study_uid: str
    identity: PatientIdentity
    study_date: str
    modalities: tuple[str, ...]
    body_parts: tuple[str, ...]
    study_time: str = ""


class RefusalKind(enum.StrEnum):
    """Why an earlier study of the same Patient ID was not linked (the review flag kind)."""

    IDENTITY_CONFLICT = "prior_identity_conflict"
    """Patient's Name or Birth Date disagrees: another patient with the same ID."""
    ISSUER_MISMATCH = "prior_issuer_mismatch"
    """The PACS returned another Issuer of Patient ID: an ID of another assigning authority."""
    UNVERIFIED = "prior_unverified"
    """Name or birth date empty on either side, or the issuer on one side only: no proof."""


@dataclass(frozen=True, slots=True)
class Conflict:
    """An earlier study with the same Patient ID that was not linked: audited and flagged.

    Attributes:
        study_uid: The candidate study.
        differing: DICOM keywords that disagree (or, when unverified, cannot be compared).
        study_date: Its Study Date.
        kind: Why it was refused.
    """

    study_uid: str
    differing: tuple[str, ...]
    study_date: str = ""
    kind: RefusalKind = RefusalKind.IDENTITY_CONFLICT


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
        conflicts: Earlier studies with the same Patient ID that were refused (see ``kind``).
        considered: Earlier candidate studies inspected.
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
        """Build the STUDY-level query for ``current``.

        The window ends at the current study's Study Date and reaches ``lookback_days`` back
        from it; ``today`` stands in only when the current study has no valid date.
        """
        known = _da(current.study_date)
        end = datetime.strptime(known, "%Y%m%d").date() if known else today
        start = end - timedelta(days=self._cfg.lookback_days)
        return StudyQuery(
            patient_id=current.identity.patient_id,
            issuer=current.identity.issuer,
            modalities=current.modalities if self._cfg.same_modality else (),
            date_from=start.strftime("%Y%m%d"),
            date_to=end.strftime("%Y%m%d"),
        )

    def search(self, current: CurrentStudy, today: date, confirmed: Set[str] = frozenset()) -> PriorSearch:
        """Query the PACS and choose the prior to link.

        Args:
            current: The job's study.
            today: Ends the look-back window only if the current study has no valid date.
            confirmed: Study UIDs a reviewer confirmed to be this patient's (a resolved
                ``prior_unverified`` flag): linked although unverified.

        Returns:
            The search result; ``NONE_FOUND`` when no eligible study exists.

        Raises:
            DependencyUnavailable: The PACS cannot be queried.
        """
        if not current.identity.patient_id:
            return PriorSearch(PriorStatus.NONE_FOUND, reason="the current study has no Patient ID")
        if _da(current.study_date) is None:
            return PriorSearch(
                PriorStatus.NONE_FOUND,
                reason="the current study has no valid Study Date: no study can be proven earlier",
            )
        query = self.query_for(current, today)
        studies = [s for s in self._pacs.find_studies(query) if self._eligible(s, current, query)]
        studies.sort(key=lambda s: (_da(s.study_date) or "", _tm(s.study_time) or ""), reverse=True)
        studies = studies[: self._cfg.max_candidates]
        refused = [self._refusal(current, s, confirmed) for s in studies]
        conflicts = tuple(r for r in refused if r is not None)
        linkable = [s for s, r in zip(studies, refused, strict=True) if r is None]
        study, series = self._choose(current, linkable)
        if study is None:
            why = f"no earlier study of this patient since {query.date_from}" + _refusal_counts(conflicts)
            return PriorSearch(PriorStatus.NONE_FOUND, None, (), conflicts, len(studies), why)
        why = f"prior study of {study.study_date} chosen of {len(studies)} earlier"
        return PriorSearch(PriorStatus.FOUND, study, series, conflicts, len(studies), why)

    @staticmethod
    def _eligible(study: StudyRecord, current: CurrentStudy, query: StudyQuery) -> bool:
        """Client-side re-check of what the PACS may not have matched: truly earlier, within the
        window, of the wanted modality. Identity is judged apart (``_refusal``)."""
        if study.study_uid == current.study_uid:
            return False
        if not is_earlier(study.study_date, study.study_time, current.study_date, current.study_time):
            return False
        if (_da(study.study_date) or "") < query.date_from:
            return False
        wanted = set(query.modalities)
        return not wanted or not study.modalities or bool(wanted & set(study.modalities))

    def _refusal(self, current: CurrentStudy, study: StudyRecord, confirmed: Set[str]) -> Conflict | None:
        """Why ``study`` may not be linked to ``current`` (``None``: it may)."""
        differing = current.identity.disagreements(study.identity)
        if differing == ("IssuerOfPatientID",):
            return Conflict(study.study_uid, differing, study.study_date, RefusalKind.ISSUER_MISMATCH)
        if differing:
            return Conflict(study.study_uid, differing, study.study_date, RefusalKind.IDENTITY_CONFLICT)
        missing = current.identity.unverified(study.identity)
        if missing and not self._cfg.link_unverified and study.study_uid not in confirmed:
            return Conflict(study.study_uid, missing, study.study_date, RefusalKind.UNVERIFIED)
        return None

    def _choose(
        self, current: CurrentStudy, studies: list[StudyRecord]
    ) -> tuple[StudyRecord | None, tuple[SeriesRecord, ...]]:
        """Walk candidates closest earlier first; the first full match wins, else the best partial."""
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


def _refusal_counts(conflicts: tuple[Conflict, ...]) -> str:
    """The refusals in words, for the SR and the audit trail (no identifiers).

    >>> _refusal_counts((Conflict("1.2", ("PatientName",)),))
    '; 1 study(ies) with the same Patient ID not linked: another patient (1); for review'
    """
    if not conflicts:
        return ""
    words = {
        RefusalKind.IDENTITY_CONFLICT: "another patient",
        RefusalKind.ISSUER_MISMATCH: "another issuer of the Patient ID",
        RefusalKind.UNVERIFIED: "identity not verifiable",
    }
    parts = [f"{words[k]} ({n})" for k in RefusalKind if (n := sum(1 for c in conflicts if c.kind is k))]
    return f"; {len(conflicts)} study(ies) with the same Patient ID not linked: {', '.join(parts)}; for review"
