"""``pacsai purge --dry-run``: what retention would delete now, deleting nothing.

The purging itself is each cell's loop, in its first listener actor
(``state.retention_purge.Purger.round``, every ``storage.retention.period_s`` while the service
runs); this asks the same ``Purger`` what its next round would take (``Purger.preview``), so an
operator can check a retention setting before a round acts on it. Counts per store and the
bytes of the files: nothing that names a patient. Only one cell's instances and files are
considered: the config's own storage (one machine: the one cell), or ``--cell NAME`` (one of
``cluster.cells``: its files under ``<var_dir>/cells/NAME``, as its listener sees them; run it
on that cell's node, where they are).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from core.config import StorageConfig
from state.ledger import Ledger
from state.retention_purge import Purger, RetentionPreview, context_opener

__all__ = ["preview", "print_preview", "refuse_without_dry_run", "register_purge"]

NOT_OFFERED = (
    "pacsai purge: only --dry-run is offered; each cell's first listener purges what is due every "
    "storage.retention.period_s while the service runs"
)


def preview(storage: StorageConfig, ledger: Ledger, now: float | None = None) -> RetentionPreview:
    """What the next purge round of one cell (``storage``) would delete (the ledger is closed
    afterwards)."""
    purger = Purger(storage, ledger, context_opener(storage))
    try:
        return purger.preview(time.time() if now is None else now)
    finally:
        purger.close()
        ledger.close()


def print_preview(found: RetentionPreview, as_json: bool) -> None:
    """Print a preview as text (or one JSON object)."""
    if as_json:
        print(json.dumps({"counts": found.counts, "file_bytes": found.file_bytes, "purging": list(found.purging)}))
        return
    if not found.purging:
        print("storage.retention: no store purges (every *_days is null): nothing would be deleted")
        return
    print(f"retention would delete now (stores that purge: {', '.join(found.purging)}):")
    for store in sorted(set(found.purging) | set(found.counts)):
        print(f"  {store:<11} {found.counts.get(store, 0)}")
    print(f"  files       {found.file_bytes / 1e6:.1f} MB")
    print("nothing was deleted (--dry-run)")


def register_purge(add: argparse.ArgumentParser) -> None:
    """The options of ``pacsai purge``."""
    add.epilog = (
        "Examples:\n  pacsai purge --dry-run --config configs/prod.yaml\n"
        "  pacsai purge --dry-run --cell a --config configs/cluster.yaml   (on cell a's node)"
    )
    add.add_argument("--dry-run", action="store_true", help="show what would be deleted; delete nothing")
    add.add_argument("--json", action="store_true", help="one JSON object: counts per store, file bytes")
    add.add_argument(
        "--cell", default="", help="an ingress cell of cluster.cells (default: the one cell of one machine)"
    )


def refuse_without_dry_run() -> int:
    """``pacsai purge`` without ``--dry-run``: say where the purging happens (exit 2)."""
    print(NOT_OFFERED, file=sys.stderr)
    return 2
