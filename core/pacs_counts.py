"""PACS instance counts as completion evidence, with hysteresis.

A Study Root C-FIND answers Number of Study Related Instances (0020,1208) at STUDY level and
Number of Series Related Instances (0020,1209) at SERIES level (PS3.4 C.6.2.1.2, optional return
keys; Orthanc answers both). ``judge`` compares one answer with what we hold.

One matching answer is not enough (issue 18). A PACS that forwards each instance as it stores
it (Orthanc ``OnStoredInstance``, the most common auto-routing rule) holds exactly what we hold
after every slice, so its counts "match" again and again while a scanner is still sending.
``read_counts`` therefore says ``SETTLED`` only when the answers matched, with the same counts,
across a settle window during which nothing arrived (our holdings did not change): a run of
matching answers from ``since`` to at least ``since + settle_s``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

__all__ = [
    "CountObservation",
    "CountsReading",
    "CountsState",
    "PacsCounts",
    "Verdict",
    "judge",
    "read_counts",
]


class Verdict(enum.StrEnum):
    """What one PACS answer says about the instances we hold."""

    MATCH = "match"
    """The counts equal ours."""
    MORE_EXPECTED = "more_expected"
    """The PACS holds instances we do not have (yet)."""
    CANNOT_TELL = "cannot_tell"
    """Unknown study, missing counts, the PACS holds fewer than we do, or it was unreachable."""


@dataclass(frozen=True, slots=True)
class PacsCounts:
    """The PACS's answer for one study.

    Attributes:
        known: Whether the PACS has the study at all.
        study_count: Number of Study Related Instances, if answered.
        series: Number of Series Related Instances by Series Instance UID (``None``: the PACS
            listed the series without a count).
    """

    known: bool
    study_count: int | None = None
    series: Mapping[str, int | None] = field(default_factory=dict)


def judge(received: Mapping[str, int], counts: PacsCounts, own_series: Iterable[str], scope: str) -> Verdict:
    """Compare what we hold with one PACS answer.

    Args:
        received: Instances we hold, by series.
        counts: The PACS's answer.
        own_series: Series we wrote into the study ourselves (AI results); not counted.
        scope: ``"study"`` (every series the PACS holds) or ``"series"`` (only ours).

    Returns:
        The verdict.

    >>> judge({"s1": 2}, PacsCounts(True, 2, {"s1": 2}), (), "study")
    <Verdict.MATCH: 'match'>
    >>> judge({"s1": 1}, PacsCounts(True, 2, {"s1": 2}), (), "study")
    <Verdict.MORE_EXPECTED: 'more_expected'>
    """
    if not counts.known:
        return Verdict.CANNOT_TELL
    own = set(own_series)
    pacs = {s: n for s, n in counts.series.items() if s not in own}
    if scope == "series":
        pacs = {s: pacs.get(s) for s in received}
    elif not pacs:
        return _judge_total(received, counts.study_count)
    if any(n is None for n in pacs.values()) or set(received) - set(pacs):
        return Verdict.CANNOT_TELL
    expected = {s: int(n or 0) for s, n in pacs.items()}
    if any(received.get(s, 0) > n for s, n in expected.items()):
        return Verdict.CANNOT_TELL
    if all(received.get(s, 0) == n for s, n in expected.items()):
        return Verdict.MATCH
    return Verdict.MORE_EXPECTED


def _judge_total(received: Mapping[str, int], study_count: int | None) -> Verdict:
    """Judge on the study count alone (the PACS listed no series)."""
    total = sum(received.values())
    if study_count is None or study_count < total:
        return Verdict.CANNOT_TELL
    return Verdict.MATCH if study_count == total else Verdict.MORE_EXPECTED


@dataclass(frozen=True, slots=True)
class CountObservation:
    """One count query: the PACS's answer (``None``: unreachable) and what we held then.

    Attributes:
        asked_at: When the query was sent.
        counts: The answer.
        received_then: Instances we held, by series, when the query was sent.
    """

    asked_at: float
    counts: PacsCounts | None
    received_then: Mapping[str, int]


class CountsState(enum.StrEnum):
    """What the count answers of one study say, read with hysteresis."""

    NO_ANSWER = "no_answer"
    """No answer since our holdings last changed: a (confirming) query is due."""
    CANNOT_TELL = "cannot_tell"
    """The latest answer cannot tell (``Verdict.CANNOT_TELL``); the quiet period decides."""
    MORE_EXPECTED = "more_expected"
    """The PACS holds instances we lack."""
    UNSETTLED = "unsettled"
    """The counts match, but have not yet held for the whole settle window."""
    SETTLED = "settled"
    """The counts matched, unchanged and with no arrival in between, across the settle window."""


@dataclass(frozen=True, slots=True)
class CountsReading:
    """The hysteresis reading of a study's count answers.

    Attributes:
        state: What the answers say.
        since: ``UNSETTLED`` / ``SETTLED``: when the run of matching answers began.
        settles_at: ``UNSETTLED`` / ``SETTLED``: ``since + settle_s``; ask again then.
        missing: ``MORE_EXPECTED``: how many more instances the PACS holds than we do.
    """

    state: CountsState
    since: float = 0.0
    settles_at: float = 0.0
    missing: int = 0


def _fresh(obs: CountObservation, received: Mapping[str, int], last_instance_at: float) -> bool:
    """Whether nothing arrived since ``obs`` was asked."""
    return obs.asked_at >= last_instance_at and dict(obs.received_then) == dict(received)


def read_counts(
    observations: Sequence[CountObservation],
    received: Mapping[str, int],
    last_instance_at: float,
    own_series: Iterable[str],
    scope: str,
    settle_s: float,
) -> CountsReading:
    """Read a study's count answers (oldest first) with hysteresis.

    Args:
        observations: The count queries of the study, oldest first.
        received: Instances we hold now, by series.
        last_instance_at: When our latest instance arrived.
        own_series: Our own result series (not counted).
        scope: ``"study"`` or ``"series"`` (see ``judge``).
        settle_s: How long matching counts must hold; ``0`` trusts one fresh match.

    Returns:
        The reading.

    >>> seen = {"a": 3}
    >>> obs = [CountObservation(t, PacsCounts(True, 3, {"a": 3}), seen) for t in (10.0, 14.0)]
    >>> read_counts(obs[:1], seen, 9.9, (), "study", 5.0).state
    <CountsState.UNSETTLED: 'unsettled'>
    >>> read_counts(obs, seen, 9.9, (), "study", 4.0).state
    <CountsState.SETTLED: 'settled'>
    """
    if not observations or observations[-1].counts is None:
        return CountsReading(CountsState.NO_ANSWER if not observations else CountsState.CANNOT_TELL)
    latest = observations[-1]
    assert latest.counts is not None
    own = tuple(own_series)
    verdict = judge(received, latest.counts, own, scope)
    if verdict is Verdict.MORE_EXPECTED:
        return CountsReading(CountsState.MORE_EXPECTED, missing=_missing(received, latest.counts, own, scope))
    if not _fresh(latest, received, last_instance_at):
        return CountsReading(CountsState.NO_ANSWER)  # we hold more than when it answered
    if verdict is Verdict.CANNOT_TELL:
        return CountsReading(CountsState.CANNOT_TELL)
    since = latest.asked_at
    for obs in reversed(observations[:-1]):
        if obs.counts != latest.counts or not _fresh(obs, received, last_instance_at):
            break
        since = obs.asked_at
    state = CountsState.SETTLED if latest.asked_at >= since + settle_s else CountsState.UNSETTLED
    return CountsReading(state, since, since + settle_s)


def _missing(received: Mapping[str, int], counts: PacsCounts, own: Iterable[str], scope: str) -> int:
    """How many more instances the PACS holds than we do (own series left out)."""
    own_set = set(own)
    listed = {
        s: int(n or 0) for s, n in counts.series.items() if s not in own_set and (scope != "series" or s in received)
    }
    total = sum(listed.values()) if listed else int(counts.study_count or 0)
    return max(0, total - sum(received.values()))
