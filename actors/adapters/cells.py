"""Instance files of other ingress cells, fetched through Ray (the cluster issue).

A sender's associations may land on several ingress nodes, so one study's instances can sit in
several spools. The cell that owns the study's job gathers them before the study completes:
each other cell's listener actor reads its own spool files and returns the bytes through Ray's
object store; they are checked against the sha256 recorded at receipt and written durably into
this cell's spool. No stage ever opens a path on another machine.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import ray
from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError

from core.envelope import Keyring
from core.errors import DependencyUnavailable, TransientIOError
from core.placement import actor_name
from core.types import InstanceMeta
from state.sealed_files import read_plain, write_sealed_final

__all__ = ["CellSpools", "read_spooled"]


def read_spooled(spool: Path, paths: Sequence[str], keyring: Keyring | None = None) -> list[bytes]:
    """Read spool files for another cell (their plaintext: each node has its own data keys);
    a path outside ``spool`` is refused.

    Raises:
        PermissionError: A path resolves outside the spool directory.
        OSError: A file cannot be read.
    """
    root = spool.resolve()
    out = []
    for p in paths:
        path = Path(p).resolve()
        if not path.is_relative_to(root):
            raise PermissionError(f"{p}: not in this cell's spool")
        out.append(read_plain(path, keyring))
    return out


class CellSpools:
    """Moves a study's instances from other cells' spools into this cell's spool."""

    def __init__(self, site: str, namespace: str, spool: Path, timeout_s: float = 120.0) -> None:
        """Args:
        site: Installation name (part of every actor name).
        namespace: Ray namespace of the named actors.
        spool: This cell's spool directory.
        timeout_s: Longest wait for one cell's bytes.
        """
        self._site = site
        self._namespace = namespace
        self._spool = spool
        self._timeout_s = timeout_s

    def gather(
        self, foreign: Mapping[str, Sequence[InstanceMeta]], keyring: Keyring | None = None
    ) -> list[tuple[str, str]]:
        """Fetch every listed instance and write it into this cell's spool (sealed with ``keyring``).

        Returns:
            ``(sop_instance_uid, new path)`` of every instance moved.

        Raises:
            DependencyUnavailable: A cell's listener cannot be reached (its node is down): the
                study waits for it without spending retries.
            TransientIOError: Bytes came back that do not match the sha256 recorded at receipt.
        """
        moved: list[tuple[str, str]] = []
        for cell, instances in sorted(foreign.items()):
            name = actor_name(self._site, cell, "listener")
            try:
                listener = ray.get_actor(name, namespace=self._namespace)
                blobs = ray.get(listener.read_spooled.remote([i.path for i in instances]), timeout=self._timeout_s)
            except (ValueError, RayActorError, ActorUnavailableError, GetTimeoutError) as exc:
                raise DependencyUnavailable(f"cell:{cell}", f"{type(exc).__name__}: {exc}"[:300]) from exc
            for inst, data in zip(instances, blobs, strict=True):
                if hashlib.sha256(data).hexdigest() != inst.sha256:
                    raise TransientIOError(f"cell {cell}: {inst.sop_instance_uid} does not match its sha256")
                source = Path(inst.path)
                target = self._spool / source.parent.name / source.name
                write_sealed_final(target, data, keyring)
                moved.append((inst.sop_instance_uid, str(target)))
        return moved
