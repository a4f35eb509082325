"""REST routes of the IT operations (mounted at ``/api/v1``), over ``api.operations.Operations``.

The same operations as ``pacsai``: status, jobs and their history, dead jobs and replay,
quarantine, AI switches, models (their cards, and which version is live: promote, rollback),
the audit trail. Reads need the ``read`` scope, changes to the pipeline ``operate`` (promote and
rollback included), model deployment ``admin``. Each change is audited by the ledger
with the caller's subject (``token:<name>`` or ``oidc:<sub>``); every request is audited by
``api.app``. Refusals are problem details: 404 for an unknown id, 409 for a state that does not
allow the change, 422 naming the bad field.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from api._ops_models import (
    AiSwitchOut,
    AiSwitchRequest,
    AuditPage,
    AuditVerdict,
    DecisionRequest,
    JobDetailOut,
    JobPage,
    ModelApps,
    ModelCardOut,
    ModelChange,
    QuarantineEntries,
    ReplayOut,
    RolloutOut,
    RolloutRequest,
    StatusOut,
)
from api.operations import LIMIT_MAX, Conflict, InvalidArgument, NotFound, Operations
from api.problems import PROBLEM_JSON, Problem
from api.security import context_of, requires
from core.auth import Principal, Scope
from core.codec import to_jsonable
from core.quarantine import QuarantineState
from core.types import JobState

__all__ = ["router"]

router = APIRouter()

_READ = Annotated[Principal, Depends(requires(Scope.READ))]
_OPERATE = Annotated[Principal, Depends(requires(Scope.OPERATE))]
_ADMIN = Annotated[Principal, Depends(requires(Scope.ADMIN))]

_UID = r"^[0-9]+(\.[0-9]+)*$"
_MODALITY = r"^[A-Za-z0-9_]{1,16}$"
_ID_MAX = 2**63 - 1
_Limit = Annotated[int, Query(ge=1, le=LIMIT_MAX, description=f"Most items to return (1 to {LIMIT_MAX})")]
_Study = Annotated[str | None, Query(max_length=64, pattern=_UID, description="Only this Study Instance UID")]
_JobId = Annotated[int, Path(ge=1, le=_ID_MAX, description="The job's ID")]
_Reference = Annotated[
    str,
    Path(
        max_length=64,
        pattern=r"^([Qq]?[0-9]{1,12}|[0-9]+(\.[0-9]+)+)$",
        description="Q<n>, or a SOP Instance, Series or Study Instance UID (every entry it names)",
    ),
]
_Family = Annotated[
    str, Path(max_length=64, pattern=r"^[A-Za-z0-9_-]+$", description="The model family (a key of `models`)")
]
_Version = Annotated[
    str,
    Path(
        max_length=64,
        pattern=r"^[A-Za-z0-9_+-][A-Za-z0-9._+-]*$",
        description="A configured version of the family (its own `version`, or a key of its `versions`); "
        "a version with other characters is promoted with `pacsai models`",
    ),
]


class _Problem(BaseModel):
    """An RFC 9457 problem detail (documentation only: the handlers in ``api.problems`` answer it)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="urn:pacsai:problem:<kind>")
    title: str
    status: int
    detail: str
    instance: str | None = None


_WHY = {
    400: "The body is not JSON",
    401: "No valid credential",
    403: "The credential lacks the scope",
    404: "No such item",
    409: "Its state does not allow this",
    422: "A parameter or body field is invalid; `errors` names each",
    503: "A dependency (the ledger, or Ray for models) is not available",
}
_PROBLEM_SCHEMA = _Problem.model_json_schema()


def _problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses of these statuses, each an ``application/problem+json`` body."""
    return {
        s: {"description": f"{_WHY[s]} (problem+json)", "content": {PROBLEM_JSON: {"schema": _PROBLEM_SCHEMA}}}
        for s in (401, 403, 422, *statuses)
    }


def _ops(request: Request) -> Operations:
    return context_of(request).operations


@contextmanager
def _answering() -> Iterator[None]:
    """The service layer's refusals as problem details."""
    try:
        yield
    except NotFound as exc:
        raise Problem(404, exc.reason, "not-found") from None
    except Conflict as exc:
        raise Problem(409, exc.reason, "conflict") from None
    except InvalidArgument as exc:
        raise Problem(422, exc.reason, "invalid-request", errors=[{"field": exc.field, "msg": exc.reason}]) from None


class QuarantineStateFilter(StrEnum):
    """Which quarantine entries to list."""

    HELD = "held"
    """Held, waiting for an operator."""
    RELEASED = "released"
    """Released by an operator."""
    DISCARDED = "discarded"
    """Discarded by an operator."""
    ALL = "all"
    """Every entry."""


# ------------------------------------------------------------------------ status
@router.get(
    "/status",
    response_model=StatusOut,
    tags=["status"],
    summary="Jobs, queues, quarantine, stage health",
    responses=_problems(),
)
def get_status(request: Request, principal: _READ) -> dict[str, Any]:
    """What ``pacsai status --json`` prints."""
    report: dict[str, Any] = to_jsonable(_ops(request).status())
    return report


# -------------------------------------------------------------------------- jobs
@router.get("/jobs", response_model=JobPage, tags=["jobs"], summary="Jobs, newest first", responses=_problems())
def list_jobs(
    request: Request,
    principal: _READ,
    state: Annotated[JobState | None, Query(description="Only jobs in this state")] = None,
    study: _Study = None,
    limit: _Limit = 100,
    before: Annotated[int | None, Query(ge=1, le=_ID_MAX, description="Only jobs with a lower ID (next page)")] = None,
) -> JobPage:
    """One page of jobs; pass ``next_before`` as ``before`` for the next."""
    with _answering():
        jobs = _ops(request).jobs(state, study, limit, before)
    return JobPage.of(jobs, limit)


@router.get(
    "/jobs/dead", response_model=JobPage, tags=["jobs"], summary="Dead jobs, newest first", responses=_problems()
)
def list_dead_jobs(
    request: Request,
    principal: _READ,
    limit: _Limit = 100,
    before: Annotated[int | None, Query(ge=1, le=_ID_MAX, description="Only jobs with a lower ID (next page)")] = None,
) -> JobPage:
    """Jobs whose retries are exhausted; ``dead_from`` is where a replay puts each."""
    with _answering():
        jobs = _ops(request).dead_jobs(limit, before)
    return JobPage.of(jobs, limit)


@router.get(
    "/jobs/{job_id}",
    response_model=JobDetailOut,
    tags=["jobs"],
    summary="One job and its history",
    responses=_problems(404),
)
def get_job(job_id: _JobId, request: Request, principal: _READ) -> JobDetailOut:
    """The job and the audit events that name it, oldest first."""
    with _answering():
        detail = _ops(request).job(job_id)
    return JobDetailOut.of(detail)


@router.post(
    "/jobs/{job_id}/replay",
    response_model=ReplayOut,
    tags=["jobs"],
    summary="Replay a dead job",
    responses=_problems(404, 409),
)
def replay_job(job_id: _JobId, request: Request, principal: _OPERATE) -> ReplayOut:
    """Put a dead job back into the state it died in, with a fresh retry budget (audited)."""
    with _answering():
        state = _ops(request).replay(job_id, principal.subject)
    return ReplayOut(job_id=job_id, state=state)


# -------------------------------------------------------------------- quarantine
@router.get(
    "/quarantine",
    response_model=QuarantineEntries,
    tags=["quarantine"],
    summary="Quarantine entries, newest first",
    responses=_problems(),
)
def list_quarantine(
    request: Request,
    principal: _READ,
    state: Annotated[QuarantineStateFilter, Query(description="Entries in this state")] = QuarantineStateFilter.HELD,
    study: _Study = None,
    limit: _Limit = 200,
) -> QuarantineEntries:
    """Held entries by default; ``state=all`` lists every one."""
    chosen = None if state is QuarantineStateFilter.ALL else QuarantineState(state.value)
    with _answering():
        return QuarantineEntries.of(_ops(request).quarantine_list(chosen, study, limit))


@router.get(
    "/quarantine/{reference}",
    response_model=QuarantineEntries,
    tags=["quarantine"],
    summary="The entries an ID or UID names",
    responses=_problems(404),
)
def show_quarantine(reference: _Reference, request: Request, principal: _READ) -> QuarantineEntries:
    """One entry (``Q<n>``), or every entry of an instance, series or study."""
    with _answering():
        return QuarantineEntries.of(_ops(request).quarantine_show(reference))


@router.post(
    "/quarantine/{reference}/release",
    response_model=QuarantineEntries,
    tags=["quarantine"],
    summary="Release held entries",
    responses=_problems(400, 404, 409),
)
def release_quarantine(
    reference: _Reference, body: Annotated[DecisionRequest, Body()], request: Request, principal: _OPERATE
) -> QuarantineEntries:
    """Process them despite their issues: their codes are accepted and their studies reopen (audited)."""
    with _answering():
        return QuarantineEntries.of(_ops(request).quarantine_release(reference, principal.subject, body.reason))


@router.post(
    "/quarantine/{reference}/discard",
    response_model=QuarantineEntries,
    tags=["quarantine"],
    summary="Discard held entries",
    responses=_problems(400, 404, 409),
)
def discard_quarantine(
    reference: _Reference, body: Annotated[DecisionRequest, Body()], request: Request, principal: _OPERATE
) -> QuarantineEntries:
    """Never process them; their files stay, marked (audited)."""
    with _answering():
        return QuarantineEntries.of(_ops(request).quarantine_discard(reference, principal.subject, body.reason))


# ------------------------------------------------------------------- AI switches
@router.get(
    "/ai-switches",
    response_model=list[AiSwitchOut],
    tags=["ai-switches"],
    summary="AI switches set so far",
    responses=_problems(),
)
def list_ai_switches(request: Request, principal: _READ) -> list[AiSwitchOut]:
    """Per study and per modality: on or off, who set it, when and why."""
    return [AiSwitchOut.model_validate(s, from_attributes=True) for s in _ops(request).ai_switches()]


def _switch(request: Request, scope: str, key: str, body: AiSwitchRequest, principal: Principal) -> AiSwitchOut:
    with _answering():
        setting = _ops(request).set_ai_switch(scope, key, body.enabled, body.reason, principal.subject)
    return AiSwitchOut.model_validate(setting, from_attributes=True)


# Two routes rather than one ``{scope}/{key}``: each key then has an exact schema.
@router.put(
    "/ai-switches/study/{key}",
    response_model=AiSwitchOut,
    tags=["ai-switches"],
    summary="Switch AI on or off for a study",
    responses=_problems(400),
)
def set_study_ai_switch(
    key: Annotated[str, Path(max_length=64, pattern=_UID, description="Study Instance UID")],
    body: Annotated[AiSwitchRequest, Body()],
    request: Request,
    principal: _OPERATE,
) -> AiSwitchOut:
    """Effective at the study's next routing decision, without a restart (audited)."""
    return _switch(request, "study", key, body, principal)


@router.put(
    "/ai-switches/modality/{key}",
    response_model=AiSwitchOut,
    tags=["ai-switches"],
    summary="Switch AI on or off for a modality",
    responses=_problems(400),
)
def set_modality_ai_switch(
    key: Annotated[str, Path(pattern=_MODALITY, description="Modality (0008,0060), e.g. CR; case is ignored")],
    body: Annotated[AiSwitchRequest, Body()],
    request: Request,
    principal: _OPERATE,
) -> AiSwitchOut:
    """Overrides the configured default for the modality from the next routing decision (audited)."""
    return _switch(request, "modality", key, body, principal)


# ------------------------------------------------------------------------ models
@router.get(
    "/models",
    response_model=ModelApps,
    tags=["models"],
    summary="Deployed model applications",
    responses=_problems(503),
)
def list_models(request: Request, principal: _READ) -> ModelApps:
    """Each model family's Serve application and its status."""
    return ModelApps.of(_ops(request).models_list())


@router.put(
    "/models/{family}",
    response_model=ModelChange,
    tags=["models"],
    summary="Deploy (or update) a model family",
    responses=_problems(404, 503),
)
def deploy_model(family: _Family, request: Request, principal: _ADMIN) -> ModelChange:
    """Deploy one configured family; the others keep serving."""
    with _answering():
        return ModelChange(family=family, applications=_ops(request).models_deploy(family, principal.subject))


@router.delete(
    "/models/{family}",
    response_model=ModelChange,
    tags=["models"],
    summary="Remove a model family",
    responses=_problems(404, 503),
)
def remove_model(family: _Family, request: Request, principal: _ADMIN) -> ModelChange:
    """Its jobs wait (visibly, without spending retries) until it is deployed again."""
    with _answering():
        return ModelChange(family=family, applications=_ops(request).models_remove(family, principal.subject))


@router.get(
    "/models/{family}",
    response_model=ModelCardOut,
    tags=["models"],
    summary="A model family's card",
    responses=_problems(404),
)
def show_model(family: _Family, request: Request, principal: _READ) -> ModelCardOut:
    """Per version: what its publisher declares, its traffic, live or halted, deployed, and what
    this site observed (studies, positive rates, shadow agreement)."""
    with _answering():
        return ModelCardOut.of(_ops(request).models_show(family))


@router.post(
    "/models/{family}/versions/{version}/promote",
    response_model=RolloutOut,
    tags=["models"],
    summary="Make a model version live",
    responses=_problems(400, 404, 409, 503),
)
def promote_model(
    family: _Family,
    version: _Version,
    request: Request,
    principal: _OPERATE,
    body: Annotated[RolloutRequest | None, Body()] = None,
) -> RolloutOut:
    """The version becomes live; the one live until now gets no studies until made live again (audited)."""
    reason = body.reason if body is not None else ""
    with _answering():
        return RolloutOut.of(_ops(request).models_promote(family, version, principal.subject, reason))


@router.post(
    "/models/{family}/versions/{version}/rollback",
    response_model=RolloutOut,
    tags=["models"],
    summary="Roll a model family back to a version",
    responses=_problems(400, 404, 409, 503),
)
def rollback_model(
    family: _Family,
    version: _Version,
    request: Request,
    principal: _OPERATE,
    body: Annotated[RolloutRequest | None, Body()] = None,
) -> RolloutOut:
    """The version becomes live and the versions rolled back from are halted: their canary, rule
    or shadow traffic stops (audited). Rolling back to the live version halts its canaries."""
    reason = body.reason if body is not None else ""
    with _answering():
        return RolloutOut.of(_ops(request).models_rollback(family, version, principal.subject, reason))


# ------------------------------------------------------------------------- audit
@router.get(
    "/audit", response_model=AuditPage, tags=["audit"], summary="Audit events, oldest first", responses=_problems()
)
def list_audit(
    request: Request,
    principal: _READ,
    study: _Study = None,
    limit: _Limit = 200,
    after: Annotated[int, Query(ge=0, le=_ID_MAX, description="Only events after this sequence number")] = 0,
) -> AuditPage:
    """One page of the hash-chained trail; pass ``next_after`` as ``after`` for the next."""
    with _answering():
        return AuditPage.of(_ops(request).audit_events(study, limit, after), limit)


@router.get(
    "/audit/verify",
    response_model=AuditVerdict,
    tags=["audit"],
    summary="Verify the signed audit chain",
    responses=_problems(),
)
def verify_audit(request: Request, principal: _READ) -> AuditVerdict:
    """Whether every event still matches its hash, links to the one before, equals its columns
    and carries a signature of a trusted key, and whether the chain reaches the exported head
    (``core.audit.check_chain``); else the first bad entry."""
    broken = _ops(request).audit_verify()
    if broken is None:
        return AuditVerdict(intact=True, broken_at_seq=None, reason="")
    return AuditVerdict(intact=False, broken_at_seq=broken.seq, reason=broken.reason)
