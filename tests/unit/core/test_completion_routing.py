"""The routing table of issue 18, replayed against ``core.completeness.decide``.

A PACS forwards each instance to us as it stores it (Orthanc ``OnStoredInstance``), so its
counts equal ours after every slice. The assembler polls every 0.05 s, asks the PACS whenever
``decide`` says a count could change the answer, and completes the study when ``decide`` says
so; an instance after completion opens a new version of the study. Goal: one completion (one SR
version) per study in every row, exactly one more only for an instance after the final report.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from core.completeness import ReceivingStudy, StudyEvidence, decide
from core.config import AssemblyConfig
from core.mpps import PerformedSeries, ProcedureStep, StepStatus
from core.pacs_counts import CountObservation, PacsCounts
from core.sources import CompletedStudy, CompletenessPolicy, CompletionRule, SenderStanding

AE = "ORTHANC"
STUDY = "1.2.3"
TICK = 0.05


@dataclass
class Replay:
    """One study sent through per-instance forwarding, decided tick by tick."""

    policy: CompletenessPolicy
    standing: SenderStanding | None = None
    completions: list[tuple[float, CompletionRule]] = field(default_factory=list)
    tightened: list[object] = field(default_factory=list)
    queries: int = 0

    def run(self, arrivals: list[tuple[float, str]], steps=(), until: float | None = None) -> None:
        held: dict[str, list[str]] = {}
        observations: list[CountObservation] = []
        receiving, last = False, 0.0
        pending = sorted(arrivals)
        end = until if until is not None else pending[-1][0] + 200.0
        t = 0.0
        while t <= end:
            while pending and pending[0][0] <= t:
                at, series = pending.pop(0)
                held.setdefault(series, []).append(f"{series}.{len(held.get(series, [])) + 1}")
                if not receiving and self.completions:
                    self._late(at)
                receiving, last = True, at
            if receiving and self._decide(held, last, observations, steps, t):
                receiving = False
            t = round(t + TICK, 6)

    def _evidence(self, held, last, observations, steps):
        received = {s: len(u) for s, u in held.items()}
        uids = frozenset(u for us in held.values() for u in us)
        study = ReceivingStudy(1, STUDY, AE, last, received, ("CT",), uids)
        return StudyEvidence(study, steps=tuple(steps), counts=tuple(observations), standing=self.standing)

    def _decide(self, held, last, observations, steps, now) -> bool:
        decision = decide(self._evidence(held, last, observations, steps), self.policy, now)
        if decision.query_pacs:  # the PACS stored everything we hold, and nothing more
            received = {s: len(u) for s, u in held.items()}
            observations.append(
                CountObservation(now, PacsCounts(True, sum(received.values()), dict(received)), received)
            )
            self.queries += 1
            decision = decide(self._evidence(held, last, observations, steps), self.policy, now)
        if decision.complete:
            self.completions.append((now, decision.rule))
        return decision.complete

    def _late(self, at: float) -> None:
        done_at, rule = self.completions[-1]
        verdict = self.policy.classify_arrival(CompletedStudy(STUDY, AE, rule, done_at), at, self.standing, ["CT"])
        self.standing = verdict.standing
        if verdict.tightened:
            self.tightened.append(verdict.tightened)


def counts_policy(**kw) -> CompletenessPolicy:
    return CompletenessPolicy(AssemblyConfig(completion="pacs_counts", **kw))


def slices(n: int, every: float, series: str = "s1", start: float = 0.0) -> list[tuple[float, str]]:
    return [(start + i * every, series) for i in range(n)]


ROWS = {
    "60 slices at once": slices(60, 0.001),
    "one slice every 0.1 s": slices(60, 0.1),
    "2 series in 2 associations, 2 s apart": slices(30, 0.01, "s1") + slices(30, 0.01, "s2", 0.3 + 2.0),
    "3 series, 1 s and 3 s apart": (
        slices(20, 0.01, "s1") + slices(20, 0.01, "s2", 0.2 + 1.0) + slices(20, 0.01, "s3", 1.4 + 3.0)
    ),
}


@pytest.mark.parametrize("row", list(ROWS))
@pytest.mark.parametrize("completion", ["pacs_counts", "quiet_period"])
def test_one_completion_per_study_in_every_row_of_the_routing_table(row, completion):
    replay = Replay(CompletenessPolicy(AssemblyConfig(completion=completion)))
    replay.run(ROWS[row])
    assert len(replay.completions) == 1, replay.completions
    last = ROWS[row][-1][0]
    done_at, rule = replay.completions[0]
    if completion == "pacs_counts":
        assert rule is CompletionRule.PACS_COUNTS and done_at - last == pytest.approx(6.0, abs=0.1)  # lull + settle
        assert replay.queries <= 4 + int(last / 5.0)  # first, each lull, settle end, every requery_s
    else:
        assert rule is CompletionRule.QUIET_PERIOD and done_at - last == pytest.approx(10.0, abs=0.1)  # CT


def test_exactly_one_more_completion_for_an_instance_after_the_final_report():
    replay = Replay(counts_policy())
    replay.run(slices(60, 0.1) + [(900.0, "s9")], until=1000.0)
    assert [rule for _, rule in replay.completions] == [CompletionRule.PACS_COUNTS] * 2
    assert replay.tightened == []  # 900 s later is a late instance, not an early completion


def test_a_sender_whose_counts_match_early_is_tightened_once_then_completes_once():
    gap = [*slices(20, 0.01, "s1"), *slices(20, 0.01, "s2", 10.0)]  # a series 10 s after the first
    replay = Replay(counts_policy())
    replay.run(gap)
    assert len(replay.completions) == 2  # the first study of this sender is split once ...
    [event] = replay.tightened
    assert (event.calling_ae, event.strictness, event.settle_s) == (AE, 1, 20.0)
    assert event.audit_detail()["rule"] == "pacs_counts"
    again = Replay(counts_policy(), standing=replay.standing)
    again.run(gap)
    assert len(again.completions) == 1 and again.tightened == []  # ... and its next studies are not


def test_with_mpps_the_study_completes_as_soon_as_the_listed_instances_are_held():
    arrivals = slices(60, 0.1)
    listed = tuple(f"s1.{i}" for i in range(1, 61))
    step = ProcedureStep("9.1", StepStatus.COMPLETED, (STUDY,), (PerformedSeries("s1", listed),))
    replay = Replay(counts_policy())
    replay.run(arrivals, steps=[step])
    [(done_at, rule)] = replay.completions
    assert rule is CompletionRule.MPPS and done_at - arrivals[-1][0] <= TICK + 1e-9
