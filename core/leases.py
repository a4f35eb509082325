"""Who holds a lease, and which holders are dead: leases taken back at once after a crash.

Every start of the pipeline is a *run* with an identity of its own, and every process of a
stage actor is an *incarnation* (Ray restarts a crashed actor in a new process). A lease owner
names all three: ``<run>|<actor>|<incarnation>``. After a crash nothing is left to give the
leases back, and without this they would wait out ``stages.lease_s`` (60 s) before any worker
may take the jobs again. With it:

- the composition root, starting a run, takes back every lease of another run: two pipelines
  never share one ledger at the same time except as the cells of one run, so another run's
  leases are a dead run's (``stale_owners``);
- a stage actor, starting, takes back the leases of its own earlier incarnations in this run:
  Ray restarts an actor only when its process died (``earlier_incarnations``).

An owner that is not in this form (written before runs existed, or by another leaser) belongs
to no current run, so a new run takes it back too.

>>> me = LeaseOwner("r1", "validator", "812.ab")
>>> str(me)
'r1|validator|812.ab'
>>> stale_owners(["r1|router|9.c", "r0|router|7.d", "legacy-owner", ""], "r1")
['legacy-owner', 'r0|router|7.d']
>>> earlier_incarnations(["r1|validator|700.aa", "r1|validator|812.ab", "r1|router|9.c"], me)
['r1|validator|700.aa']
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["LeaseOwner", "earlier_incarnations", "stale_owners"]

SEPARATOR = "|"
"""Between the parts of an owner; never in a run id, an actor name (``a/validator-1``) or an
incarnation."""


@dataclass(frozen=True, slots=True)
class LeaseOwner:
    """The holder of a job's lease.

    Attributes:
        run: The pipeline run (one per start of the composition root; the cells of a cluster
            share it).
        actor: The stage actor, as the pipeline names it (``validator``, ``a/validator-1``).
        incarnation: The actor's process (a Ray restart makes a new one).
    """

    run: str
    actor: str
    incarnation: str

    def __post_init__(self) -> None:
        for name in ("run", "actor", "incarnation"):
            value = getattr(self, name)
            if not value or SEPARATOR in value:
                raise ValueError(f"{name}: got {value!r}; expected a non-empty string without {SEPARATOR!r}")

    def __str__(self) -> str:
        return SEPARATOR.join((self.run, self.actor, self.incarnation))

    @classmethod
    def parse(cls, text: str) -> LeaseOwner | None:
        """The owner written as ``text``, or ``None`` when it is not in this form.

        >>> LeaseOwner.parse("r1|a/router-1|9.c")
        LeaseOwner(run='r1', actor='a/router-1', incarnation='9.c')
        >>> LeaseOwner.parse("validator:812:ab") is None
        True
        """
        parts = text.split(SEPARATOR)
        if len(parts) != 3 or not all(parts):
            return None
        return cls(*parts)


def stale_owners(owners: Iterable[str], run: str) -> list[str]:
    """The owners whose leases a starting run takes back: every owner not of ``run``.

    Args:
        owners: The lease owners found in the ledger (``''``, nobody, is skipped).
        run: The run starting now.

    Returns:
        The stale owners, sorted.
    """
    out = set()
    for o in owners:
        parsed = LeaseOwner.parse(o)
        if o and (parsed is None or parsed.run != run):
            out.add(o)
    return sorted(out)


def earlier_incarnations(owners: Iterable[str], me: LeaseOwner) -> list[str]:
    """The owners whose leases a starting actor takes back: its own in this run, held by
    another process (itself, before Ray restarted it).

    Args:
        owners: The lease owners found in the ledger.
        me: The starting actor's own owner.

    Returns:
        Those owners, sorted.
    """
    out = set()
    for o in owners:
        parsed = LeaseOwner.parse(o)
        if parsed is not None and (parsed.run, parsed.actor) == (me.run, me.actor) and parsed != me:
            out.add(o)
    return sorted(out)
