"""``pacsai audit verify`` and ``pacsai audit keygen``: the signed trail checked from outside.

``verify`` checks every entry (place, hash, columns against the signed JSON, signature) and
the chain against the exported head (``--head``, else the configured head file), and names the
first bad entry. ``keygen`` writes a new Ed25519 signing key for ``storage.audit.key_file``
and prints its public half for ``trusted_public_keys`` (rotation) and for verifiers.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from core.audit import ChainReport
from core.audit_seal import AuditSigner
from state.audit_seal import read_head
from state.ledger import Ledger

__all__ = ["audit_keygen", "audit_verify", "format_report"]


def format_report(report: ChainReport, legacy_until: int) -> str:
    """One line: intact (with what was checked) or the first bad entry."""
    if report.broken is not None:
        return f"audit chain BROKEN at seq {report.broken.seq}: {report.broken.reason}"
    legacy = f"; entries 1 to {legacy_until} are legacy (hash chain only)" if legacy_until else ""
    head = (
        "checked against the exported head" if report.head_checked else "no exported head found: truncation not checked"
    )
    return f"audit chain intact: {report.entries} entries, {report.signed} signed{legacy}; {head}"


def audit_verify(ledger: Ledger, head_file: str | None) -> int:
    """Check the whole trail; print the verdict; 0 when intact, 1 when broken.

    Raises:
        ValueError: ``head_file`` is not an exported chain head.
    """
    head = read_head(Path(head_file)) if head_file else None
    if head_file and head is None:
        raise ValueError(f"--head: got {head_file}; no such file")
    report = ledger.audit.check(head)
    print(format_report(report, ledger.audit.legacy_until()))
    return 0 if report.broken is None else 1


def audit_keygen(out: str) -> int:
    """Write a new private key to ``out`` (mode 0600, never overwritten); print its public half."""
    signer = AuditSigner.generate()
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(signer.to_pem())
    print(f"key id {signer.key_id}; public key (for trusted_public_keys and verifiers):")
    print(signer.public_text())
    print(f"set storage.audit.key_file: {out}", file=sys.stderr)
    return 0
