"""``pacsai ehr list | replay``: the EHR outbox's reports, and dead ones sent again.

A report is ``dead`` once the FHIR endpoint refused it ``ehr.max_attempts`` times (or its
Bundle could never be sent); the EHR delivery actor then leaves it. When the cause is mended
(a mapping fixed at the EHR, a server back from a long outage) an operator puts it back:
pending, due now, a fresh retry budget, with one ``ehr_report_replayed`` audit event per report
naming the operator. The report store and the ledger are two stores: the reports are made
pending first, then audited, so a crash between the two leaves a replay without its event,
never an event without its replay. The listing carries UIDs, states and the last error's code
(``HTTP 422``), never a Bundle or the endpoint's error text (either may name the patient).
"""

from __future__ import annotations

import argparse
import json
import time

from core.audit import AuditEvent
from core.config import AppConfig
from core.numbers import ascii_int
from core.types import AuditEventType
from state.ehr_outbox import EhrOutbox
from state.layout import VarLayout
from state.ledger import Ledger, open_database

__all__ = ["ehr_list", "ehr_replay", "register_ehr"]

STATES = ("pending", "delivered", "dead")


def _outbox(cfg: AppConfig) -> EhrOutbox:
    """The EHR store (open the ledger first: that loads the data keys its columns are sealed with)."""
    return EhrOutbox(open_database(cfg.storage.ledger, VarLayout.at(cfg.storage.var_dir), "ehr"))


def ehr_list(cfg: AppConfig, ledger: Ledger, state: str, limit: int, as_json: bool) -> int:
    """Print the reports in ``state`` (``all``: every state), newest first."""
    outbox = _outbox(cfg)
    try:
        rows = outbox.listing(None if state == "all" else state, limit)
        counts = outbox.counts()
    finally:
        outbox.close()
        ledger.close()
    if as_json:
        print(json.dumps({"counts": counts, "reports": rows}))
        return 0
    print("reports: " + ", ".join(f"{s} {counts[s]}" for s in STATES))
    for r in rows:
        error = f"  {r['error']}" if r["error"] else ""
        print(f"E{r['item_id']:<6} {r['state']:<9} attempts {r['attempts']:<3} SR {r['sr_uid']}{error}")
    return 0


def ehr_replay(cfg: AppConfig, ledger: Ledger, items: list[int], all_dead: bool, user: str, reason: str) -> int:
    """Replay dead reports (audited); exit 1 when none of those named was dead."""
    outbox = _outbox(cfg)
    try:
        if all_dead:
            items = [int(r["item_id"]) for r in outbox.listing("dead", limit=1_000_000)]
        now = time.time()
        replayed = outbox.replay(items, now)
    finally:
        outbox.close()
    events = [
        AuditEvent(
            AuditEventType.EHR_REPORT_REPLAYED,
            f"user:{user}",
            r.study_uid,
            r.sr_uid,
            r.job_id,
            {"item_id": r.item_id, "attempts": r.attempts, "reason": reason},
        )
        for r in replayed
    ]
    try:
        if events:
            ledger.audit.append(events, now)
    finally:
        ledger.close()
    done = {r.item_id for r in replayed}
    for item in items:
        print(
            f"E{item}: {'replayed: pending, due now' if item in done else 'not dead (or no such report): left as it is'}"
        )
    if not items:
        print("no dead reports")
    return 0 if done or (all_dead and not items) else 1


def _item(text: str) -> int:
    value = ascii_int(text[1:] if text[:1] in ("E", "e") else text)
    if value is None:
        raise argparse.ArgumentTypeError(f"got {text!r}; expected a report ID such as E12 (pacsai ehr list)")
    return value


def register_ehr(add: argparse.ArgumentParser) -> None:
    """The ``ehr`` sub-commands under ``add`` (``pacsai ehr``)."""
    example = (
        "Example:\n  pacsai ehr list --state dead\n  pacsai ehr replay E12 E13 --user rita --reason 'EHR mapping fixed'"
    )
    add.epilog = example
    sub = add.add_subparsers(dest="ehr_command", required=True)
    ls = sub.add_parser("list", help="reports in the EHR outbox (no Bundles)", epilog=example)
    ls.add_argument("--state", choices=[*STATES, "all"], default="dead")
    ls.add_argument("--limit", type=int, default=200)
    ls.add_argument("--json", action="store_true")
    ls.add_argument("--config", default=argparse.SUPPRESS, help="config YAML file")
    rp = sub.add_parser("replay", help="send dead reports again with a fresh retry budget (audited)", epilog=example)
    which = rp.add_mutually_exclusive_group(required=True)
    which.add_argument("items", nargs="*", type=_item, default=[], help="report IDs (E<n>, from ehr list)")
    which.add_argument("--all-dead", action="store_true", help="every dead report")
    rp.add_argument("--user", default="operator")
    rp.add_argument("--reason", default="")
    rp.add_argument("--config", default=argparse.SUPPRESS, help="config YAML file")
