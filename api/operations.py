"""The IT operations service layer: what ``pacsai`` and the REST routes (``api.ops``) both call.

One method per operation. Those that change something take the actor the audit trail names
(``user:<name>`` from the CLI, the principal's subject over REST) and record it in the same
transaction as the change. Arguments are checked here, once for both callers, and refusals are
``RejectedInput``s (so ``pacsai`` answers them as before, exit 1) of three kinds the API answers
with their own status:

- ``NotFound`` (404): no such job, quarantine entry, deployed or configured model family, or
  configured version of one.
- ``Conflict`` (409): the thing is not in a state that allows it (a job not dead, an entry not
  held, a version already live or not deployed), or it changed meanwhile.
- ``InvalidArgument`` (422): a bad argument; ``field`` names it.

The refusals and the shared argument checks are ``api.refusals``; the model operations (deploy,
remove, show, promote, rollback) are ``api.model_operations.ModelOperations``, its base class.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from api.model_operations import ModelControl, ModelOperations, RayModelControl
from api.refusals import (
    HISTORY_MAX,
    LIMIT_MAX,
    REASON_MAX,
    Conflict,
    InvalidArgument,
    NotFound,
    check_reason,
)
from core.audit import AuditEntry, ChainBreak
from core.config import AppConfig
from core.errors import RejectedInput
from core.quarantine import QuarantineEntry, QuarantineState, parse_reference
from core.status import LedgerStatus
from core.types import JobState
from state.ledger import Ledger
from state.ledger.controls import AiScope, AiSwitchSetting
from state.ledger.jobs import JobSummary

__all__ = [
    "Conflict",
    "HISTORY_MAX",
    "InvalidArgument",
    "JobDetail",
    "LIMIT_MAX",
    "ModelControl",
    "NotFound",
    "Operations",
    "REASON_MAX",
    "RayModelControl",
]

logger = logging.getLogger(__name__)

_ID_MAX = 2**63 - 1  # both backends store IDs as signed 64-bit integers
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")  # PS3.5 9.1, at most 64 characters
_MODALITY = re.compile(r"^[A-Z0-9_]{1,16}$")  # PS3.5 6.2 CS value of Modality (0008,0060)


@dataclass(frozen=True, slots=True)
class JobDetail:
    """One job and its history: the audit events that name it, oldest first."""

    job: JobSummary
    history: tuple[AuditEntry, ...]


class Operations(ModelOperations):
    """The IT operations over one ledger (and, for models, one ``ModelControl``).

    Args:
        cfg: The installation's config (model families, for deploy).
        ledger: The ledger to read and change.
        models: The model applications; ``None`` where this process cannot reach Ray.
        now: The clock (seconds since the epoch).
    """

    def __init__(
        self,
        cfg: AppConfig,
        ledger: Ledger,
        models: ModelControl | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._cfg = cfg
        self._ledger = ledger
        self._models = models
        self._now = now

    # ------------------------------------------------------------------ status
    def status(self) -> LedgerStatus:
        """Jobs and instances per state, queues, quarantine, review flags, stage health."""
        return self._ledger.status.report(self._now())

    def readiness(self) -> str:
        """``''`` when the ledger answers a cheap read, else why not (for ``/readyz``)."""
        try:
            self._ledger.jobs.summary(0)  # one primary-key probe
        except Exception as exc:  # the boundary of a health check: any failure means "not ready"
            logger.warning("readiness: the ledger does not answer (%s)", type(exc).__name__)
            return f"the ledger does not answer ({type(exc).__name__})"
        return ""

    # -------------------------------------------------------------------- jobs
    def jobs(
        self,
        state: JobState | str | None = None,
        study_uid: str | None = None,
        limit: int = 100,
        before: int | None = None,
    ) -> list[JobSummary]:
        """Jobs newest first; the next page is ``before=<the last job_id>``.

        Raises:
            InvalidArgument: An unknown state, a malformed UID, a limit or ID out of range.
        """
        return self._ledger.jobs.summaries(
            _job_state(state),
            _uid("study", study_uid),
            _limit(limit),
            None if before is None else _id("before", before),
        )

    def job(self, job_id: int) -> JobDetail:
        """One job with its history (its audit events, oldest first).

        Raises:
            NotFound: No such job.
            InvalidArgument: The ID is out of range.
        """
        job = self._summary(job_id)
        history = self._ledger.audit.events(job.study_uid, HISTORY_MAX, job_id=job.job_id)
        return JobDetail(job, tuple(history))

    def dead_jobs(self, limit: int = 100, before: int | None = None) -> list[JobSummary]:
        """Dead jobs (retries exhausted), newest first.

        Raises:
            InvalidArgument: A limit or ID out of range.
        """
        return self.jobs(JobState.DEAD, None, limit, before)

    def replay(self, job_id: int, actor: str) -> JobState:
        """Put a dead job back into the state it died in, with a fresh retry budget (audited).

        Returns:
            The state it is in now.

        Raises:
            NotFound: No such job.
            Conflict: The job is not dead (or was replayed meanwhile).
            InvalidArgument: The ID is out of range.
        """
        job = self._summary(job_id)
        if job.state is not JobState.DEAD:
            raise Conflict(f"job {job_id}: got state {job.state}; expected a dead job", str(job_id))
        try:
            return self._ledger.jobs.replay(job_id, actor, self._now())
        except RejectedInput as exc:  # replayed by someone else since we looked
            raise Conflict(exc.reason, str(job_id)) from exc

    def _summary(self, job_id: int) -> JobSummary:
        job = self._ledger.jobs.summary(_id("job_id", job_id))
        if job is None:
            raise NotFound(f"job_id: got {job_id}; expected the ID of an existing job", str(job_id))
        return job

    # -------------------------------------------------------------- quarantine
    def quarantine_list(
        self,
        state: QuarantineState | str | None = QuarantineState.HELD,
        study_uid: str | None = None,
        limit: int = 200,
    ) -> list[QuarantineEntry]:
        """Quarantine entries, newest first (``state=None``: every state).

        Raises:
            InvalidArgument: An unknown state, a malformed UID, a limit out of range.
        """
        return self._ledger.quarantine.entries(_quarantine_state(state), _uid("study", study_uid), _limit(limit))

    def quarantine_show(self, reference: str) -> list[QuarantineEntry]:
        """The entries a reference names: ``Q<n>``, or a SOP Instance, Series or Study UID.

        Raises:
            NotFound: Nothing in quarantine has that ID or UID.
            InvalidArgument: The reference is neither.
        """
        try:
            parse_reference(reference)
        except RejectedInput as exc:
            raise InvalidArgument(exc.reason, "id") from exc
        try:
            return self._ledger.quarantine.resolve(reference)
        except RejectedInput as exc:  # well-formed, so: it names nothing
            raise NotFound(exc.reason, reference.strip()) from exc

    def quarantine_release(self, reference: str, actor: str, reason: str) -> list[QuarantineEntry]:
        """Release the held entries a reference names: accept their codes, reopen their studies.

        Raises:
            NotFound: Nothing in quarantine has that ID or UID.
            Conflict: None of them is held (or one was decided meanwhile).
            InvalidArgument: A malformed reference, or no reason.
        """
        text = check_reason(reason, "release", required=True)
        self._held(reference, "release")
        try:
            return self._ledger.quarantine.release(reference, actor, text, self._now())
        except RejectedInput as exc:  # another operator decided since we looked
            raise Conflict(exc.reason, reference) from exc

    def quarantine_discard(self, reference: str, actor: str, reason: str) -> list[QuarantineEntry]:
        """Discard the held entries a reference names: never processed; the files stay, marked.

        Raises:
            NotFound: Nothing in quarantine has that ID or UID.
            Conflict: None of them is held (or one was decided meanwhile).
            InvalidArgument: A malformed reference, or no reason.
        """
        text = check_reason(reason, "discard", required=True)
        self._held(reference, "discard")
        try:
            return self._ledger.quarantine.discard(reference, actor, text, self._now())
        except RejectedInput as exc:
            raise Conflict(exc.reason, reference) from exc

    def _held(self, reference: str, action: str) -> None:
        entries = self.quarantine_show(reference)
        if not any(e.state is QuarantineState.HELD for e in entries):
            states = ", ".join(sorted({e.state.value for e in entries}))
            raise Conflict(f"{reference}: got state {states}; expected a held instance to {action}", reference)

    # ------------------------------------------------------------- AI switches
    def ai_switches(self) -> list[AiSwitchSetting]:
        """Every AI switch set so far (per study and per modality), who set it and why."""
        return self._ledger.controls.switch_settings()

    def set_ai_switch(self, scope: str, key: str, on: bool, reason: str, actor: str) -> AiSwitchSetting:
        """Switch AI on or off for a study or a modality (effective at the next routing; audited).

        Raises:
            InvalidArgument: An unknown scope, a malformed UID or modality, a bad reason.
        """
        if scope not in AiScope:
            raise InvalidArgument(f"scope: got {scope[:20]!r}; expected 'study' or 'modality'", "scope")
        key = (_uid("key", key) or "") if scope == "study" else _modality(key)
        if not key:
            raise InvalidArgument("key: got nothing; expected a Study Instance UID", "key")
        setting = AiSwitchSetting(scope, key, on, check_reason(reason, "switch AI", required=False), actor, self._now())
        self._ledger.controls.set_ai_switch(scope, key, on, setting.reason, actor, setting.at)
        return setting

    # ------------------------------------------------------------------- audit
    def audit_events(self, study_uid: str | None = None, limit: int = 200, after: int = 0) -> list[AuditEntry]:
        """Audit events in chain order, oldest first; the next page is ``after=<the last seq>``.

        Raises:
            InvalidArgument: A malformed UID, a limit or sequence number out of range.
        """
        if not 0 <= after <= _ID_MAX:
            raise InvalidArgument(f"after: got {after}; expected 0 to {_ID_MAX}", "after")
        return self._ledger.audit.events(_uid("study", study_uid), _limit(limit), after=after)

    def audit_verify(self) -> ChainBreak | None:
        """Check the whole hash chain; ``None`` when intact, else the first break."""
        return self._ledger.audit.verify()


def _limit(limit: int) -> int:
    if not 1 <= limit <= LIMIT_MAX:
        raise InvalidArgument(f"limit: got {limit}; expected 1 to {LIMIT_MAX}", "limit")
    return limit


def _id(field: str, value: int) -> int:
    if not 1 <= value <= _ID_MAX:
        raise InvalidArgument(f"{field}: got {value}; expected 1 to {_ID_MAX}", field)
    return value


def _uid(field: str, value: str | None) -> str | None:
    """A UID argument, or ``None`` when not given (PS3.5 9.1: digits and dots, at most 64)."""
    if not value:
        return None
    if len(value) > 64 or not _UID.match(value):
        raise InvalidArgument(f"{field}: got {value[:70]!r}; expected a UID (digits and dots, at most 64)", field)
    return value


def _modality(value: str) -> str:
    key = value.upper()
    if not _MODALITY.match(key):
        raise InvalidArgument(
            f"key: got {value[:20]!r}; expected a modality (at most 16 letters, digits or '_', e.g. CR)", "key"
        )
    return key


def _job_state(state: JobState | str | None) -> JobState | None:
    if state is None or isinstance(state, JobState):
        return state
    try:
        return JobState(state)
    except ValueError:
        raise InvalidArgument(
            f"state: got {state[:20]!r}; expected one of {[s.value for s in JobState]}", "state"
        ) from None


def _quarantine_state(state: QuarantineState | str | None) -> QuarantineState | None:
    if state is None or isinstance(state, QuarantineState):
        return state
    try:
        return QuarantineState(state)
    except ValueError:
        expected = [s.value for s in QuarantineState]
        raise InvalidArgument(f"state: got {state[:20]!r}; expected one of {expected}", "state") from None
