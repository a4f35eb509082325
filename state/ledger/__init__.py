"""The ledger: the durable queue and the source of truth, as repositories over one database.

``Ledger`` groups the repositories; each owns its tables and offers typed methods only, and
no SQL leaves this package:

- ``intake``: received instances, the receiving job of their study, what a job covers.
- ``jobs``: leasing, transitions with their effects (``core.ledger``), retries, replay.
- ``outbox``: result objects and their delivery to the PACS.
- ``results``: SR versions per study and family and their delivery states, our own series.
- ``evidence``: MPPS steps, IAN notices, sender standings (study completion, issue 18).
- ``reviews``: review flags and their resolution.
- ``quarantine``: held instances and operators' decisions.
- ``audit``: the hash-chained audit trail (appended inside each transaction).
- ``controls``: AI switches and recorded actor health.
- ``tokens``: the HTTPS API's tokens (hashes of their secrets only), issued and revoked.
- ``models``: model versions at runtime: the live one per family, halted ones, shadow results
  and what the site observed of each version (issue 17).
- ``status``: the report behind ``pacsai status``.
- ``retention``: what the purge loop may delete of the spool, and the record that it did.
- ``clinical``: AI results for readers (issue 12): alert items, worklists, reviews, views, alert policies.
- ``pushes``: critical findings paged to roles' webhooks (outbox, cursor) and read in order.
- ``success``: the records of the success measures (issue 12) and the agreement alerts raised.

``open_ledger`` picks the backend from the config (SQLite file under ``var/``, or PostgreSQL
from the DSN in the named environment variable) and applies pending migrations.
"""

from __future__ import annotations

import os

from core.config import LedgerConfig, StorageConfig
from core.envelope import Keyring
from core.errors import ConfigError
from state.audit_seal import AuditSeal, open_seal
from state.blobs import Blobs, BlobStore, DatabaseBlobStore
from state.column_seal import bind, sealer_of
from state.data_keys import load_keyring
from state.db import Database
from state.files import private_umask
from state.layout import VarLayout
from state.ledger._codec import INLINE_MAX, RecordCodec
from state.ledger.audit import AuditLog
from state.ledger.clinical import Clinical
from state.ledger.controls import Controls
from state.ledger.evidence import CompletionEvidence
from state.ledger.intake import Intake
from state.ledger.jobs import Jobs
from state.ledger.models import ModelVersions
from state.ledger.outbox import Outbox
from state.ledger.pushes import Pushes
from state.ledger.quarantine import Quarantine
from state.ledger.results import Results
from state.ledger.retention import Retention
from state.ledger.reviews import Reviews
from state.ledger.status import Status
from state.ledger.success import SuccessReads
from state.ledger.tokens import ApiTokens
from state.migrate import migrate_store
from state.sqlite import SqliteDatabase

__all__ = ["Ledger", "open_database", "open_ledger"]


class Ledger:
    """The ledger's repositories over one database (one per process)."""

    def __init__(
        self,
        db: Database,
        blobs: Blobs,
        inline_max: int = INLINE_MAX,
        cell: str = "",
        seal: AuditSeal | None = None,
        keyring: Keyring | None = None,
    ) -> None:
        """Args:
        db: The ledger database (schema already migrated).
        blobs: Where large record sections go.
        inline_max: Largest record section kept in a row, in bytes of JSON.
        cell: The ingress cell of this process (``core.placement``): new instances and jobs
            belong to it and only its jobs are leased. ``''`` on one machine.
        seal: The audit signing key and head export (``state.audit_seal``); ``None``: the one
            this process installed when it opened its ledger.
        keyring: The data keys that seal PHI at rest (``state.data_keys``); ``None``: off.
        """
        self.db = db
        self.keyring = keyring
        """Seals and opens this process's PHI-bearing files (``state.sealed_files``)."""
        self.blobs = blobs
        self.cell = cell
        codec = RecordCodec(blobs, inline_max, sealer_of(db))
        self.audit = AuditLog(db, seal)
        self.intake = Intake(db, cell)
        self.jobs = Jobs(db, codec, cell)
        self.outbox = Outbox(db, cell)
        self.results = Results(db, codec)
        self.evidence = CompletionEvidence(db)
        self.reviews = Reviews(db)
        self.quarantine = Quarantine(db)
        self.controls = Controls(db)
        self.status = Status(db, self.controls)
        self.tokens = ApiTokens(db)
        self.models = ModelVersions(db, codec)
        self.retention = Retention(db, cell)
        self.clinical = Clinical(db)
        self.pushes = Pushes(db)
        self.success = SuccessReads(db)

    @property
    def backend(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.db.dialect

    def close(self) -> None:
        """Release the database connections."""
        self.db.close()


PAGE_SIZES = {"context": 1024}
"""SQLite page size of a store file when it is created (else SQLite's 4096). The context
store's commits (every HL7 message) insert small rows into ~10 tables and indexes keyed by
hashes and ids, each into a different leaf page: a commit of 3 messages wrote 39 pages to the
WAL, 160 KB, at 4 KB a page; at 1 KB 50 KB and the commit took a third less time (issue 14:
``benchmarks/bench_hl7.py``, the committer's system CPU per message 0.17 -> 0.10 ms). A file
created before keeps its page size (SQLite cannot change it in WAL mode)."""


def open_database(
    cfg: LedgerConfig,
    layout: VarLayout,
    store: str,
    *,
    wal_autocheckpoint: bool = True,
    group_max: int = 0,
) -> Database:
    """Open one store (``ledger``, ``context`` or ``ehr``) and apply its migrations.

    Args:
        cfg: Which backend, and where.
        layout: The var directory (SQLite files).
        store: The store.
        wal_autocheckpoint: SQLite: ``False`` leaves checkpoints to the caller's background
            loop (``Database.checkpoint``), so no commit waits for one. Ignored on PostgreSQL.
        group_max: SQLite: most transactions in one group commit (0: no limit).

    Raises:
        ConfigError: PostgreSQL is configured but its DSN variable is not set.
        DependencyUnavailable: The PostgreSQL server cannot be reached.
    """
    db: Database
    if cfg.backend == "postgresql":
        from state.postgres import PostgresDatabase  # psycopg only where PostgreSQL is used

        dsn = os.environ.get(cfg.dsn_env or "")
        if not dsn:
            raise ConfigError(
                "environment", [f"{cfg.dsn_env}: not set; expected the PostgreSQL DSN (storage.ledger.dsn_env)"]
            )
        db = PostgresDatabase(dsn, f"{cfg.schema_prefix}_{store}", cfg.pool_max)
    else:
        files = {"ledger": layout.ledger, "context": layout.context, "ehr": layout.ehr_outbox}
        db = SqliteDatabase(
            files[store], autocheckpoint=wal_autocheckpoint, group_max=group_max, page_size=PAGE_SIZES.get(store)
        )
    migrate_store(db, store)
    return db


def open_ledger(storage: StorageConfig, layout: VarLayout | None = None) -> Ledger:
    """Open the configured ledger (migrated) with its blob store.

    Raises:
        ConfigError: PostgreSQL is configured but its DSN variable is not set; no audit
            signing key (``storage.audit``).
        DependencyUnavailable: The PostgreSQL server cannot be reached.
    """
    layout = layout or VarLayout.at(storage.var_dir)
    private_umask()  # every process that writes under var_dir opens its ledger first
    db = open_database(storage.ledger, layout, "ledger")
    # A cluster's nodes share the PostgreSQL ledger, and its blobs with it; one machine keeps
    # them as files beside the spool.
    ring = load_keyring(storage.encryption, layout.root)
    bind(db, ring)  # job rows carry the HL7 study context: sealed (``state.column_seal``)
    blobs = DatabaseBlobStore(db) if db.dialect == "postgresql" else BlobStore(layout.blobs, ring)
    seal = open_seal(storage.audit, layout.root)
    return Ledger(db, blobs, storage.inline_record_max_bytes, storage.cell, seal, ring)
