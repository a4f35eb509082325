"""Fakes of core.ports for unit tests."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class FakeClock:
    """A clock that only moves when told to."""

    t: float = 1_000_000.0

    def now(self) -> float:
        """Return the current fake time."""
        return self.t

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        self.t += seconds


@dataclass
class FakePacs:
    """A PACS that answers C-FIND from lists (``core.ports.PacsQuery``); ``down`` makes it
    unreachable. ``calls`` records what was asked. ``match_issuer=False`` plays a PACS that
    ignores Issuer of Patient ID as a matching key (and returns other issuers' studies)."""

    studies: list = field(default_factory=list)
    series: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)
    down: bool = False
    calls: list = field(default_factory=list)
    match_issuer: bool = True

    def _answer(self, call):
        self.calls.append(call)
        if self.down:
            from core.errors import DependencyUnavailable

            raise DependencyUnavailable("pacs", "connection refused (fake)")

    def find_studies(self, query):
        """STUDY level: match Patient ID, issuer (if both have one) and modalities."""
        self._answer(("studies", query))
        return [
            s
            for s in self.studies
            if s.identity.patient_id == query.patient_id
            and not (self.match_issuer and query.issuer and s.identity.issuer and query.issuer != s.identity.issuer)
            and (not query.modalities or set(query.modalities) & set(s.modalities))
        ]

    def find_series(self, study_uid):
        """SERIES level."""
        self._answer(("series", study_uid))
        return list(self.series.get(study_uid, []))

    def study_counts(self, study_uid):
        """Instance counts."""
        self._answer(("counts", study_uid))
        from core.completeness import PacsCounts

        return self.counts.get(study_uid, PacsCounts(known=False))
