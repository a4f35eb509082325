"""Interval change: the current AI result against the prior study's AI result, per finding.

Rules for one finding (``PriorsConfig.probability_change``, ``size_change_mm``):

- absent before, present now: ``NEW``; present before, absent now: ``RESOLVED``;
- otherwise the probability moved by at least the threshold: ``INCREASED`` / ``DECREASED``;
- otherwise ``UNCHANGED``. A finding the prior result lacks is ``NOT_ASSESSED``.
- Where both results measured a size, its change is reported too (in words).

The prior result comes, in order of preference, from the current model run on the retrieved
prior images (families that compare images: same model, same version), from our earlier SR of
the prior study in the ledger, or from our SR found at the PACS (C-FIND SERIES level, Modality
SR, our algorithm's series description) and retrieved. ``Comparison`` is what the SR states,
including why no comparison was made: priors are never silently omitted.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydicom.dataset import Dataset

from core.priors import InstanceRef, PriorStatus, is_earlier
from core.records import Prediction

if TYPE_CHECKING:
    from core.job import PriorLink

__all__ = [
    "Comparison",
    "ComparisonStatus",
    "FindingChange",
    "IntervalChange",
    "PriorFinding",
    "PriorResult",
    "comparison_for",
    "interval_changes",
]


class IntervalChange(enum.StrEnum):
    """How one finding changed since the prior study."""

    NEW = "new"
    """Absent in the prior result, present now."""
    RESOLVED = "resolved"
    """Present in the prior result, absent now."""
    INCREASED = "increased"
    """Probability up by at least the configured threshold."""
    DECREASED = "decreased"
    """Probability down by at least the configured threshold."""
    UNCHANGED = "unchanged"
    """No change beyond the thresholds."""
    NOT_ASSESSED = "not_assessed"
    """The prior result has no value for this finding."""


@dataclass(frozen=True, slots=True)
class PriorFinding:
    """One finding of a prior AI result."""

    key: str
    probability: float
    present: bool
    size_mm: float | None = None


@dataclass(frozen=True, slots=True)
class PriorResult:
    """An AI result for the prior study.

    Attributes:
        study_uid: The prior study.
        study_date: Its Study Date (DA), if known.
        family: Model family.
        model_name: Algorithm name of the result.
        model_version: Algorithm version of the result.
        source: ``"model"`` (current model on retrieved prior images), ``"ledger"`` (our SR
            recorded here) or ``"pacs"`` (our SR found and retrieved at the PACS).
        findings: Per finding.
        sr: The prior SR, when the result is one.
    """

    study_uid: str
    study_date: str
    family: str
    model_name: str
    model_version: str
    source: str
    findings: tuple[PriorFinding, ...]
    sr: InstanceRef | None = None

    @classmethod
    def from_prediction(
        cls,
        pred: Prediction,
        study_uid: str,
        study_date: str,
        source: str,
        sr: InstanceRef | None = None,
    ) -> PriorResult:
        """Wrap a ``Prediction`` made for the prior study."""
        findings = tuple(PriorFinding(f.key, float(f.probability), f.present, f.size_mm) for f in pred.findings)
        return cls(study_uid, study_date, pred.family, pred.model_name, pred.model_version, source, findings, sr)

    @classmethod
    def from_sr(cls, ds: Dataset, family: str, source: str) -> PriorResult:
        """Read one of our TID 1500 SRs (as ``core.sr`` writes them).

        Raises:
            ValueError: The SR has no measurement group of ``family``.
        """
        # Imported here: highdicom and pydicom's code dictionary cost a quarter second of every
        # stage actor's start (core.job imports this module), and only the prior linker reads SRs.
        import highdicom as hd
        from pydicom.sr.codedict import codes

        groups = hd.sr.Comprehensive3DSR.from_dataset(ds).content.get_image_measurement_groups()
        findings, name, version = [], "", ""
        for g in groups:
            fam, _, key = str(g.tracking_identifier).partition(":")
            if fam != family or not key:
                continue
            probs = g.get_measurements(name=codes.DCM.Probability)
            pres = g.get_qualitative_evaluations(name=codes.DCM.PresenceOfProperty)
            present = bool(pres) and pres[0].value == codes.SCT.Present
            findings.append(PriorFinding(key, float(probs[0].value) if probs else 0.0, present))
            texts = {
                i.ConceptNameCodeSequence[0].CodeValue: str(i.TextValue)
                for i in g[0].ContentSequence
                if i.ValueType == "TEXT"
            }
            name, version = texts.get("111001", name), texts.get("111003", version)
        if not findings:
            raise ValueError(f"SR {ds.SOPInstanceUID}: got no measurement group of family {family!r}")
        ref = InstanceRef(
            str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPClassUID), str(ds.SOPInstanceUID)
        )
        return cls(
            str(ds.StudyInstanceUID),
            str(ds.get("StudyDate", "") or ""),
            family,
            name,
            version,
            source,
            tuple(findings),
            ref,
        )


@dataclass(frozen=True, slots=True)
class FindingChange:
    """The interval change of one finding."""

    key: str
    change: IntervalChange
    probability: float
    prior_probability: float | None
    size_mm: float | None = None
    prior_size_mm: float | None = None

    def describe(self) -> str:
        """In words, for the SR (TEXT "Description of Change").

        >>> FindingChange("nodule", IntervalChange.NEW, 0.8, 0.1).describe()
        'new: probability 0.10 -> 0.80 (+0.70)'
        """
        if self.prior_probability is None:
            return f"not assessed in the prior result; probability now {self.probability:.2f}"
        delta = self.probability - self.prior_probability
        text = f"{self.change}: probability {self.prior_probability:.2f} -> {self.probability:.2f} ({delta:+.2f})"
        if self.size_mm is not None and self.prior_size_mm is not None:
            text += (
                f"; size {self.prior_size_mm:.1f} -> {self.size_mm:.1f} mm "
                f"({self.size_mm - self.prior_size_mm:+.1f} mm)"
            )
        return text


def interval_changes(
    current: Prediction, prior: PriorResult, probability_change: float, size_change_mm: float
) -> tuple[FindingChange, ...]:
    """Compare every finding of ``current`` with ``prior`` (rules in the module docstring).

    >>> from core.records import Finding
    >>> from core.types import CodedTerm
    >>> t = CodedTerm("1", "SCT", "x")
    >>> cur = Prediction("f", "m", "1", (Finding("a", t, 0.9, 0.5),), ())
    >>> old = PriorResult("s", "", "f", "m", "1", "ledger", (PriorFinding("a", 0.2, False),))
    >>> interval_changes(cur, old, 0.15, 2.0)[0].change
    <IntervalChange.NEW: 'new'>
    """
    before = {f.key: f for f in prior.findings}
    out = []
    for f in current.findings:
        p = before.get(f.key)
        if p is None:
            out.append(FindingChange(f.key, IntervalChange.NOT_ASSESSED, f.probability, None, f.size_mm))
            continue
        out.append(
            FindingChange(
                f.key,
                _change(f.present, f.probability, f.size_mm, p, probability_change, size_change_mm),
                f.probability,
                p.probability,
                f.size_mm,
                p.size_mm,
            )
        )
    return tuple(out)


def _change(
    present: bool,
    probability: float,
    size_mm: float | None,
    prior: PriorFinding,
    probability_change: float,
    size_change_mm: float,
) -> IntervalChange:
    if present and not prior.present:
        return IntervalChange.NEW
    if prior.present and not present:
        return IntervalChange.RESOLVED
    delta = probability - prior.probability
    if delta >= probability_change:
        return IntervalChange.INCREASED
    if delta <= -probability_change:
        return IntervalChange.DECREASED
    if size_mm is not None and prior.size_mm is not None:
        if size_mm - prior.size_mm >= size_change_mm:
            return IntervalChange.INCREASED
        if prior.size_mm - size_mm >= size_change_mm:
            return IntervalChange.DECREASED
    return IntervalChange.UNCHANGED


class ComparisonStatus(enum.StrEnum):
    """What the SR says about the comparison with a prior."""

    COMPARED = "compared"
    """Interval change per finding against the named prior study's AI result."""
    NO_PRIOR_RESULT = "no_prior_result"
    """A prior study was found and named, but no AI result of this family exists for it."""
    NO_PRIOR = "no_prior"
    """The PACS holds no eligible prior study."""
    UNAVAILABLE = "unavailable"
    """The PACS could not be queried: priors were not available."""
    NOT_LOOKED_UP = "not_looked_up"
    """Prior linking is switched off (or did not run for this job)."""


@dataclass(frozen=True, slots=True)
class Comparison:
    """Everything the SR states about priors for one model family's result."""

    status: ComparisonStatus
    reason: str
    prior_study_uid: str = ""
    prior_study_date: str = ""
    prior_description: str = ""
    prior_result: PriorResult | None = None
    changes: tuple[FindingChange, ...] = ()
    evidence: tuple[InstanceRef, ...] = ()

    @property
    def done(self) -> bool:
        """Whether a comparison was made (TID 1500 "Comparison with Prior Study Done")."""
        return self.status is ComparisonStatus.COMPARED

    def summary(self) -> str:
        """One paragraph for the SR (TEXT "Prior Procedure Descriptions")."""
        if not self.prior_study_uid:
            return self.reason
        date = self.prior_study_date or "unknown date"
        text = f"Prior study {self.prior_study_uid} of {date}"
        if self.prior_description:
            text += f" ({self.prior_description})"
        if self.prior_result is not None:
            r = self.prior_result
            origin = {
                "model": "this model run on the retrieved prior images",
                "ledger": "our earlier SR",
                "pacs": "our earlier SR found at the PACS",
            }
            text += (
                f"; compared with the AI result of {r.model_name} {r.model_version} ({origin.get(r.source, r.source)})"
            )
        return f"{text}. {self.reason}".strip()


_STATUS = {
    PriorStatus.UNAVAILABLE: ComparisonStatus.UNAVAILABLE,
    PriorStatus.NONE_FOUND: ComparisonStatus.NO_PRIOR,
    PriorStatus.DISABLED: ComparisonStatus.NOT_LOOKED_UP,
    PriorStatus.NOT_LOOKED_UP: ComparisonStatus.NOT_LOOKED_UP,
}


def comparison_for(
    priors: PriorLink | None,
    current: Prediction,
    prior_prediction: Prediction | None,
    probability_change: float,
    size_change_mm: float,
    *,
    current_study_date: str = "",
    current_study_time: str = "",
) -> Comparison:
    """Build the comparison of one family's result from the job's prior link.

    Args:
        priors: What the prior linker found (``None``: it did not run for this job).
        current: The current prediction.
        prior_prediction: The same model's prediction on the retrieved prior images, if any.
        probability_change: Threshold for up / down.
        size_change_mm: Threshold for size change.
        current_study_date: Study Date of the current study; when given, a linked study that
            is not provably earlier (``core.priors.is_earlier``) is never compared (issue 18).
        current_study_time: Study Time of the current study (orders studies of one day).

    Returns:
        What the SR states.
    """
    if priors is None:
        return Comparison(
            ComparisonStatus.NOT_LOOKED_UP, _plain_reason(PriorStatus.NOT_LOOKED_UP, "prior linking did not run")
        )
    if priors.status is not PriorStatus.FOUND or priors.study is None:
        status = priors.status if priors.status is not PriorStatus.FOUND else PriorStatus.NONE_FOUND
        return Comparison(_STATUS[status], _plain_reason(status, priors.reason))
    study = priors.study
    when = (study.study_date, study.study_time)
    if current_study_date and not is_earlier(*when, current_study_date, current_study_time):
        return Comparison(
            ComparisonStatus.NO_PRIOR,
            f"The linked study of {when[0] or 'unknown date'} is not earlier than this study; not compared.",
        )
    evidence = tuple(priors.evidence)
    if prior_prediction is not None:
        result: PriorResult | None = PriorResult.from_prediction(
            prior_prediction, study.study_uid, study.study_date, "model"
        )
    else:
        result = priors.result(current.family)
    base = dict(
        prior_study_uid=study.study_uid,
        prior_study_date=study.study_date,
        prior_description=" ".join(filter(None, [",".join(study.modalities), study.description])),
    )
    if result is None:
        return Comparison(
            ComparisonStatus.NO_PRIOR_RESULT,
            f"No earlier AI result of {current.family} for this prior; not compared.",
            evidence=evidence,
            **base,
        )
    if result.sr is not None:
        evidence += (result.sr,)
    changes = interval_changes(current, result, probability_change, size_change_mm)
    return Comparison(
        ComparisonStatus.COMPARED,
        "Interval change is stated per finding.",
        prior_result=result,
        changes=changes,
        evidence=evidence,
        **base,
    )


def _plain_reason(status: PriorStatus, reason: str) -> str:
    lead = {
        PriorStatus.UNAVAILABLE: "Priors were not available: the PACS could not be queried",
        PriorStatus.NONE_FOUND: "No prior study was found",
        PriorStatus.DISABLED: "Prior studies were not looked up",
        PriorStatus.NOT_LOOKED_UP: "Prior studies were not looked up",
    }[status]
    return f"{lead} ({reason})." if reason else f"{lead}."
