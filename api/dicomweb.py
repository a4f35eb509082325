"""DICOMweb (PS3.18): STOW-RS in, QIDO-RS and WADO-RS over our own result objects.

STOW-RS keeps the C-STORE contract (``state.spool.SpoolIntake``): each part is made durable
(spool file, fsync, ledger row) as soon as it has arrived, and the response lists every stored
instance and every failed one with its Failure Reason (0xA700 out of resources, 0xC000 cannot
understand, 0xA900 not of the study in the path). A SOP Instance UID already held is
acknowledged and not processed again. A body that is not well-formed multipart gets a 400
problem naming the instances already stored (each whole and durable; none half-stored); a body
declared or found larger than ``api.max_request_bytes`` gets 413.

QIDO-RS / WADO-RS serve the SRs and Parametric Maps we wrote (pending or delivered, never a
superseded version), so a viewer or a cloud PACS can pull them from us.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from functools import lru_cache
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydicom.dataset import Dataset
from starlette.concurrency import run_in_threadpool

from actors.adapters.metrics import recorder
from api.context import ApiContext
from api.multipart import MultipartError, Part, PartTooLarge, RelatedParts, boundary_of, related_chunks
from api.problems import Problem
from api.security import Ingester, Reader, context_of
from core.auth import Principal
from core.envelope import Keyring
from core.errors import DependencyUnavailable, OutOfResources, RejectedInput
from core.numbers import ascii_int
from core.qido import Level, Query, QueryError, matches, parse_query, summarise
from core.stow_rs import (
    CANNOT_UNDERSTAND,
    OUT_OF_RESOURCES,
    PROCESSING_FAILURE,
    STUDY_MISMATCH,
    UNSUPPORTED_SOP_CLASS,
    StowOutcome,
    storable,
    stow_response,
    stow_status,
)
from state.ledger.outbox import PublishedResult
from state.sealed_files import dcmread_plain, read_plain
from state.spool import StudyMismatch, read_preamble_and_meta

__all__ = ["DICOM_JSON", "router"]

logger = logging.getLogger(__name__)

DICOM_JSON = "application/dicom+json"
UID = r"^[0-9]{1,64}(\.[0-9]{1,64}){0,63}$"
StudyUID = Annotated[str, Path(pattern=UID, max_length=64, description="Study Instance UID")]
SeriesUID = Annotated[str, Path(pattern=UID, max_length=64, description="Series Instance UID")]
InstanceUID = Annotated[str, Path(pattern=UID, max_length=64, description="SOP Instance UID")]
STOW_CALLING_AE = "STOW-RS"
"""The sender recorded for STOW-RS instances (per-sender completion rules can name it)."""

router = APIRouter()


class DicomJSONResponse(JSONResponse):
    """A PS3.18 F.2 DICOM JSON answer."""

    media_type = DICOM_JSON


_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "No valid credentials", "content": {"application/problem+json": {}}},
    403: {"description": "The credential lacks the scope", "content": {"application/problem+json": {}}},
}
_STOW_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "DICOM Part 10 instances, one per part (PS3.18 10.5)",
        "content": {'multipart/related; type="application/dicom"': {"schema": {"type": "string", "format": "binary"}}},
    }
}
_STOW_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "Every instance stored", "content": {DICOM_JSON: {"schema": {"type": "object"}}}},
    202: {
        "description": "Some instances failed (FailedSOPSequence)",
        "content": {DICOM_JSON: {"schema": {"type": "object"}}},
    },
    400: {"description": "Malformed multipart body", "content": {"application/problem+json": {}}},
    409: {
        "description": "No instance stored (FailedSOPSequence)",
        "content": {DICOM_JSON: {"schema": {"type": "object"}}},
    },
    413: {"description": "Body or part too large", "content": {"application/problem+json": {}}},
    415: {"description": "Not multipart/related; type=application/dicom", "content": {"application/problem+json": {}}},
    422: {"description": "Invalid Study Instance UID in the path", "content": {"application/problem+json": {}}},
    **_ERRORS,
}
_READ_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "DICOM JSON (PS3.18 F.2)",
        "content": {DICOM_JSON: {"schema": {"type": "array", "items": {"type": "object"}}}},
    },
    400: {"description": "Unusable query key", "content": {"application/problem+json": {}}},
    404: {"description": "No such result object", "content": {"application/problem+json": {}}},
    406: {
        "description": "The Accept header asks for a form we do not produce",
        "content": {"application/problem+json": {}},
    },
    422: {"description": "Invalid UID in the path", "content": {"application/problem+json": {}}},
    **_ERRORS,
}


# ------------------------------------------------------------------------------------ STOW-RS
@router.post(
    "/studies",
    summary="STOW-RS: store instances (multipart/related; type=application/dicom)",
    responses=_STOW_RESPONSES,
    response_class=DicomJSONResponse,
    openapi_extra=_STOW_BODY,
)
async def stow(request: Request, principal: Ingester) -> Response:
    return await _stow(request, principal, None)


@router.post(
    "/studies/{study}",
    summary="STOW-RS: store instances of one study (others fail with 0xA900)",
    responses=_STOW_RESPONSES,
    response_class=DicomJSONResponse,
    openapi_extra=_STOW_BODY,
)
async def stow_study(request: Request, study: StudyUID, principal: Ingester) -> Response:
    return await _stow(request, principal, study)


async def _stow(request: Request, principal: Principal, study: str | None) -> Response:
    ctx = context_of(request)
    cfg = ctx.cfg.api
    assert cfg is not None  # the app is only built with an api section
    media, part_type, boundary = boundary_of(request.headers.get("content-type", ""))
    if media != "multipart/related" or part_type not in ("", "application/dicom"):
        raise Problem(
            415, 'expected Content-Type multipart/related; type="application/dicom"', "unsupported-media-type"
        )
    declared = request.headers.get("content-length")
    size = ascii_int(declared, 32) if declared is not None else None
    if size is not None and size > cfg.max_request_bytes:
        raise Problem(413, f"body of {declared} bytes declared; the limit is {cfg.max_request_bytes}", "too-large")
    try:
        parts = RelatedParts(boundary, cfg.max_instance_bytes)
    except MultipartError as exc:
        raise Problem(400, str(exc), "malformed-multipart") from None
    base = str(request.base_url).rstrip("/")
    outcomes: list[StowOutcome] = []
    received = 0
    actor = f"stow-rs:{principal.subject}"
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > cfg.max_request_bytes:
                raise Problem(
                    413,
                    f"body larger than the limit of {cfg.max_request_bytes} bytes",
                    "too-large",
                    stored=_stored(outcomes),
                )
            for part in parts.feed(chunk):
                outcomes.append(await run_in_threadpool(_ingest_part, ctx, part, study, actor, base))
        parts.close()
    except PartTooLarge as exc:
        raise Problem(413, str(exc), "too-large", stored=_stored(outcomes)) from None
    except MultipartError as exc:
        raise Problem(400, str(exc), "malformed-multipart", stored=_stored(outcomes)) from None
    retrieve = f"{base}/dicomweb/studies/{study or (_single_study(outcomes) or '')}".rstrip("/")
    body = stow_response(outcomes, retrieve).to_json_dict()
    return JSONResponse(body, status_code=stow_status(outcomes), media_type=DICOM_JSON)


def _stored(outcomes: list[StowOutcome]) -> list[str]:
    return [o.sop_instance_uid for o in outcomes if o.failure is None]


def _single_study(outcomes: list[StowOutcome]) -> str | None:
    studies = {o.retrieve_url.split("/studies/")[1].split("/")[0] for o in outcomes if o.retrieve_url}
    return studies.pop() if len(studies) == 1 else None


def _uids_of(raw: bytes | bytearray) -> tuple[str, str]:
    """Best effort: the SOP Class and Instance UIDs from a part's file meta (for a failure)."""
    try:
        from io import BytesIO

        meta = read_preamble_and_meta(BytesIO(bytes(raw[:65536])))
        return str(meta.get("MediaStorageSOPClassUID", "")), str(meta.get("MediaStorageSOPInstanceUID", ""))
    except Exception:  # unreadable: the failure is reported without UIDs
        return "", ""


def _ingest_part(ctx: Any, part: Part, study: str | None, actor: str, base: str) -> StowOutcome:
    """Make one part durable; its outcome. Runs in a worker thread (file and ledger I/O)."""
    if part.content_type != "application/dicom":
        return StowOutcome("", "", CANNOT_UNDERSTAND)
    raw = bytes(part.data)
    sop_class, sop_instance = _uids_of(raw)
    if sop_class and not storable(sop_class):
        return StowOutcome(sop_class, sop_instance, UNSUPPORTED_SOP_CLASS)
    try:
        done = ctx.intake.ingest_file(raw, STOW_CALLING_AE, study, actor)
    except StudyMismatch:
        return StowOutcome(*_uids_of(raw), STUDY_MISMATCH)
    except RejectedInput as exc:
        logger.warning("STOW-RS part rejected: %s", exc.reason if hasattr(exc, "reason") else type(exc).__name__)
        return StowOutcome(*_uids_of(raw), CANNOT_UNDERSTAND)
    except (OutOfResources, DependencyUnavailable, OSError) as exc:
        logger.warning("STOW-RS part refused, out of resources: %s", type(exc).__name__)
        return StowOutcome(*_uids_of(raw), OUT_OF_RESOURCES)
    except Exception:  # the one broad catch at the protocol boundary: log and answer
        logger.exception("STOW-RS part failed unexpectedly")
        return StowOutcome(*_uids_of(raw), PROCESSING_FAILURE)
    recorder.inc("pacsai_instances_received_total", transport="stowrs")
    m = done.meta
    url = (
        f"{base}/dicomweb/studies/{m.study_instance_uid}/series/{m.series_instance_uid}/instances/{m.sop_instance_uid}"
    )
    return StowOutcome(m.sop_class_uid, m.sop_instance_uid, None, url)


# ----------------------------------------------------------------------------------- QIDO-RS
@lru_cache(maxsize=4096)
def _header(path: str, keyring: Keyring | None) -> Dataset:
    """A result file's attributes (no pixel data); the files never change once written."""
    return dcmread_plain(path, keyring, stop_before_pixels=True)


def _query(request: Request) -> Query:
    ctx = context_of(request)
    assert ctx.cfg.api is not None
    try:
        return parse_query(request.query_params.multi_items(), ctx.cfg.api.qido_limit)
    except QueryError as exc:
        raise Problem(400, str(exc), "invalid-query") from None


def _published(ctx: ApiContext, **uids: str | None) -> list[PublishedResult]:
    """Our result objects narrowed by UIDs, newest first: the outbox's SRs, Parametric Maps,
    key images and KOS, and the readers' verified SRs."""
    found = ctx.ledger.outbox.published(**uids, limit=100_000)
    found += ctx.ledger.clinical.published_verified(**uids, limit=100_000)
    return sorted(found, key=lambda r: r.created_at, reverse=True)


def _results(request: Request, **uids: str | None) -> list[tuple[PublishedResult, Dataset]]:
    """Our result objects narrowed by UIDs, with their attributes (unreadable files skipped)."""
    ctx = context_of(request)
    out = []
    for r in _published(ctx, **uids):
        try:
            out.append((r, _header(r.path, ctx.ledger.keyring)))
        except OSError:
            logger.warning("result file of %s unreadable", r.sop_instance_uid)
    return out


def _search(request: Request, level: Level, query: Query, **uids: str | None) -> JSONResponse:
    _accept_json(request)
    base = str(request.base_url).rstrip("/") + "/dicomweb"
    groups: dict[str, list[Dataset]] = {}
    for r, ds in _results(request, **uids):
        if not matches(ds, query):
            continue
        key = {Level.STUDY: r.study_uid, Level.SERIES: r.series_uid}.get(level, r.sop_instance_uid)
        groups.setdefault(key, []).append(ds)
    answers = []
    for datasets in list(groups.values())[query.offset : query.offset + query.limit]:
        ds = datasets[0]
        url = f"{base}/studies/{ds.StudyInstanceUID}"
        if level is not Level.STUDY:
            url += f"/series/{ds.SeriesInstanceUID}"
        if level is Level.INSTANCE:
            url += f"/instances/{ds.SOPInstanceUID}"
        answers.append(summarise(level, datasets, url, query).to_json_dict())
    headers = {}
    if len(groups) > query.offset + query.limit:
        headers["Warning"] = '299 pacsai "There are more matches; use offset"'
    return JSONResponse(answers, media_type=DICOM_JSON, headers=headers)


def _accept_json(request: Request) -> None:
    accept = request.headers.get("accept", "*/*")
    if not any(t in accept for t in (DICOM_JSON, "application/json", "*/*", "application/*")):
        raise Problem(406, f"QIDO-RS answers {DICOM_JSON}", "not-acceptable")


@router.get(
    "/studies",
    summary="QIDO-RS: studies with results of ours",
    responses=_READ_RESPONSES,
    response_class=DicomJSONResponse,
)
def search_studies(request: Request, _: Reader) -> JSONResponse:
    return _search(request, Level.STUDY, _query(request))


@router.get(
    "/series", summary="QIDO-RS: our result series", responses=_READ_RESPONSES, response_class=DicomJSONResponse
)
def search_series(request: Request, _: Reader) -> JSONResponse:
    return _search(request, Level.SERIES, _query(request))


@router.get(
    "/instances", summary="QIDO-RS: our result instances", responses=_READ_RESPONSES, response_class=DicomJSONResponse
)
def search_instances(request: Request, _: Reader) -> JSONResponse:
    return _search(request, Level.INSTANCE, _query(request))


@router.get(
    "/studies/{study}/series",
    summary="QIDO-RS: our result series of a study",
    responses=_READ_RESPONSES,
    response_class=DicomJSONResponse,
)
def search_study_series(request: Request, study: StudyUID, _: Reader) -> JSONResponse:
    return _search(request, Level.SERIES, _query(request), study_uid=study)


@router.get(
    "/studies/{study}/instances",
    summary="QIDO-RS: our result instances of a study",
    responses=_READ_RESPONSES,
    response_class=DicomJSONResponse,
)
def search_study_instances(request: Request, study: StudyUID, _: Reader) -> JSONResponse:
    return _search(request, Level.INSTANCE, _query(request), study_uid=study)


@router.get(
    "/studies/{study}/series/{series}/instances",
    summary="QIDO-RS: our result instances of a series",
    responses=_READ_RESPONSES,
    response_class=DicomJSONResponse,
)
def search_series_instances(request: Request, study: StudyUID, series: SeriesUID, _: Reader) -> JSONResponse:
    return _search(request, Level.INSTANCE, _query(request), study_uid=study, series_uid=series)


# ----------------------------------------------------------------------------------- WADO-RS
def _wado(request: Request, **uids: str | None) -> Response:
    accept = request.headers.get("accept", "*/*")
    if not any(t in accept for t in ("multipart/related", "*/*", "multipart/*", "application/dicom")):
        raise Problem(406, 'WADO-RS answers multipart/related; type="application/dicom"', "not-acceptable")
    if "transfer-syntax=" in accept and "transfer-syntax=*" not in accept:
        wanted = accept.split("transfer-syntax=")[1].split(";")[0].split(",")[0].strip('" ')
    else:
        wanted = "*"
    ctx = context_of(request)
    found = _published(ctx, **uids)
    if not found:
        raise Problem(404, "no result object of ours matches", "not-found")
    if wanted != "*":
        syntaxes = {str(_header(r.path, ctx.ledger.keyring).file_meta.TransferSyntaxUID) for r in found}
        if syntaxes != {wanted}:
            raise Problem(406, f"stored as {sorted(syntaxes)}; transcoding is not offered", "not-acceptable")
    boundary = uuid.uuid4().hex
    paths, ring = [r.path for r in found], ctx.ledger.keyring

    def body() -> Iterator[bytes]:
        def files() -> Iterator[tuple[str, bytes]]:
            for p in paths:
                yield "application/dicom", read_plain(p, ring)

        yield from related_chunks(boundary, files())

    media = f'multipart/related; type="application/dicom"; boundary={boundary}'
    return StreamingResponse(body(), media_type=media)


def _metadata(request: Request, **uids: str | None) -> JSONResponse:
    _accept_json(request)
    ctx = context_of(request)
    found = _published(ctx, **uids)
    if not found:
        raise Problem(404, "no result object of ours matches", "not-found")
    out = []
    for r in found:
        ds = _header(r.path, ctx.ledger.keyring)
        out.append(ds.to_json_dict(bulk_data_threshold=4096, bulk_data_element_handler=lambda _e: ""))
    return JSONResponse(out, media_type=DICOM_JSON)


_WADO_RESPONSES: dict[int | str, dict[str, Any]] = {
    **_READ_RESPONSES,
    200: {"description": "The instances", "content": {"multipart/related": {}}},
}


@router.get(
    "/studies/{study}",
    summary="WADO-RS: our result objects of a study",
    responses=_WADO_RESPONSES,
    response_class=Response,
)
def retrieve_study(request: Request, study: StudyUID, _: Reader) -> Response:
    return _wado(request, study_uid=study)


@router.get(
    "/studies/{study}/series/{series}",
    summary="WADO-RS: our result objects of a series",
    responses=_WADO_RESPONSES,
    response_class=Response,
)
def retrieve_series(request: Request, study: StudyUID, series: SeriesUID, _: Reader) -> Response:
    return _wado(request, study_uid=study, series_uid=series)


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}",
    summary="WADO-RS: one result object",
    responses=_WADO_RESPONSES,
    response_class=Response,
)
def retrieve_instance(
    request: Request,
    study: StudyUID,
    series: SeriesUID,
    instance: InstanceUID,
    _: Reader,
) -> Response:
    return _wado(request, study_uid=study, series_uid=series, sop_instance_uid=instance)


@router.get(
    "/studies/{study}/metadata",
    summary="WADO-RS: metadata of a study's result objects",
    responses=_READ_RESPONSES,
    response_class=DicomJSONResponse,
)
def study_metadata(request: Request, study: StudyUID, _: Reader) -> JSONResponse:
    return _metadata(request, study_uid=study)


@router.get(
    "/studies/{study}/series/{series}/metadata",
    summary="WADO-RS: metadata of a result series",
    responses=_READ_RESPONSES,
    response_class=DicomJSONResponse,
)
def series_metadata(request: Request, study: StudyUID, series: SeriesUID, _: Reader) -> JSONResponse:
    return _metadata(request, study_uid=study, series_uid=series)


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/metadata",
    summary="WADO-RS: metadata of one result object",
    responses=_READ_RESPONSES,
    response_class=DicomJSONResponse,
)
def instance_metadata(
    request: Request,
    study: StudyUID,
    series: SeriesUID,
    instance: InstanceUID,
    _: Reader,
) -> JSONResponse:
    return _metadata(request, study_uid=study, series_uid=series, sop_instance_uid=instance)
