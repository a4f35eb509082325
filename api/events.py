"""Server-sent events of critical findings (issue 12): ``GET /api/v1/clinical/events``.

A reader's page keeps one ``text/event-stream`` open; each present critical finding that one of
the reader's roles may see *and* pushes (``core.pushes.event_allowed``, the same rule as the
webhooks) arrives as::

    id: 1234
    event: critical
    data: {"item_id": 1234, "study_uid": ..., "sr_uid": ..., "family": ..., "finding": ...,
           "probability": ..., "created_at": ...}

A comment line every ``HEARTBEAT_S`` keeps proxies from closing an idle stream. A client that
reconnects with ``Last-Event-ID`` (EventSource does) gets what it missed, up to ``RESUME_MAX``
items back; without it, only what is new. Credentials: ``Authorization: Bearer`` or, for
EventSource (which cannot set headers), ``?access_token=`` (the request audit never records
query strings). Scope ``read``; a caller with no role in the policy is refused (403); without
``clinical.policy_file`` the route answers 404. The policy is the replica's ``PolicyHolder``.

One ``EventHub`` per API replica reads ``alert_items`` every ``POLL_S`` while anyone listens and
hands each batch to every open stream, so a hundred readers cost one query, not a hundred. Its
position waits at a young gap in the ids (``core.pushes.settled``: on PostgreSQL a lower id may
commit later) and it remembers what it handed out above it, so a late item is sent once.
Reconnecting clients should ignore an ``id`` they already have.
Each stream filters with the policy in force at that moment (a reload applies to open streams).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Depends, Header, Query, Request, Security
from fastapi.responses import StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials

from api.problems import Problem
from api.security import _BEARER, context_of
from core.alert_policy import AlertPolicy
from core.auth import AuthError, Principal, Scope
from core.clinical import reader_of
from core.numbers import ascii_int
from core.pushes import PushItem, event_allowed, event_data, settled
from state.ledger.pushes import Pushes

__all__ = ["EventHub", "HEARTBEAT_S", "POLL_S", "RESUME_MAX", "router"]

logger = logging.getLogger(__name__)

HEARTBEAT_S = 15.0
"""A comment line after this long without an event."""
POLL_S = 0.1
"""How often the replica's hub reads new alert items while a stream is open."""
RESUME_MAX = 2000
"""Most items read back for a ``Last-Event-ID`` resume."""
_BATCH = 500
_QUEUE_MAX = 256
"""Batches a slow stream may fall behind before it is closed (its client reconnects and resumes)."""

router = APIRouter(tags=["clinical"])


class EventHub:
    """One replica's reader of ``alert_items``, fanned out to its open streams."""

    def __init__(self, pushes: Pushes, poll_s: float = POLL_S, heartbeat_s: float = HEARTBEAT_S) -> None:
        """Args:
        pushes: The replica's ``ledger.pushes``.
        poll_s: How often new items are read while a stream is open.
        heartbeat_s: A stream's longest silence: then a comment, and its credential checked again.
        """
        self._pushes = pushes
        self._poll_s = poll_s
        self.heartbeat_s = heartbeat_s
        self._queues: set[asyncio.Queue[list[PushItem] | None]] = set()
        self._head = -1
        self._seen: set[int] = set()
        self._task: asyncio.Task[None] | None = None

    @property
    def head(self) -> int:
        """Every item at or below this id was handed out, or never will be (-1 before the
        first read); above it, ``_seen`` holds the ids handed out already."""
        return self._head

    async def subscribe(self) -> tuple[asyncio.Queue[list[PushItem] | None], int]:
        """A queue of the batches of items not handed out before, and the newest id handed
        out before (``None`` in the queue: the stream fell behind and must end)."""
        if self._head < 0:
            head = await to_thread.run_sync(self._pushes.last_item_id)
            self._head = max(self._head, head)
        queue: asyncio.Queue[list[PushItem] | None] = asyncio.Queue(_QUEUE_MAX)
        self._queues.add(queue)  # no await from here on: no batch can slip between the mark and the queue
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._poll(), name="clinical-events")
        return queue, max(self._seen, default=self._head)

    def unsubscribe(self, queue: asyncio.Queue[list[PushItem] | None]) -> None:
        """Stop handing batches to ``queue``."""
        self._queues.discard(queue)

    async def backlog(self, after: int, upto: int) -> list[PushItem]:
        """Items in ``(after, upto]`` (a resume), at most ``RESUME_MAX`` of the newest."""
        after = max(after, upto - RESUME_MAX)
        out: list[PushItem] = []
        while after < upto:
            page = await to_thread.run_sync(self._pushes.items_after, after, _BATCH)
            page = [i for i in page if i.item_id <= upto]
            if not page:
                break
            out += page
            after = page[-1].item_id
        return out

    def _read(self) -> list[PushItem]:
        """Items after the head: a second page when the first is full (a young gap holds the
        head back while later items arrive)."""
        items = self._pushes.items_after(self._head, _BATCH)
        if len(items) == _BATCH:
            items += self._pushes.items_after(items[-1].item_id, _BATCH)
        return items

    async def _poll(self) -> None:
        """Read new items while anyone listens (then stop: an idle replica reads nothing)."""
        while self._queues:
            try:
                items = await to_thread.run_sync(self._read)
            except Exception:  # the ledger is away: streams stay open, the hub tries again
                logger.warning("clinical events: reading alert items failed; retrying", exc_info=True)
                await asyncio.sleep(1.0)
                continue
            new = [i for i in items if i.item_id not in self._seen]
            self._seen.update(i.item_id for i in new)
            self._head = settled(self._head, items, time.time())
            self._seen = {i for i in self._seen if i > self._head}
            if new:
                self._publish(new)
            else:
                await asyncio.sleep(self._poll_s)

    def _publish(self, items: list[PushItem]) -> None:
        for queue in list(self._queues):
            try:
                queue.put_nowait(items)
            except asyncio.QueueFull:
                self._queues.discard(queue)
                queue.get_nowait()
                queue.put_nowait(None)


def _hub(request: Request) -> EventHub:
    hub: EventHub | None = getattr(request.app.state, "clinical_events", None)
    if hub is None:
        hub = request.app.state.clinical_events = EventHub(context_of(request).ledger.pushes)
    return hub


async def _subscriber(
    request: Request,
    access_token: Annotated[str | None, Query(description="The bearer token, for EventSource")] = None,
    _documented: HTTPAuthorizationCredentials | None = Security(_BEARER, scopes=[Scope.READ.value]),  # noqa: B008
) -> Principal:
    principal: Principal = await to_thread.run_sync(context_of(request).auth.authenticate, _credential(request))
    request.state.principal = principal
    if not principal.may(Scope.READ):
        raise AuthError(403, "this credential lacks the 'read' scope")
    return principal


def _credential(request: Request) -> str | None:
    """The ``Authorization`` header, or the ``access_token`` query parameter as one."""
    token = request.query_params.get("access_token")
    return request.headers.get("authorization") or (f"Bearer {token}" if token else None)


def _frame(item: PushItem) -> str:
    data = json.dumps(event_data(item), separators=(",", ":"))
    return f"id: {item.item_id}\nevent: critical\ndata: {data}\n\n"


@dataclass(frozen=True, slots=True)
class _Listener:
    """Who a stream is for: the policy's user name and claims, and a check that the credential
    still holds (a revoked or expired token's stream ends at its next heartbeat)."""

    user: str
    claims: Mapping[str, Any]
    policy: Callable[[], AlertPolicy | None]
    still_valid: Callable[[], bool]

    async def allowed(self, items: list[PushItem]) -> list[PushItem]:
        """The items this listener gets, by the policy in force now (a reload applies at once)."""
        if not items:
            return []
        current = await to_thread.run_sync(self.policy)
        if current is None:
            return []
        roles = current.roles_of(self.user, self.claims)
        return [i for i in items if event_allowed(current, roles, i.alert)]


async def _stream(hub: EventHub, listener: _Listener, after: int | None) -> AsyncIterator[str]:
    queue, upto = await hub.subscribe()
    try:
        yield "retry: 2000\n: connected\n\n"
        pending = await hub.backlog(after, upto) if after is not None else []
        handled: set[int] = set()  # a late item may come both in the backlog and live
        while True:
            fresh = [i for i in pending if i.item_id not in handled]
            handled = {i for i in handled if i > hub.head} | {i.item_id for i in fresh}
            for item in await listener.allowed(fresh):
                yield _frame(item)
            try:
                batch = await asyncio.wait_for(queue.get(), hub.heartbeat_s)
            except TimeoutError:
                if not await to_thread.run_sync(listener.still_valid):
                    return
                pending = []
                yield ": keepalive\n\n"
                continue
            if batch is None:
                return  # fell behind: the client reconnects with Last-Event-ID
            pending = batch
    finally:
        hub.unsubscribe(queue)


def _still_valid(request: Request, header: str | None) -> Callable[[], bool]:
    auth = context_of(request).auth

    def check() -> bool:
        try:
            return auth.authenticate(header).may(Scope.READ)
        except AuthError:
            return False

    return check


@router.get(
    "/events",
    summary="Critical findings for the caller's roles, as server-sent events (scope read)",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "An endless event stream"}},
)
async def clinical_events(
    request: Request,
    principal: Annotated[Principal, Depends(_subscriber)],
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> StreamingResponse:
    policy = context_of(request).policy  # state.policy_file.PolicyHolder: re-reads the file, audits changes
    if policy is None:
        raise Problem(404, "clinical results are not configured (clinical.policy_file)", "not-configured")
    user, claims = reader_of(principal.subject), principal.claims
    if not (await to_thread.run_sync(policy)).roles_of(user, claims):
        raise AuthError(403, f"user {user!r} has no role in the alert policy")
    after = ascii_int(last_event_id.strip()) if last_event_id else None
    listener = _Listener(user, claims, policy, _still_valid(request, _credential(request)))
    return StreamingResponse(
        _stream(_hub(request), listener, after),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
