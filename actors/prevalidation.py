"""Validate instances while their study is still receiving, so completion is not followed by a
long validation pass (issue #5: inference within 0.5 s of the last instance).

A study completed on PACS evidence reaches the validator at once. Reading and checking 400
instances there took ~0.45 s on this machine, most of the 0.5 s budget. Checking one instance
does not depend on the rest of its study, so the validator stage checks the instances of
receiving studies in the background and keeps the verdicts in memory, keyed by SOP Instance UID
and sha256. At completion only instances not yet checked are read. The cache is only an
optimisation: a restarted validator starts empty and checks everything, as before.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

from core.types import InstanceMeta, ValidationIssue
from state.ledger import Ledger

__all__ = ["PreValidator", "VerdictCache"]


class VerdictCache:
    """Validation verdicts by ``(sop_instance_uid, sha256)``, the oldest dropped beyond ``size``."""

    def __init__(self, size: int = 100_000) -> None:
        self._size = size
        self._items: OrderedDict[tuple[str, str], list[ValidationIssue]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0

    def get(self, inst: InstanceMeta) -> list[ValidationIssue] | None:
        """The cached verdict of an instance (the same bytes), if any."""
        with self._lock:
            found = self._items.get((inst.sop_instance_uid, inst.sha256))
            self.hits += found is not None
            return list(found) if found is not None else None

    def put(self, inst: InstanceMeta, issues: list[ValidationIssue]) -> None:
        """Remember the verdict of an instance."""
        with self._lock:
            self._items[(inst.sop_instance_uid, inst.sha256)] = list(issues)
            while len(self._items) > self._size:
                self._items.popitem(last=False)

    def discard(self, instances: list[InstanceMeta]) -> None:
        """Forget the verdicts of instances whose study has been validated (a later version of
        the study checks them again: rare, and only a re-read)."""
        with self._lock:
            for inst in instances:
                self._items.pop((inst.sop_instance_uid, inst.sha256), None)

    def __contains__(self, inst: InstanceMeta) -> bool:
        with self._lock:
            return (inst.sop_instance_uid, inst.sha256) in self._items


class PreValidator:
    """Checks instances of receiving studies (one ``run_once`` per round of its loop)."""

    def __init__(
        self,
        ledger: Ledger,
        check: Callable[[InstanceMeta], list[ValidationIssue]],
        cache: VerdictCache,
    ) -> None:
        self._ledger = ledger
        self._check = check
        self._cache = cache
        self.checked = 0
        self.cancelled = threading.Event()
        """Set to end a round early (the actor is stopping)."""

    def run_once(self) -> int:
        """Check every not yet checked instance of a receiving study; return how many."""
        done = 0
        for inst in self._ledger.intake.receiving_instances():
            if self.cancelled.is_set():
                break
            if inst not in self._cache:
                self._cache.put(inst, self._check(inst))
                done += 1
        self.checked += done
        return done
