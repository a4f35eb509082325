"""``GET /api/v1/clinical/success``: the success measures per model version and month, and the
months whose agreement rate fell below the floor (issue 12; scope ``read``).

Computed from the ledger on each request (``Ledger.success``, ``core.success_metrics``), as the
page's plots and ``pacsai metrics export`` show them. Model versions, months, counts, rates and
seconds only: nothing names a patient or a study, so no alert policy applies.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from api.security import Reader, context_of
from core.success_metrics import agreement_alerts
from state.ledger.success import months_back

__all__ = ["AgreementAlertOut", "MeasuresOut", "SuccessOut", "router"]

router = APIRouter()
"""Mounted by ``api.app`` at ``/api/v1/clinical`` (tag ``clinical``)."""


class MeasuresOut(BaseModel):
    """One model version in one month (``core.success_metrics.MonthlyMeasures``); a rate that
    measured nothing is null."""

    model_version: str = Field(description="family@version")
    month: str = Field(description="YYYY-MM (UTC) of the results' SRs")
    studies_with_results: int
    utilisation: float | None = Field(description="Studies whose result a reader opened / studies with a result")
    findings_reviewed: int
    false_positive_rate: float | None = Field(description="Reviewed AI-positive findings the reader rejected")
    critical_sensitivity: float | None = Field(description="Critical findings present per the reader that the AI found")
    agreement_rate: float | None = Field(description="Reviewed findings the reader agreed with")
    turnaround_archive_to_sr_p50_s: float | None
    turnaround_archive_to_sr_p90_s: float | None
    turnaround_sr_to_review_p50_s: float | None
    uptime: float | None = Field(description="Share of inference attempts the version answered")


class AgreementAlertOut(BaseModel):
    """A model version and month below the agreement floor (``clinical.agreement_floor``)."""

    model_version: str
    month: str
    agreement_rate: float
    reviews: int
    floor: float


class SuccessOut(BaseModel):
    """The measures, oldest month first per model version, and the agreement alerts."""

    rows: list[MeasuresOut]
    alerts: list[AgreementAlertOut]


@router.get(
    "/success",
    summary="Success measures per model version and month, and agreement alerts (scope read)",
    response_model=SuccessOut,
)
def success(
    request: Request,
    _caller: Reader,
    months: Annotated[int, Query(ge=1, le=120, description="Months back, this one included")] = 12,
) -> SuccessOut:
    ctx = context_of(request)
    rows = ctx.ledger.success.monthly(months_back(time.time(), months))
    clinical = ctx.cfg.clinical
    alerts = agreement_alerts(rows, clinical.agreement_floor, clinical.agreement_min_reviews)
    return SuccessOut(
        rows=[MeasuresOut(**asdict(r)) for r in rows], alerts=[AgreementAlertOut(**asdict(a)) for a in alerts]
    )
