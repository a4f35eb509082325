"""The alert policy a process holds: loaded at start, re-read when asked after a while, audited once.

``PolicyHolder`` reads ``clinical.policy_file`` (``core.alert_policy``) at start: a file that is
unreadable, not a policy, or that names a model family or finding no configured model has
(``policy_problems``: a typo would silently hide a finding) is a ``ConfigError`` (an API replica
does not start; the webhook loop reports itself failing and tries again). Each API replica and
each delivery actor's webhook loop holds one, so a change is taken by every one of them within
``policy_reload_s`` of being asked for the policy. Afterwards the file is read again at most every ``clinical.policy_reload_s``
when the policy is asked for (``current``, or ``reload`` for ``POST .../policy/reload``):

- the same content (SHA-256): nothing happens;
- a valid change is taken at once and recorded in ``alert_policy_versions`` with an
  ``ALERT_POLICY_CHANGED`` audit event naming what changed; the ledger records it only if it is
  not already the newest policy taken, so several holders seeing one change write one event;
- an invalid file is refused: the policy in force stays, the problems are logged, and an
  ``ALERT_POLICY_REJECTED`` event is written once per bad digest.

The holder is also a plain callable (``holder()`` is ``holder.current()``), the shape the
server-sent events and the webhook dispatcher take the policy in.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from core.alert_policy import AlertPolicy, parse_policy, policy_changes, policy_problems
from core.audit import AuditEvent
from core.errors import ConfigError
from core.types import AuditEventType
from state.ledger.clinical import Clinical

__all__ = ["PolicyCheck", "PolicyHolder"]

logger = logging.getLogger(__name__)

ACTOR = "api:alert-policy"
"""The audit actor of policy loads (``PolicyHolder(actor=...)`` names the process)."""


@dataclass(frozen=True, slots=True)
class PolicyCheck:
    """What one look at the file found.

    Attributes:
        digest: SHA-256 of the policy in force afterwards.
        changed: Whether a new policy was taken.
        changes: What changed (``core.alert_policy.policy_changes``), empty when nothing did.
    """

    digest: str
    changed: bool
    changes: tuple[str, ...] = ()


class PolicyHolder:
    """One replica's alert policy (see the module)."""

    def __init__(
        self,
        path: str | Path,
        reload_s: float,
        families: Mapping[str, Iterable[str]],
        clinical: Clinical | None = None,
        clock: Callable[[], float] = time.time,
        actor: str = ACTOR,
    ) -> None:
        """Load the policy (and record it when it is new to the ledger).

        Args:
            path: ``clinical.policy_file``.
            reload_s: Least time between two reads of the file.
            families: Model family -> finding keys (``core.clinical.model_findings``).
            clinical: Where changes are recorded and audited (``ledger.clinical``); ``None``: not.
            clock: Wall clock (epoch seconds).
            actor: Who loaded it, for the audit (``api:alert-policy``, ``stage:delivery``).

        Raises:
            ConfigError: The file cannot be read or is not a valid policy for these models.
        """
        self._path = Path(path)
        self._reload_s = reload_s
        self._families = {f: list(keys) for f, keys in families.items()}
        self._clinical = clinical
        self._clock = clock
        self._actor = actor
        self._lock = threading.Lock()
        self._checked = time.monotonic()
        self._refused: ConfigError | None = None
        """The last file refused (``source``: its digest), so it is not parsed and audited again."""
        text = self._read()
        self._digest = hashlib.sha256(text).hexdigest()
        self._policy = self._parse(text)
        self._record(self._digest, policy_changes(None, self._policy))

    @property
    def digest(self) -> str:
        """SHA-256 of the policy in force."""
        return self._digest

    def current(self) -> AlertPolicy:
        """The policy in force, re-reading the file first when ``reload_s`` has passed."""
        if time.monotonic() - self._checked >= self._reload_s:
            try:
                self.reload()
            except ConfigError:
                pass  # refused (logged and audited); the policy in force stays
        return self._policy

    def __call__(self) -> AlertPolicy:
        """``current()``: the holder as a policy source."""
        return self.current()

    def reload(self) -> PolicyCheck:
        """Read the file now and take it if it changed.

        Raises:
            ConfigError: The file is refused (the policy in force stays): one problem per field.
        """
        with self._lock:
            self._checked = time.monotonic()
            try:
                text = self._read()
            except ConfigError as exc:
                logger.error("alert policy %s: %s; keeping the one in force", self._path.name, "; ".join(exc.problems))
                raise
            digest = hashlib.sha256(text).hexdigest()
            if digest == self._digest:
                return PolicyCheck(digest, False)
            if self._refused is not None and self._refused.source == digest:
                raise ConfigError(str(self._path), self._refused.problems)  # refused already: logged, audited
            try:
                policy = self._parse(text)
            except ConfigError as exc:
                self._refused = ConfigError(digest, exc.problems)
                logger.error(
                    "alert policy %s (sha256 %s) refused: %s; keeping the one in force",
                    self._path.name,
                    digest[:12],
                    "; ".join(exc.problems),
                )
                self._rejected(digest, exc.problems)
                raise
            changes = tuple(policy_changes(self._policy, policy))
            self._policy, self._digest = policy, digest
            self._record(digest, list(changes))
            logger.info("alert policy %s taken (sha256 %s): %s", self._path.name, digest[:12], ", ".join(changes))
            return PolicyCheck(digest, True, changes)

    def _read(self) -> bytes:
        try:
            return self._path.read_bytes()
        except OSError as exc:
            raise ConfigError(str(self._path), [f"cannot be read ({exc.strerror or exc})"]) from None

    def _parse(self, text: bytes) -> AlertPolicy:
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(str(self._path), [f"not YAML ({str(exc).splitlines()[0]})"]) from None
        policy = parse_policy(raw, str(self._path))
        problems = policy_problems(policy, self._families)
        if problems:
            raise ConfigError(str(self._path), problems)
        return policy

    def _record(self, digest: str, changes: list[str]) -> None:
        if self._clinical is None:
            return
        event = AuditEvent(
            AuditEventType.ALERT_POLICY_CHANGED,
            self._actor,
            detail={"digest": digest, "file": self._path.name, "changes": changes[:50]},
        )
        self._clinical.record_policy(digest, changes, event, self._clock())

    def _rejected(self, digest: str, problems: list[str]) -> None:
        if self._clinical is None:
            return
        event = AuditEvent(
            AuditEventType.ALERT_POLICY_REJECTED,
            self._actor,
            detail={"digest": digest, "file": self._path.name, "problems": problems[:20]},
        )
        self._clinical.record_policy_rejected(digest, problems, event, self._clock())
