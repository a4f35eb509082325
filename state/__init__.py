"""Durable state shared by the actors and the Serve applications: files, blobs, databases.

- ``files``: the one durability helper (write, fsync, atomic rename, directory fsync).
- ``layout``: where things live under ``storage.var_dir``.
- ``blobs``: content-addressed payloads too large for a ledger row.
- ``db``, ``sqlite``, ``postgres``: one database contract, two backends.
- ``migrate``: versioned schemas applied at start (yoyo-migrations).
- ``ledger``: the ledger's repositories (``open_ledger``).
- ``audit_seal``: the audit trail's signing key (from a file or the environment) and its exported chain head.
- ``context_store``: the HL7 bridge's context store (inbox, FHIR resources; PHI).
- ``ehr_outbox``: FHIR report Bundles waiting for the EHR (PHI).
- ``column_seal``: PHI-bearing columns sealed at rest; ``data_keys_db`` re-seals them on rotation.
- ``retention_purge``: the purge loop's work (``core.retention`` decides what goes).
- ``spool``: the durable intake (C-STORE and STOW-RS): spool file + ledger record.
- ``group_commit``: leader/follower group commit (the intake's one commit for many instances).
- ``policy_file``: the alert policy a process holds (API replicas, the webhook loop), reloaded
  and audited once per change.

Depends on ``core`` only (an import-linter contract): no Ray, no sockets, no actors.
"""

from __future__ import annotations

__all__ = [
    "audit_seal",
    "blobs",
    "column_seal",
    "context_store",
    "data_keys",
    "data_keys_db",
    "db",
    "ehr_outbox",
    "files",
    "group_commit",
    "layout",
    "ledger",
    "migrate",
    "policy_file",
    "postgres",
    "retention_purge",
    "sealed_files",
    "spill",
    "spool",
    "sqlite",
]
