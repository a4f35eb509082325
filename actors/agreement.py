"""Accuracy monitoring over time (issue 12): how often readers agree with each model version.

Each round (a loop of the auditor, one per site) computes the success measures of the recent
months from the ledger (``Ledger.success``), publishes each model version's agreement rate of
its latest month with reviews (``pacsai_model_agreement_rate``), and raises an alert for each
model version and month below ``clinical.agreement_floor`` over at least
``clinical.agreement_min_reviews`` reviewed findings (``core.success_metrics.agreement_alerts``):
an ``agreement_below_floor`` audit event and a log line, once per model version and month
however many rounds or restarts see it (the ledger's ``agreement_alerts`` table remembers).
"""

from __future__ import annotations

import logging

from actors.adapters.metrics import recorder
from core.config import ClinicalConfig
from core.ports import Clock
from core.success_metrics import agreement_alerts
from state.ledger import Ledger
from state.ledger.success import months_back

__all__ = ["AgreementWatch", "RECENT_MONTHS"]

logger = logging.getLogger(__name__)

RECENT_MONTHS = 3
"""Months each round looks at, this one included: late reviews can still move a recent month."""


class AgreementWatch:
    """One round of agreement monitoring (``round``), for a ``Loop``."""

    def __init__(self, ledger: Ledger, clinical: ClinicalConfig, clock: Clock, actor: str = "stage:auditor") -> None:
        self._ledger = ledger
        self._floor = clinical.agreement_floor
        self._min_reviews = clinical.agreement_min_reviews
        self._clock = clock
        self._actor = actor

    def round(self) -> int:
        """Publish the rates; record and log the new alerts; return how many were new."""
        now = self._clock.now()
        rows = self._ledger.success.monthly(months_back(now, RECENT_MONTHS), with_health=False)
        latest: dict[str, float] = {}
        for r in rows:  # oldest month first per model version: the last one with a rate wins
            if r.agreement_rate is not None:
                latest[r.model_version] = r.agreement_rate
        for version, rate in latest.items():
            recorder.set("pacsai_model_agreement_rate", rate, model_version=version)
        new = self._ledger.success.record_alerts(
            agreement_alerts(rows, self._floor, self._min_reviews), self._actor, now
        )
        for a in new:
            logger.warning(
                "agreement below floor: %s in %s agreed %.1f%% of %d reviewed findings (floor %.1f%%)",
                a.model_version,
                a.month,
                100 * a.agreement_rate,
                a.reviews,
                100 * a.floor,
            )
        return len(new)
