"""Critical findings pushed to the roles that may see them (issue 12): who, what, and retries.

Two surfaces carry a push: a server-sent event to a signed-in reader's page, and a POST to a
role's paging webhook (``RolePolicy.webhook``). Both ask ``AlertPolicy.push_roles`` and nothing
else, so they cannot disagree with the worklist about who may see a finding:

- an event goes to a caller when one of the caller's roles is among the item's push roles
  (the role may see it *and* pushes);
- a webhook row is made per push role that has a webhook URL, and is checked again against
  the policy in force when it is sent (a reload may have narrowed the role since).

Webhook retries (``clinical.webhooks``): a 2xx is delivered; no answer, a timeout, 408, 429
or a 5xx means the receiver is away or busy: the push waits and tries again, doubling the
wait from ``backoff_s`` up to five minutes, and is never given up (a paging system that is
down must still get the critical finding once it is back). Any other answer is a refusal:
it is tried again the same way until ``max_attempts`` attempts, then it is dead.

Readers go through ``alert_items`` by id, but on PostgreSQL ids are taken when a row is inserted
and seen when its transaction commits: id 11 may be visible before id 10. So a reader's
position only moves past a gap once the gap has ``SETTLE_S`` seconds behind it (``settled``);
what lies beyond is handled at once and again on later reads, which must therefore be
idempotent (webhook rows are unique per item and role; the event hub remembers what it sent).

Pure: the ledger rows, the HTTP client and the loops live in ``state`` and ``actors``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from core.alert_policy import AlertItem, AlertPolicy

__all__ = [
    "BACKOFF_MAX_S",
    "PushItem",
    "PushVerdict",
    "SETTLE_S",
    "classify",
    "event_allowed",
    "event_data",
    "is_dead",
    "next_attempt_at",
    "push_payload",
    "settled",
    "webhook_targets",
]

BACKOFF_MAX_S = 300.0
"""Longest wait between two attempts of one push."""
SETTLE_S = 5.0
"""How long a gap in the item ids may still be filled by a transaction committing late."""


@dataclass(frozen=True, slots=True)
class PushItem:
    """One row of ``alert_items``: a finding of an SR version, as the pushes read it.

    Attributes:
        item_id: Its place in the push order (the cursor of events and webhooks).
        sr_uid: The SR version it belongs to.
        study_uid: The study.
        alert: The finding as the policy judges it.
        created_at: When the SR version was recorded (epoch seconds).
    """

    item_id: int
    sr_uid: str
    study_uid: str
    alert: AlertItem
    created_at: float


class PushVerdict(enum.StrEnum):
    """What a webhook's answer means for the push."""

    DELIVERED = "delivered"
    """2xx: the receiver has it."""
    RETRY = "retry"
    """No answer, a timeout, 408, 429 or 5xx: the receiver is away or busy; try later."""
    REFUSED = "refused"
    """Any other status: counted towards ``max_attempts``, then the push is dead."""


def classify(status: int | None) -> PushVerdict:
    """The verdict on one attempt (``status``: the HTTP status, ``None``: no answer).

    >>> [classify(s).value for s in (200, 204, None, 408, 429, 503, 400, 404)]
    ['delivered', 'delivered', 'retry', 'retry', 'retry', 'retry', 'refused', 'refused']
    """
    if status is None or status in (408, 429) or status >= 500:
        return PushVerdict.RETRY
    if 200 <= status < 300:
        return PushVerdict.DELIVERED
    return PushVerdict.REFUSED


def next_attempt_at(attempts: int, now: float, backoff_s: float) -> float:
    """When to try again after ``attempts`` attempts (1, 2, ...): ``backoff_s`` doubled per
    attempt, at most ``BACKOFF_MAX_S``.

    >>> [next_attempt_at(n, 0.0, 1.0) for n in (1, 2, 3, 4)]
    [1.0, 2.0, 4.0, 8.0]
    >>> next_attempt_at(40, 100.0, 1.0)
    400.0
    """
    exponent = min(max(attempts - 1, 0), 32)
    return now + min(backoff_s * 2.0**exponent, BACKOFF_MAX_S)


def is_dead(verdict: PushVerdict, attempts: int, max_attempts: int) -> bool:
    """Whether a push is given up after this attempt (refusals only, at ``max_attempts``).

    >>> is_dead(PushVerdict.REFUSED, 3, 3), is_dead(PushVerdict.RETRY, 99, 3)
    (True, False)
    """
    return verdict is PushVerdict.REFUSED and attempts >= max_attempts


def webhook_targets(policy: AlertPolicy, item: AlertItem) -> list[str]:
    """The roles whose webhook is paged with ``item``: push roles that have a webhook URL."""
    return [r for r in policy.push_roles(item) if policy.roles[r].webhook]


def event_allowed(policy: AlertPolicy, roles: Iterable[str], item: AlertItem) -> bool:
    """Whether a holder of ``roles`` gets ``item`` as a server-sent event: one of the roles
    is a push role of the item (it may see the item, and it pushes)."""
    wanted = set(roles)
    return bool(wanted) and any(r in wanted for r in policy.push_roles(item))


def event_data(item: PushItem) -> dict[str, Any]:
    """The JSON of one event (and the body of a webhook, with its role).

    >>> a = AlertItem("cxr", "pneumothorax", 0.97, critical=True)
    >>> sorted(event_data(PushItem(7, "1.2.9", "1.2.3", a, 10.0)))
    ['created_at', 'family', 'finding', 'item_id', 'probability', 'sr_uid', 'study_uid']
    """
    return {
        "item_id": item.item_id,
        "study_uid": item.study_uid,
        "sr_uid": item.sr_uid,
        "family": item.alert.family,
        "finding": item.alert.key,
        "probability": round(item.alert.probability, 4),
        "created_at": item.created_at,
    }


def push_payload(item: PushItem, role: str) -> dict[str, Any]:
    """The JSON body POSTed to ``role``'s webhook."""
    return {**event_data(item), "role": role}


def settled(after: int, items: Sequence[PushItem], now: float, settle_s: float = SETTLE_S) -> int:
    """How far a reader at ``after`` may move having read ``items`` (in id order): past every
    item up to the first gap in the ids that is younger than ``settle_s`` (a transaction that
    took a lower id may still commit), and past older gaps (rolled back, or purged).

    >>> def at(i: int, t: float) -> PushItem:
    ...     return PushItem(i, "", "", AlertItem("f", "k", 1.0), t)
    >>> settled(10, [at(11, 99.0), at(12, 99.0), at(14, 99.0), at(15, 99.0)], now=100.0)
    12
    >>> settled(10, [at(11, 99.0), at(12, 99.0), at(14, 90.0), at(15, 99.0)], now=100.0)
    15
    >>> settled(10, [], now=100.0)
    10
    """
    mark = after
    for item in items:
        if item.item_id != mark + 1 and item.created_at > now - settle_s:
            break
        mark = item.item_id
    return mark
