"""Versions of a model family side by side: which version a study meets, shadow comparisons,
the model card (issue 17).

A family's config entry is its own version; ``ModelEntry.versions`` deploys others beside it,
each with the ``traffic`` it gets while it is not live. Which version is live, and which are
halted, is runtime state in the ledger (``state.ledger.models``), changed by ``pacsai models
promote|rollback``. Everything here is pure: the inference stage reads the state afresh per job
and asks ``assign`` which version's result is *the* result and which versions run beside it
in shadow.

- **Live**: the ledger's live version if it is still configured, else the family entry's own.
- **Rule** (``traffic.mode: rule``): studies of the listed modalities or sending AE titles meet
  that version (the first such version in version order).
- **Canary** (``traffic.mode: canary``): ``percent`` of the studies, chosen by a keyed hash of
  the family and the Study Instance UID (``canary_bucket``), so a reprocessed study meets the
  same version. Canary versions take consecutive ranges of the hash in version order, so two
  canaries never share a study; a halted canary's range goes back to the live version.
- **Shadow** (``traffic.mode: shadow``): every study, beside the version whose result is used.
  A shadow result is stored and compared (``compare``, ``summarize``) but never reaches the
  PACS, the EHR or a reader.
- **Off**, **halted** (rolled back from, or superseded by a promotion): no study.

>>> from core.config import ModelEntry
>>> entry = ModelEntry.model_validate({
...     "name": "cxr", "version": "1", "weights": "w.pt",
...     "input": {"spatial_size": [8, 8], "channels": 1}, "findings": [{"key": "edema"}],
...     "versions": {"2": {"traffic": {"mode": "shadow"}}}})
>>> a = assign("chest_xray", entry, RolloutState("chest_xray"), StudyFacts("1.2.3", frozenset({"CR"})))
>>> a.version, a.reason.value, a.shadows, version_app("chest_xray", entry, "2")
('1', 'live', ('2',), 'model-chest_xray--2')
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

from core.config import ModelCard, ModelEntry, TrafficConfig, app_name
from core.records import Prediction

__all__ = [
    "Assignment",
    "AssignmentReason",
    "FindingAgreement",
    "FindingComparison",
    "Halt",
    "HaltCause",
    "LiveSetting",
    "ModelCardReport",
    "ObservedMetrics",
    "READER_AGREEMENT_NOTE",
    "RolloutState",
    "ShadowComparison",
    "ShadowSummary",
    "StudyFacts",
    "VersionCard",
    "assign",
    "build_card",
    "canary_bucket",
    "compare",
    "live_version",
    "rollback_halts",
    "summarize",
    "traffic_now",
    "version_app",
]

READER_AGREEMENT_NOTE = "not available: no per-finding reader review yet (issue 12)"
"""What the model card says of agreement with readers until readers review findings."""

_CANARY_KEY = b"pacsai-canary-v1:"
"""Domain of the canary hash: a new key would move every study to another bucket."""


class HaltCause(enum.StrEnum):
    """Why a version gets no studies although its config gives it traffic."""

    ROLLED_BACK = "rolled_back"
    """An operator rolled back from it (it was live, or a canary / rule candidate)."""
    SUPERSEDED = "superseded"
    """It was live and another version was promoted over it."""


@dataclass(frozen=True, slots=True)
class LiveSetting:
    """The live version as an operator last set it (promote or rollback)."""

    version: str
    actor: str
    at: float
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Halt:
    """A version halted: who, when, why; it gets no studies until promoted or rolled back to."""

    version: str
    cause: HaltCause
    actor: str
    at: float
    reason: str = ""


@dataclass(frozen=True, slots=True)
class RolloutState:
    """A family's runtime rollout state as the ledger holds it (empty: nothing set yet)."""

    family: str
    live: LiveSetting | None = None
    halted: tuple[Halt, ...] = ()

    def halt_of(self, version: str) -> Halt | None:
        """The halt of ``version``, if it is halted."""
        return next((h for h in self.halted if h.version == version), None)


@dataclass(frozen=True, slots=True)
class StudyFacts:
    """What the traffic rules look at: the study, its modalities and who sent it."""

    study_uid: str
    modalities: frozenset[str] = frozenset()
    calling_aes: frozenset[str] = frozenset()


class AssignmentReason(enum.StrEnum):
    """Why a study meets the version whose result is used."""

    LIVE = "live"
    """The live version."""
    RULE = "rule"
    """A rule candidate: the study's modality or sending AE is in the version's rule."""
    CANARY = "canary"
    """A canary candidate: the study's hash fell in the version's share."""


@dataclass(frozen=True, slots=True)
class Assignment:
    """Which versions of a family a study meets.

    Attributes:
        family: The model family.
        version: The version whose result is the result (SR, PACS, EHR).
        live: The live version.
        reason: Why ``version`` (live, or a rule or canary candidate).
        shadows: Versions run beside it whose results are only stored and compared.
    """

    family: str
    version: str
    live: str
    reason: AssignmentReason = AssignmentReason.LIVE
    shadows: tuple[str, ...] = ()


def live_version(entry: ModelEntry, state: RolloutState) -> str:
    """The live version: the ledger's if still configured, else the family entry's own."""
    if state.live is not None and state.live.version in entry.all_versions():
        return state.live.version
    return entry.version


def version_app(family: str, entry: ModelEntry, version: str) -> str:
    """The Serve application of one version: ``model-<family>`` for the family entry's own."""
    return app_name(family) if version == entry.version else app_name(family, version)


def canary_bucket(family: str, study_uid: str) -> float:
    """Where a study falls in ``[0, 100)`` for the family's canaries (stable per study).

    HMAC-SHA256 keyed by the family, so families split independently. The split needs stability,
    not secrecy, so the key is not the site's secret (a Study Instance UID is not PHI).

    >>> 0 <= canary_bucket("chest_xray", "1.2.3") < 100
    True
    >>> canary_bucket("chest_xray", "1.2.3") == canary_bucket("chest_xray", "1.2.3")
    True
    """
    digest = hmac.new(_CANARY_KEY + family.encode(), study_uid.encode(), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100.0


def _rule_matches(traffic: TrafficConfig, study: StudyFacts) -> bool:
    modalities = {m.upper() for m in traffic.modalities}
    return bool(modalities & {m.upper() for m in study.modalities} or set(traffic.calling_aes) & study.calling_aes)


def assign(family: str, entry: ModelEntry, state: RolloutState, study: StudyFacts) -> Assignment:
    """The versions of ``family`` that ``study`` meets.

    Rules come before canaries; among several, version order (sorted keys) decides. The live
    version's own traffic setting is ignored while it is live; halted versions get nothing.
    """
    live = live_version(entry, state)
    halted = {h.version for h in state.halted}
    others = [(v, e.traffic) for v, e in sorted(entry.all_versions().items()) if v != live]
    chosen, reason = live, AssignmentReason.LIVE
    rule = next((v for v, t in others if t.mode == "rule" and v not in halted and _rule_matches(t, study)), None)
    if rule is not None:
        chosen, reason = rule, AssignmentReason.RULE
    else:
        bucket, lower = canary_bucket(family, study.study_uid), 0.0
        for v, t in others:
            if t.mode != "canary":
                continue
            upper = lower + t.percent
            if lower <= bucket < upper:
                if v not in halted:
                    chosen, reason = v, AssignmentReason.CANARY
                break
            lower = upper
    shadows = tuple(v for v, t in others if t.mode == "shadow" and v not in halted and v != chosen)
    return Assignment(family, chosen, live, reason, shadows)


def rollback_halts(entry: ModelEntry, state: RolloutState, version: str) -> tuple[str, ...]:
    """The versions a rollback to ``version`` halts: the live one; or, when ``version`` is live
    already, the canary and rule candidates beside it that still get studies (empty: nothing to
    roll back from). Shadows are left running: their results never reach anyone.
    """
    live = live_version(entry, state)
    if version != live:
        return (live,)
    return tuple(
        v
        for v, e in sorted(entry.all_versions().items())
        if v != live and e.traffic.mode in ("canary", "rule") and state.halt_of(v) is None
    )


def traffic_now(entry: ModelEntry, state: RolloutState, version: str) -> str:
    """What studies ``version`` gets now, in words (the model card)."""
    halt = state.halt_of(version)
    if version == live_version(entry, state):
        return "live"
    if halt is not None:
        return f"halted ({halt.cause.value})"
    t = entry.all_versions()[version].traffic
    if t.mode == "canary":
        return f"canary {t.percent:g}%"
    if t.mode == "rule":
        parts = [f"modalities {', '.join(t.modalities)}"] if t.modalities else []
        parts += [f"calling AEs {', '.join(t.calling_aes)}"] if t.calling_aes else []
        return f"rule: {'; '.join(parts)}"
    return t.mode


# ------------------------------------------------------------------ shadow comparison
@dataclass(frozen=True, slots=True)
class FindingComparison:
    """One finding as the live and the shadow version saw it."""

    key: str
    live_present: bool
    shadow_present: bool
    live_probability: float
    shadow_probability: float

    @property
    def agree(self) -> bool:
        """Both say present, or both say absent."""
        return self.live_present == self.shadow_present

    @property
    def delta(self) -> float:
        """Shadow probability minus live probability."""
        return self.shadow_probability - self.live_probability


@dataclass(frozen=True, slots=True)
class ShadowComparison:
    """A shadow prediction compared with the live one, finding by finding (shared keys only)."""

    findings: tuple[FindingComparison, ...]
    live_only: tuple[str, ...] = ()
    """Findings only the live version reports."""
    shadow_only: tuple[str, ...] = ()
    """Findings only the shadow version reports."""

    @property
    def agreement(self) -> float | None:
        """Share of shared findings on which both agree (``None``: none shared)."""
        if not self.findings:
            return None
        return sum(f.agree for f in self.findings) / len(self.findings)


def compare(live: Prediction, shadow: Prediction) -> ShadowComparison:
    """Compare a shadow prediction with the live one of the same study.

    >>> from core.records import Finding
    >>> from core.types import CodedTerm
    >>> t = CodedTerm("1", "99X", "x")
    >>> p = lambda v, *fs: Prediction("f", "m", v, tuple(Finding(k, t, pr, 0.5) for k, pr in fs), ())
    >>> c = compare(p("1", ("a", 0.7), ("b", 0.2)), p("2", ("a", 0.4), ("c", 0.9)))
    >>> [(f.key, f.agree, round(f.delta, 2)) for f in c.findings], c.live_only, c.shadow_only
    ([('a', False, -0.3)], ('b',), ('c',))
    """
    shadow_by_key = {f.key: f for f in shadow.findings}
    live_keys = {f.key for f in live.findings}
    findings = tuple(
        FindingComparison(f.key, f.present, s.present, f.probability, s.probability)
        for f in live.findings
        if (s := shadow_by_key.get(f.key)) is not None
    )
    return ShadowComparison(
        findings,
        tuple(f.key for f in live.findings if f.key not in shadow_by_key),
        tuple(f.key for f in shadow.findings if f.key not in live_keys),
    )


@dataclass(frozen=True, slots=True)
class FindingAgreement:
    """One finding over many shadow comparisons."""

    key: str
    n: int
    agreement_rate: float
    mean_abs_delta: float


@dataclass(frozen=True, slots=True)
class ShadowSummary:
    """A shadow version against the live one, over the studies it ran on.

    Attributes:
        family: The model family.
        version: The shadow version.
        n: Studies compared.
        findings: Per shared finding: how often both agreed, the mean absolute probability delta.
        agreement_rate: Over every shared finding of every study (``None``: nothing compared).
        mean_abs_delta: Likewise.
        live_versions: The live versions it was compared against.
    """

    family: str
    version: str
    n: int
    findings: tuple[FindingAgreement, ...] = ()
    agreement_rate: float | None = None
    mean_abs_delta: float | None = None
    live_versions: tuple[str, ...] = ()


def summarize(family: str, version: str, comparisons: Iterable[tuple[str, ShadowComparison]]) -> ShadowSummary:
    """Aggregate ``(live version, comparison)`` pairs of one shadow version.

    >>> c = ShadowComparison((FindingComparison("a", True, False, 0.8, 0.4),))
    >>> s = summarize("f", "2", [("1", c), ("1", ShadowComparison((FindingComparison("a", True, True, 0.8, 0.6),)))])
    >>> s.n, s.findings[0].agreement_rate, round(s.findings[0].mean_abs_delta, 2), s.live_versions
    (2, 0.5, 0.3, ('1',))
    """
    n, lives = 0, set()
    per: dict[str, list[FindingComparison]] = {}
    for live, comparison in comparisons:
        n += 1
        lives.add(live)
        for f in comparison.findings:
            per.setdefault(f.key, []).append(f)
    every = [f for fs in per.values() for f in fs]
    findings = tuple(
        FindingAgreement(k, len(fs), sum(f.agree for f in fs) / len(fs), sum(abs(f.delta) for f in fs) / len(fs))
        for k, fs in sorted(per.items())
    )
    if not every:
        return ShadowSummary(family, version, n, findings, live_versions=tuple(sorted(lives)))
    return ShadowSummary(
        family,
        version,
        n,
        findings,
        sum(f.agree for f in every) / len(every),
        sum(abs(f.delta) for f in every) / len(every),
        tuple(sorted(lives)),
    )


# ------------------------------------------------------------------------ model card
@dataclass(frozen=True, slots=True)
class ObservedMetrics:
    """What this site observed of one version.

    Attributes:
        version: The version.
        studies: Studies with a result of this version (SRs written; superseded ones left out).
        results: Those results (a study re-run after late instances counts each time).
        positive_rate: Share of results with at least one finding present (``None``: none).
        positive_rate_by_finding: Per finding key, the share of results it was present in.
        shadow: Its agreement with the live version while it ran in shadow (``None``: never).
        reader_agreement: Agreement with readers (``None`` until readers review findings).
        reader_agreement_note: Why it is not available.
    """

    version: str
    studies: int = 0
    results: int = 0
    positive_rate: float | None = None
    positive_rate_by_finding: dict[str, float] = field(default_factory=dict)
    shadow: ShadowSummary | None = None
    reader_agreement: float | None = None
    reader_agreement_note: str = READER_AGREEMENT_NOTE


@dataclass(frozen=True, slots=True)
class VersionCard:
    """One version of a family on the model card.

    Attributes:
        version: The version.
        name: Algorithm name (TID 4019).
        application: Its Serve application.
        own: Whether it is the family entry's own version (live unless another was promoted).
        live: Whether it is live now.
        traffic: The traffic its config gives it while it is not live.
        traffic_now: What studies it gets now (``traffic_now``).
        halted: Its halt (who, when, why), if halted.
        deployed: Whether its application is deployed (``None``: Ray not reachable from here).
        card: What its publisher declares (description, intended use, training data,
            performance claims, licence, authors, references).
        observed: What this site observed.
    """

    version: str
    name: str
    application: str
    own: bool
    live: bool
    traffic: TrafficConfig
    traffic_now: str
    halted: Halt | None
    deployed: bool | None
    card: ModelCard
    observed: ObservedMetrics


@dataclass(frozen=True, slots=True)
class ModelCardReport:
    """A family's model card: every version, which is live and who made it so."""

    family: str
    live: str
    live_set: LiveSetting | None
    """The last promote or rollback (``None``: the family entry's own version, never changed)."""
    versions: tuple[VersionCard, ...]


def build_card(
    family: str,
    entry: ModelEntry,
    state: RolloutState,
    observed: Mapping[str, ObservedMetrics],
    deployed: Collection[str] | None,
) -> ModelCardReport:
    """The model card of ``family``: the family entry's version first, then the others in order.

    Args:
        family: The model family.
        entry: Its config entry.
        state: Its rollout state.
        observed: Per version, what the site observed (a version without any is shown empty).
        deployed: The deployed application names (``None``: unknown).
    """
    live = live_version(entry, state)
    versions = [entry.version, *sorted(entry.versions)]
    cards = []
    for v in versions:
        e = entry.all_versions()[v]
        app = version_app(family, entry, v)
        cards.append(
            VersionCard(
                v,
                e.name,
                app,
                v == entry.version,
                v == live,
                e.traffic,
                traffic_now(entry, state, v),
                state.halt_of(v),
                None if deployed is None else app in deployed,
                e.card,
                observed.get(v, ObservedMetrics(v)),
            )
        )
    live_set = state.live if state.live is not None and state.live.version == live else None
    return ModelCardReport(family, live, live_set, tuple(cards))
