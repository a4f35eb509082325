"""Paging webhooks for critical findings (issue 12): a loop hosted by the delivery actor.

Each round of ``AlertPusher.run_once`` does two durable steps:

1. Plan: read ``alert_items`` after the ``webhooks`` cursor; for each present critical
   finding, one push per role ``core.pushes.webhook_targets`` names (a push role with a
   webhook URL); queue them and move the cursor in one transaction (``ledger.pushes.plan``;
   the cursor waits at a gap in the ids until it settles, ``core.pushes.settled``).
   Items older than ``STALE_S`` when first read are passed over: turning the policy on must
   not page a department with last month's findings.
2. Send: claim the due pushes and POST each (``actors.adapters.webhook``). The policy in
   force *now* is asked again first: a role a reload removed, or one that no longer shows the
   finding or no longer pushes, gets nothing (the push is closed as withdrawn). 2xx is
   delivered, with an ``ALERT_PUSHED`` audit event; otherwise ``core.pushes`` decides when to
   try again and when to give up (dead, audited).

Every delivery actor may host the loop (claims keep two from sending one push). The policy
comes from a ``state.policy_file.PolicyHolder``, the same holder the API replicas use: the file
re-read when it changes, a broken version refused (the old one kept, logged, audited once).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping

from actors.adapters.webhook import WebhookClient
from actors.polling import Loop, SystemClock
from core.alert_policy import AlertPolicy
from core.audit import AuditEvent
from core.config import ClinicalConfig, WebhookConfig
from core.ports import Clock
from core.pushes import PushVerdict, classify, is_dead, next_attempt_at, push_payload, settled, webhook_targets
from core.types import AuditEventType
from state.ledger import Ledger
from state.ledger.pushes import DuePush
from state.policy_file import PolicyHolder

__all__ = ["AlertPusher", "STALE_S", "alert_pusher_loop"]

logger = logging.getLogger(__name__)

STALE_S = 3600.0
"""Items recorded longer ago than this when the dispatcher first reads them are not paged."""
PERIOD_S = 0.2
"""How often the loop looks for new items (it goes again at once after a busy round)."""


class _PolicySource:
    """The loop's ``PolicyHolder``, made on first use: a policy file refused at start makes each
    round fail (the loop reports itself failing, with the problems) until it is mended."""

    def __init__(self, make: Callable[[], PolicyHolder]) -> None:
        self._make = make
        self._holder: PolicyHolder | None = None

    def __call__(self) -> AlertPolicy:
        if self._holder is None:
            self._holder = self._make()
        return self._holder()


class AlertPusher:
    """Plans and sends the webhook pushes; each ``run_once`` is one round."""

    def __init__(
        self,
        ledger: Ledger,
        policy: Callable[[], AlertPolicy | None],
        client: WebhookClient,
        cfg: WebhookConfig,
        clock: Clock | None = None,
        actor: str = "stage:alert_pusher",
        batch: int = 200,
    ) -> None:
        """Args:
        ledger: This process's ledger.
        policy: The policy in force (called each round; ``None``: nothing is planned or sent).
        client: The webhook HTTP client.
        cfg: ``clinical.webhooks``.
        clock: Wall clock.
        actor: Audit name.
        batch: Most items read, and pushes sent, per round.
        """
        self._ledger, self._policy, self._client, self._cfg = ledger, policy, client, cfg
        self._clock = clock or SystemClock()
        self._actor = actor
        self._batch = batch
        self._lease_s = cfg.timeout_s * 2 + 10

    def run_once(self) -> int:
        """Plan what is new, send what is due; return how much was done."""
        policy = self._policy()
        if policy is None:
            return 0
        return self.plan_round(policy) + self.send_round(policy)

    def plan_round(self, policy: AlertPolicy) -> int:
        """Queue pushes for the items after the cursor; return how many pushes were new, plus
        one when the cursor moved (items past a young gap in the ids are planned now and
        again until the gap settles: ``core.pushes.settled``)."""
        pushes = self._ledger.pushes
        cursor = pushes.cursor()
        items = pushes.items_after(cursor, self._batch)
        if not items:
            return 0
        now = self._clock.now()
        planned = [
            (item.item_id, role)
            for item in items
            if item.created_at >= now - STALE_S
            for role in webhook_targets(policy, item.alert)
        ]
        upto = settled(cursor, items, now)
        return pushes.plan(upto, planned, now) + int(upto > cursor)

    def send_round(self, policy: AlertPolicy) -> int:
        """POST the due pushes; return how many were tried."""
        due = self._ledger.pushes.claim_due(self._clock.now(), self._lease_s, self._batch)
        for push in due:
            self._send(policy, push)
        return len(due)

    def _send(self, policy: AlertPolicy, push: DuePush) -> None:
        pushes = self._ledger.pushes
        spec = policy.roles.get(push.role)
        if spec is None or not spec.webhook or push.role not in webhook_targets(policy, push.item.alert):
            now = self._clock.now()
            pushes.note_failure(
                push.push_id,
                "withdrawn: the policy no longer pushes it to this role",
                now,
                now,
                self._event(push, None, "withdrawn"),
            )
            return
        key = f"{push.item.item_id}:{push.role}"
        answer = self._client.post(spec.webhook, push_payload(push.item, push.role), key)
        verdict, attempts, now = classify(answer.status), push.attempts + 1, self._clock.now()
        if verdict is PushVerdict.DELIVERED:
            pushes.mark_delivered(push.push_id, now, self._event(push, answer.status, "delivered"))
            return
        dead = is_dead(verdict, attempts, self._cfg.max_attempts)
        logger.warning(
            "push %d (role %s, study %s): %s (attempt %d%s)",
            push.push_id,
            push.role,
            push.item.study_uid,
            answer.error,
            attempts,
            ", given up" if dead else "",
        )
        pushes.note_failure(
            push.push_id,
            answer.error,
            next_attempt_at(attempts, now, self._cfg.backoff_s),
            now,
            self._event(push, answer.status, "dead") if dead else None,
        )

    def _event(self, push: DuePush, status: int | None, outcome: str) -> AuditEvent:
        """The ``ALERT_PUSHED`` event: role, answer, attempts; the study and SR as its object."""
        item = push.item
        return AuditEvent(
            AuditEventType.ALERT_PUSHED,
            self._actor,
            item.study_uid,
            item.sr_uid,
            detail={
                "role": push.role,
                "status": status,
                "attempts": push.attempts + (outcome != "withdrawn"),
                "outcome": outcome,
                "family": item.alert.family,
                "finding": item.alert.key,
                "item_id": item.item_id,
            },
        )


def alert_pusher_loop(
    ledger: Ledger,
    clinical: ClinicalConfig,
    clock: Clock,
    name: str,
    families: Mapping[str, Iterable[str]] | None = None,
) -> Loop | None:
    """The webhook loop of one delivery actor (``None``: no policy file configured).

    Args:
        ledger: The actor's ledger.
        clinical: ``clinical`` (policy file, reload period, webhooks).
        clock: Wall clock.
        name: The actor's name (the loop is ``<name>:alert-pusher`` in health).
        families: Model family -> finding keys (``core.clinical.model_findings``), to refuse a
            policy naming what no model has, as the API does.
    """
    if not clinical.policy_file:
        return None
    path, reload_s = clinical.policy_file, clinical.policy_reload_s
    policy = _PolicySource(
        lambda: PolicyHolder(path, reload_s, families or {}, ledger.clinical, actor=f"{name}:alert-pusher")
    )
    pusher = AlertPusher(ledger, policy, WebhookClient(clinical.webhooks), clinical.webhooks, clock)
    return Loop(f"{name}:alert-pusher", pusher.run_once, PERIOD_S, eager=True, clock=clock)
