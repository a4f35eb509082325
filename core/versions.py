"""SR versions of one study and model family: one in flight, in order, chained, capped.

Each job version of a study that runs a model family yields one SR version (``jobs.version``;
DESIGN.md "Idempotency"). Without rules, a study completed too early produced a storm: 14 to 26
versions, forks in the predecessor chain, and partial first reports (issue 18). The rules:

- **At most one version in flight** per study and family. While one is being stored to the PACS
  (``SENDING``), newer versions wait.
- **A newer version supersedes one not yet delivered**: an older ``PENDING`` (or ``HELD``)
  version is marked ``SUPERSEDED`` and never sent. While a newer job version of the study is
  still on its way (``PLANNED``), the older one waits for it rather than going out stale.
- **Versions reach the PACS in order, each naming the previous delivered one** as its
  predecessor (Predecessor Documents Sequence, PS3.3 C.17.2.3): the predecessor is chosen when
  the version is sent, not when it was built, so the chain never forks. A version built naming
  another predecessor must be rebuilt (``DeliveryPlan.rebuild``; its SOP Instance UID does
  not depend on the predecessor).
- **A cap** (``sr.max_versions``) on versions per study and family sent to the PACS. A further
  version is ``HELD``, and ``CapReached`` becomes an operator-visible warning (review flag).
- **A partial result is marked** when it must be sent: an ``Incompleteness`` becomes an
  ``incomplete_series`` image-quality flag (TID 1501 group in the SR, ``core.sr``).

Everything here is a pure function of the versions' states; the ledger stores them.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass
from typing import Any

from core.records import QualityFlag

__all__ = [
    "CapReached",
    "DeliveryAction",
    "DeliveryPlan",
    "INCOMPLETE_SERIES",
    "IncompleteReason",
    "Incompleteness",
    "SRVersion",
    "VersionState",
    "WritePlan",
    "plan_delivery",
    "plan_write",
]


INCOMPLETE_SERIES = "incomplete_series"
"""The image-quality flag key of a partial result (``core.findings``: QC001)."""


class IncompleteReason(enum.StrEnum):
    """Why a result covers less than the whole study."""

    DISCONTINUED = "discontinued"
    """The modality discontinued the procedure step (MPPS), or the RIS the order."""
    MISSING_INSTANCES = "missing_instances"
    """Evidence (MPPS, IAN, PACS counts) listed instances that had not arrived by max_wait."""
    NOT_FINISHED = "not_finished"
    """The modality never reported its procedure step finished (MPPS IN PROGRESS at max_wait)."""
    NEWER_INSTANCES = "newer_instances"
    """Instances arrived after this version was made, and the version covering them failed."""


_WORDS = {
    IncompleteReason.DISCONTINUED: "the procedure was discontinued; only what arrived was analysed",
    IncompleteReason.MISSING_INSTANCES: "instances listed as part of the study never arrived",
    IncompleteReason.NOT_FINISHED: "the modality never reported the procedure step finished",
    IncompleteReason.NEWER_INSTANCES: "instances that arrived later are not covered",
}


@dataclass(frozen=True, slots=True)
class Incompleteness:
    """What is known to be missing from a result (marked in its SR).

    Attributes:
        reason: Why.
        missing: How many instances are known to be missing (0: unknown).
        series_uids: Series known to be incomplete (empty: every series the result covers).
    """

    reason: IncompleteReason
    missing: int = 0
    series_uids: tuple[str, ...] = ()

    def describe(self) -> str:
        """The incompleteness in words, for the SR and the audit trail.

        >>> Incompleteness(IncompleteReason.MISSING_INSTANCES, 3).describe()
        'Incomplete study: instances listed as part of the study never arrived (3 missing).'
        """
        count = f" ({self.missing} missing)" if self.missing else ""
        return f"Incomplete study: {_WORDS[self.reason]}{count}."

    def quality_flags(self, covered_series: Sequence[str]) -> tuple[QualityFlag, ...]:
        """``incomplete_series`` image-quality flags for ``Prediction.quality_flags``.

        Args:
            covered_series: Series Instance UIDs the result was made from.

        Returns:
            One flag per incomplete series the result covers (every covered series when the
            incomplete ones are not known).
        """
        named = [s for s in covered_series if s in self.series_uids]
        return tuple(
            QualityFlag(INCOMPLETE_SERIES, s, float(max(self.missing, 1)), 1.0, self.describe())
            for s in (named or list(covered_series))
        )

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        return {"reason": str(self.reason), "missing": self.missing, "series_uids": list(self.series_uids)}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Incompleteness:
        """Read what ``to_json`` wrote."""
        return cls(IncompleteReason(raw["reason"]), int(raw.get("missing", 0)), tuple(raw.get("series_uids", ())))


class VersionState(enum.StrEnum):
    """Where one SR version of a study and family stands."""

    PLANNED = "planned"
    """Its job version exists (instances arrived) but the SR is not written yet."""
    PENDING = "pending"
    """Written to the outbox; not sent."""
    SENDING = "sending"
    """A C-STORE of it to the PACS is under way."""
    DELIVERED = "delivered"
    """The PACS accepted it."""
    SUPERSEDED = "superseded"
    """A newer version replaced it before it was sent: never sent."""
    HELD = "held"
    """Not sent: the study reached ``sr.max_versions``; waits for an operator."""
    ABANDONED = "abandoned"
    """Its job ended without this SR (dead, skipped, quarantined) or delivery failed for good."""


_WAITING = frozenset({VersionState.PENDING, VersionState.HELD})
_WRITTEN = frozenset({VersionState.PENDING, VersionState.HELD, VersionState.SENDING, VersionState.DELIVERED})


@dataclass(frozen=True, slots=True)
class SRVersion:
    """One SR version of a study and model family.

    Attributes:
        version: The job version that makes it (grows with each new version of the study).
        state: Where it stands.
        sop_instance_uid: The SR's SOP Instance UID (empty while ``PLANNED``).
        predecessor_uid: The predecessor it was built naming (empty: none).
        incomplete: Whether it was built marked incomplete.
    """

    version: int
    state: VersionState
    sop_instance_uid: str = ""
    predecessor_uid: str = ""
    incomplete: bool = False


class DeliveryAction(enum.StrEnum):
    """What delivery does with a study and family's versions now."""

    SEND = "send"
    """Send ``DeliveryPlan.version`` (rebuilt first if ``rebuild``)."""
    WAIT = "wait"
    """A version is in flight, or a newer one is coming: send nothing yet."""
    HOLD = "hold"
    """The cap is reached: mark the version held and warn the operator."""
    NOTHING = "nothing"
    """Nothing waits to be sent."""


@dataclass(frozen=True, slots=True)
class CapReached:
    """A study and family reached ``sr.max_versions``: an operator-visible warning."""

    study_uid: str
    family: str
    delivered: int
    cap: int
    version: int

    def audit_detail(self) -> dict[str, Any]:
        """The detail of the audit event and review flag."""
        return {"family": self.family, "delivered": self.delivered, "cap": self.cap, "held_version": self.version}


@dataclass(frozen=True, slots=True)
class DeliveryPlan:
    """What to send, supersede and name as predecessor.

    Attributes:
        action: What to do now.
        version: The version to send or hold.
        predecessor_uid: The SOP Instance UID it must name as predecessor ("" : none).
        rebuild: It was built naming another predecessor (or unmarked although partial).
        supersede: Versions to mark ``SUPERSEDED`` (never sent).
        incomplete: Set when the version must be sent marked partial.
        cap: Set with ``HOLD``.
        reason: In words, for logs and the audit trail.
    """

    action: DeliveryAction
    version: SRVersion | None = None
    predecessor_uid: str = ""
    rebuild: bool = False
    supersede: tuple[int, ...] = ()
    incomplete: Incompleteness | None = None
    cap: CapReached | None = None
    reason: str = ""


def _by_version(versions: Iterable[SRVersion]) -> list[SRVersion]:
    return sorted(versions, key=lambda v: v.version)


def plan_delivery(
    study_uid: str,
    family: str,
    versions: Iterable[SRVersion],
    max_versions: int,
    released: Set[int] = frozenset(),
) -> DeliveryPlan:
    """Decide what delivery does with the SR versions of one study and model family.

    Args:
        study_uid: The study.
        family: The model family.
        versions: Every version of the study and family, in any order.
        max_versions: ``sr.max_versions``.
        released: Versions an operator released over the cap.

    Returns:
        The plan (see the module docstring for the rules).

    >>> vs = [SRVersion(1, VersionState.DELIVERED, "sr1"), SRVersion(2, VersionState.PENDING, "sr2"),
    ...       SRVersion(3, VersionState.PENDING, "sr3", "sr1")]
    >>> plan = plan_delivery("st", "ct", vs, 5)
    >>> plan.action, plan.version.version, plan.predecessor_uid, plan.rebuild, plan.supersede
    (<DeliveryAction.SEND: 'send'>, 3, 'sr1', False, (2,))
    """
    ordered = _by_version(versions)
    delivered = [v for v in ordered if v.state is VersionState.DELIVERED]
    last = delivered[-1] if delivered else None
    waiting = [v for v in ordered if v.state in _WAITING]
    if not waiting:
        return DeliveryPlan(DeliveryAction.NOTHING, reason="nothing waits to be sent")
    newest, stale = waiting[-1], tuple(v.version for v in waiting[:-1])
    if last is not None and newest.version < last.version:
        return DeliveryPlan(
            DeliveryAction.NOTHING,
            supersede=stale + (newest.version,),
            reason=f"version {last.version} was delivered already",
        )
    blocking = _blocking(ordered, newest)
    if blocking:
        return DeliveryPlan(DeliveryAction.WAIT, newest, supersede=stale, reason=blocking)
    predecessor = last.sop_instance_uid if last is not None else ""
    if len(delivered) >= max_versions and newest.version not in released:
        cap = CapReached(study_uid, family, len(delivered), max_versions, newest.version)
        return DeliveryPlan(
            DeliveryAction.HOLD,
            newest,
            predecessor,
            supersede=stale,
            cap=cap,
            reason=f"{len(delivered)} versions delivered, the cap is {max_versions}",
        )
    incomplete = _newer_lost(ordered, newest)
    rebuild = newest.predecessor_uid != predecessor or (incomplete is not None and not newest.incomplete)
    return DeliveryPlan(
        DeliveryAction.SEND,
        newest,
        predecessor,
        rebuild,
        stale,
        incomplete,
        reason=f"version {newest.version} after {last.version if last else 'none'}",
    )


def _blocking(ordered: Sequence[SRVersion], newest: SRVersion) -> str:
    """Why ``newest`` may not be sent yet ("" : it may)."""
    for v in ordered:
        if v.state is VersionState.SENDING:
            return f"version {v.version} is being sent"
        if v.state is VersionState.PLANNED and v.version > newest.version:
            return f"version {v.version} of the study is on its way and will supersede it"
    return ""


def _newer_lost(ordered: Sequence[SRVersion], newest: SRVersion) -> Incompleteness | None:
    """An incompleteness when a newer version was abandoned (its instances go unreported)."""
    if any(v.state is VersionState.ABANDONED and v.version > newest.version for v in ordered):
        return Incompleteness(IncompleteReason.NEWER_INSTANCES)
    return None


@dataclass(frozen=True, slots=True)
class WritePlan:
    """Whether the SR writer builds a version, and which predecessor it names.

    Attributes:
        write: Build it; ``False`` when a newer version was written already.
        predecessor_uid: The predecessor to name (the latest delivered, or in flight).
        superseded_by: The newer version, when ``write`` is ``False``.
    """

    write: bool
    predecessor_uid: str = ""
    superseded_by: int | None = None


def plan_write(versions: Iterable[SRVersion], version: int) -> WritePlan:
    """Decide whether to build ``version`` of a study and family, and its predecessor.

    The predecessor named at build time is the best guess (the version in flight, else the
    latest delivered); ``plan_delivery`` checks it again when the version is sent.

    >>> plan_write([SRVersion(1, VersionState.SENDING, "sr1")], 2)
    WritePlan(write=True, predecessor_uid='sr1', superseded_by=None)
    >>> plan_write([SRVersion(3, VersionState.PENDING, "sr3")], 2).write
    False
    """
    ordered = _by_version(versions)
    newer = [v for v in ordered if v.version > version and v.state in _WRITTEN]
    if newer:
        return WritePlan(False, superseded_by=newer[-1].version)
    earlier = [v for v in ordered if v.version < version and v.state in (VersionState.SENDING, VersionState.DELIVERED)]
    return WritePlan(True, earlier[-1].sop_instance_uid if earlier else "")
