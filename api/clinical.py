"""Results for readers (issue 12): ``/api/v1/clinical`` — who I am, my worklist, a result, its
image with the heatmap, my review, and a forced policy reload.

Every finding that leaves these routes has passed ``AlertPolicy.filter`` for the caller's roles
(the ledger's worklist query narrows the rows first; the filter decides). A caller's user name is
the principal's subject without ``token:`` / ``oidc:``; their roles come from the policy file
and their OIDC token's claim (``AlertPolicy.roles_of``). A caller with no role is refused (403).
A result the caller may see nothing of is answered like one that does not exist (404), so the
routes tell nobody what they may not see. Reading needs ``read``, reviewing ``review``, the
operators' unfiltered worklist and the policy reload ``operate``.

Opening a result records a ``result_views`` row and a ``RESULT_VIEWED`` audit event (the
utilisation measure); its image with the heatmap records that the heatmap was viewed, which the
review's audit events then say. The routes answer 404 "clinical results are not configured"
where ``clinical.policy_file`` is unset.
"""

from __future__ import annotations

import dataclasses
import time
from io import BytesIO
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from PIL import Image

from api.context import ApiContext
from api.problems import Problem
from api.security import Operator, Reader, context_of, requires
from core.alert_policy import AlertItem, AlertPolicy
from core.audit import AuditEvent
from core.auth import AuthError, Principal, Scope
from core.clinical import check_review, parse_review, reader_of, visible_keys
from core.errors import ConfigError, RecordError, RejectedInput
from core.interval import interval_changes
from core.key_images import KeyImageFinding, plan_key_images, render_overlay
from core.parametric_maps import decode_levels, plane_on_source
from core.records import Finding, FrameRef, PlaneGrid, Prediction
from core.results import SrVersion
from core.types import AuditEventType
from state.policy_file import PolicyHolder
from state.sealed_files import dcmread_plain

__all__ = ["LIMIT_MAX", "router"]

LIMIT_MAX = 200
"""Most worklist entries per page."""
_UID = r"^[0-9]+(\.[0-9]+)*$"
_KEY = r"^[a-z][a-z0-9_]*$"
_NOT_FOUND = "no such result, or none of its findings is shown to your roles"

router = APIRouter(
    tags=["clinical"],
    responses={404: {"description": "Clinical results are not configured, or no such result the caller may see"}},
)
Reviewer = Annotated[Principal, Depends(requires(Scope.REVIEW))]
SrUid = Annotated[str, Path(pattern=_UID, max_length=64, description="The AI SR's SOP Instance UID")]


@dataclasses.dataclass(frozen=True, slots=True)
class _Caller:
    ctx: ApiContext
    policy: AlertPolicy
    principal: Principal
    user: str
    roles: frozenset[str]


def _holder(request: Request) -> tuple[ApiContext, PolicyHolder]:
    ctx = context_of(request)
    holder = ctx.policy
    if holder is None:
        raise Problem(404, "clinical results are not configured (clinical.policy_file)", "not-configured")
    return ctx, holder


def _caller(request: Request, principal: Principal, need_role: bool = True) -> _Caller:
    ctx, holder = _holder(request)
    policy = holder.current()
    user = reader_of(principal.subject)
    roles = policy.roles_of(user, principal.claims)
    if need_role and not roles:
        raise AuthError(403, f"user {user!r} has no role in the alert policy")
    return _Caller(ctx, policy, principal, user, roles)


def _visible_result(caller: _Caller, sr_uid: str) -> tuple[SrVersion, list[AlertItem], list[AlertItem]]:
    """The SR version, all its items and those the caller may see (404 when none)."""
    version = caller.ctx.ledger.results.version(sr_uid)
    items = caller.ctx.ledger.clinical.items_of(sr_uid) if version is not None else []
    shown = caller.policy.filter(caller.roles, items)
    if version is None or not shown:
        raise Problem(404, _NOT_FOUND, "not-found")
    return version, items, shown


@router.get("/me", summary="The caller's user name, roles and whether they may review (scope read)")
def me(request: Request, principal: Reader) -> dict[str, Any]:
    caller = _caller(request, principal)
    return {"user": caller.user, "roles": sorted(caller.roles), "may_review": principal.may(Scope.REVIEW)}


@router.get("/worklist", summary="The caller's worklist: results with alerts their roles may see (scope read)")
def worklist(
    request: Request,
    principal: Reader,
    limit: Annotated[int, Query(ge=1, le=LIMIT_MAX, description="Entries per page")] = 50,
    offset: Annotated[int, Query(ge=0, le=10_000_000, description="Entries to skip")] = 0,
    all: Annotated[bool, Query(description="Every alert, unfiltered (operators; scope operate)")] = False,  # noqa: A002
) -> dict[str, Any]:
    if all:
        if not principal.may(Scope.OPERATE):
            raise AuthError(403, "the unfiltered worklist needs the 'operate' scope")
        ctx, _ = _holder(request)
        page = ctx.ledger.clinical.worklist(None, (), reader_of(principal.subject), limit, offset)
        return {"items": [e.to_json() for e in page.entries], "total": page.total}
    caller = _caller(request, principal)
    page = caller.ctx.ledger.clinical.worklist(caller.policy, caller.roles, caller.user, limit, offset)
    items = []
    for entry in page.entries:
        shown = tuple(caller.policy.filter(caller.roles, entry.alerts))  # the one gate, again, at the door
        if shown:
            items.append(dataclasses.replace(entry, alerts=shown).to_json())
    return {"items": items, "total": page.total}


def _finding_json(finding: Finding, prediction: Prediction, item: AlertItem) -> dict[str, Any]:
    out: dict[str, Any] = {
        "finding": finding.key,
        "meaning": finding.term.meaning,
        "probability": finding.probability,
        "threshold": finding.threshold,
        "present": finding.present,
        "critical": item.critical,
        "quality_flag": False,
        "has_heatmap": prediction.heatmap(finding.key) is not None,
    }
    if finding.region is not None:
        out["region"] = dataclasses.asdict(finding.region)
    if finding.size_mm is not None:
        out["size_mm"] = finding.size_mm
    return out


def _prior(caller: _Caller, version: SrVersion, keys: set[str]) -> tuple[dict[str, Any] | None, dict[str, str]]:
    """The prior study's result (visible findings only) and the interval change per finding."""
    try:
        job = caller.ctx.ledger.jobs.get(version.job_id)
    except RecordError:  # an unreadable record: the result is still shown, without its prior
        return None, {}
    link = job.record.priors if job is not None else None
    prior = next((r for r in (link.results if link else ()) if r.family == version.family), None)
    if prior is None:
        return None, {}
    cfg = caller.ctx.cfg.priors
    changes = interval_changes(version.prediction, prior, cfg.probability_change, cfg.size_change_mm)
    described = {c.key: str(c.change) for c in changes if c.key in keys}
    shown = {
        "study_uid": prior.study_uid,
        "study_date": prior.study_date,
        "model_version": prior.model_version,
        "source": prior.source,
        "findings": [
            {"finding": f.key, "probability": f.probability, "present": f.present}
            for f in prior.findings
            if f.key in keys
        ],
    }
    return shown, described


@router.get("/results/{sr_uid}", summary="One AI result: the findings the caller may see, prior, reviews (scope read)")
def result(request: Request, principal: Reader, sr_uid: SrUid) -> dict[str, Any]:
    caller = _caller(request, principal)
    version, _, shown = _visible_result(caller, sr_uid)
    prediction = version.prediction
    by_key = {f.key: f for f in prediction.findings}
    keys = visible_keys(shown)
    prior, changes = _prior(caller, version, keys)
    findings = []
    for item in shown:
        if item.quality_flag:
            flag = next((q for q in prediction.quality_flags if q.key == item.key), None)
            findings.append(
                {
                    "finding": item.key,
                    "meaning": flag.detail if flag else item.key,
                    "probability": item.probability,
                    "threshold": flag.threshold if flag else None,
                    "present": True,
                    "critical": False,
                    "quality_flag": True,
                    "has_heatmap": False,
                }
            )
        elif item.key in by_key:
            entry = _finding_json(by_key[item.key], prediction, item)
            if item.key in changes:
                entry["interval_change"] = changes[item.key]
            findings.append(entry)
    reviews = [
        r.to_json()
        for r in caller.ctx.ledger.clinical.reviews_of(version.study_uid, version.family)
        if r.finding in keys
    ]
    now = time.time()
    caller.ctx.ledger.clinical.record_view(
        sr_uid,
        version.study_uid,
        caller.user,
        False,
        AuditEvent(
            AuditEventType.RESULT_VIEWED,
            principal.subject,
            version.study_uid,
            sr_uid,
            version.job_id,
            {"family": version.family, "version": version.job_version, "heatmap": False},
        ),
        now,
    )
    return {
        "study_uid": version.study_uid,
        "sr_uid": sr_uid,
        "family": version.family,
        "model_version": version.model_version,
        "version": version.job_version,
        "created_at": version.created_at,
        "findings": findings,
        "prior": prior,
        "reviews": reviews,
    }


def _frame_png(caller: _Caller, version: SrVersion, finding: Finding, overlay: bool) -> bytes:
    """The finding's frame as PNG: the heatmap blended and the region outlined when asked."""
    prediction = version.prediction
    plan = next((p for p in plan_key_images(prediction) if p.finding.key == finding.key), None)
    frame: FrameRef | None = plan.frame if plan is not None else finding.evidence
    if frame is None:
        raise Problem(404, f"finding {finding.key!r} has no image to show", "not-found")
    ledger = caller.ctx.ledger
    paths = {i.sop_instance_uid: i.path for i in ledger.intake.job_instances(version.job_id)}
    path = paths.get(frame.sop_instance_uid)
    if path is None:
        raise Problem(404, "the source image is no longer held (retention)", "not-found")
    try:
        source = dcmread_plain(path, ledger.keyring)
    except OSError:
        raise Problem(404, "the source image is no longer held (retention)", "not-found") from None
    heat = None
    outline: tuple[tuple[float, float], ...] = ()
    if overlay and plan is not None:
        outline = plan.outline
        ref = plan.heatmap
        if ref is not None and isinstance(ref.grid, PlaneGrid):
            levels = decode_levels(ledger.blobs.get(ref.blob), ref.shape)
            heat = plane_on_source(ref.grid, levels.reshape(levels.shape[-2:]))
    shown = KeyImageFinding(
        finding.key,
        finding.term.meaning,
        finding.probability,
        f"{prediction.model_name} {prediction.model_version}",
        frame.frame_number,
        heat,
        outline,
    )
    buf = BytesIO()
    Image.fromarray(render_overlay(source, shown), "RGB").save(buf, format="PNG")
    return buf.getvalue()


@router.get(
    "/results/{sr_uid}/image.png",
    summary="A finding's frame with the Grad-CAM heatmap blended (scope read)",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}, "description": "The rendered frame"}},
)
def result_image(
    request: Request,
    principal: Reader,
    sr_uid: SrUid,
    finding: Annotated[str, Query(pattern=_KEY, max_length=64, description="The finding's key")],
    overlay: Annotated[bool, Query(description="Blend the heatmap and outline the region")] = True,
) -> Response:
    caller = _caller(request, principal)
    version, _, shown = _visible_result(caller, sr_uid)
    if finding not in visible_keys(shown):
        raise Problem(404, _NOT_FOUND, "not-found")
    found = next((f for f in version.prediction.findings if f.key == finding), None)
    if found is None:
        raise Problem(404, _NOT_FOUND, "not-found")
    png = _frame_png(caller, version, found, overlay)
    event = AuditEvent(
        AuditEventType.RESULT_VIEWED,
        principal.subject,
        version.study_uid,
        sr_uid,
        version.job_id,
        {"family": version.family, "version": version.job_version, "heatmap": overlay, "finding": finding},
    )
    caller.ctx.ledger.clinical.record_view(sr_uid, version.study_uid, caller.user, overlay, event, time.time())
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, no-store"})


@router.post(
    "/results/{sr_uid}/reviews",
    status_code=201,
    summary="Agree, disagree or override per finding, with comments and a final diagnosis (scope review)",
)
def review(
    request: Request,
    principal: Reviewer,
    sr_uid: SrUid,
    body: Annotated[dict[str, Any], Body(description="reader_name, findings[], final_diagnosis, heatmap_viewed")],
) -> JSONResponse:
    caller = _caller(request, principal)
    version, items, shown = _visible_result(caller, sr_uid)
    try:
        submitted = parse_review(body)
        check_review(submitted, {i.key: i.present for i in items if not i.quality_flag})
    except RejectedInput as exc:
        raise Problem(422, exc.reason, "invalid-review") from None
    allowed = visible_keys(shown)
    hidden = sorted(d.finding for d in submitted.findings if d.finding not in allowed)
    if hidden:
        raise AuthError(403, f"your roles are not shown finding(s) {', '.join(hidden)} of this result")
    ledger = caller.ctx.ledger
    if not submitted.heatmap_viewed and ledger.clinical.heatmap_viewed(sr_uid, caller.user):
        submitted = dataclasses.replace(submitted, heatmap_viewed=True)
    ai = {i.key: i for i in items if not i.quality_flag}
    receipt = ledger.clinical.record_review(version, caller.user, submitted, ai, principal.subject, time.time())
    return JSONResponse(
        {"submission_id": receipt.submission_id, "version": receipt.version, "verified_sr_uid": ""}, status_code=201
    )


@router.post(
    "/policy/reload",
    summary="Read the alert policy file now; a refused file names the field (scope operate)",
    responses={422: {"description": "The file is refused; the policy in force stays"}},
)
def reload_policy(request: Request, principal: Operator) -> dict[str, Any]:
    _, holder = _holder(request)
    try:
        check = holder.reload()
    except ConfigError as exc:
        raise Problem(422, "; ".join(exc.problems), "invalid-policy", problems=exc.problems) from None
    return {"digest": check.digest, "changed": check.changed, "changes": list(check.changes)}
