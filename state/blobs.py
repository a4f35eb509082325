"""Content-addressed blobs: heatmaps and any record section too big for a row.

A blob is named by the sha256 of its bytes. Writing the same bytes twice is a no-op, which makes
every writer idempotent: a retried stage stores nothing new.

Two stores behind one interface, chosen with the ledger's backend:

- ``BlobStore``: files beside the spool (``blobs/ab/abcdef...``), written with the spool's
  durability rules (temporary file, fsync, atomic rename, directory fsync; ``state.files``), so a
  ``BlobRef`` committed in the ledger always names a whole file. One machine, SQLite.
- ``DatabaseBlobStore``: a ``blobs`` table of the shared PostgreSQL ledger, so a record section
  or heatmap written on one node of a cluster is read on any other (the operator's CLI on the
  head, the SR writer of another actor), and nothing of a job lives only on one disk.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from core.envelope import EnvelopeError, Keyring
from core.errors import RecordError
from core.records import BlobRef
from state.column_seal import sealer_of
from state.db import Database
from state.sealed_files import read_plain, write_sealed_final

__all__ = ["BlobStore", "Blobs", "DatabaseBlobStore"]

JSON = "application/json"


def _check(ref: BlobRef, data: bytes) -> bytes:
    if hashlib.sha256(data).hexdigest() != ref.sha256:
        raise RecordError("BlobRef", f"blob {ref.sha256} does not match its digest")
    return data


class _JsonBlobs:
    """``put_json`` / ``get_json`` over a store's ``put`` / ``get``."""

    def put(self, data: bytes, media_type: str = "application/octet-stream") -> BlobRef:
        raise NotImplementedError

    def get(self, ref: BlobRef) -> bytes:
        raise NotImplementedError

    def put_json(self, value: Any) -> BlobRef:
        """Store a JSON-ready value (compact, sorted keys, so equal values share a blob)."""
        text = json.dumps(value, sort_keys=True, separators=(",", ":"))
        return self.put(text.encode(), JSON)

    def get_json(self, ref: BlobRef) -> Any:
        """Read a blob written by :meth:`put_json`.

        Raises:
            RecordError: Missing, corrupt, or not JSON.
        """
        try:
            return json.loads(self.get(ref))
        except ValueError as exc:
            raise RecordError("BlobRef", f"blob {ref.sha256} is not JSON: {exc}") from None


class DatabaseBlobStore(_JsonBlobs):
    """Content-addressed blobs in the ledger's ``blobs`` table (PostgreSQL: every node sees them)."""

    def __init__(self, db: Database) -> None:
        """Args:
        db: The ledger database (migration 0008 made its ``blobs`` table).
        """
        self._db = db
        self._seal = sealer_of(db)  # record sections may carry the study context: sealed at rest

    def put(self, data: bytes, media_type: str = "application/octet-stream") -> BlobRef:
        """Store ``data`` (once; committed when this returns) and return its reference."""
        digest = hashlib.sha256(data).hexdigest()
        self._db.run(
            lambda tx: tx.execute(
                "INSERT INTO blobs (sha256, size, data) VALUES (?,?,?) ON CONFLICT (sha256) DO NOTHING",
                (digest, len(data), self._seal.blob(data)),
            )
        )
        return BlobRef(digest, len(data), media_type)

    def get(self, ref: BlobRef) -> bytes:
        """Read a blob and check it against its digest.

        Raises:
            RecordError: The blob is missing or its bytes do not match its name.
        """
        with self._db.read() as tx:
            row = tx.one("SELECT data FROM blobs WHERE sha256 = ?", (ref.sha256,))
        if row is None:
            raise RecordError("BlobRef", f"blob {ref.sha256} is missing from the ledger")
        return _check(ref, self._seal.open_blob(row["data"]))

    def count(self) -> int:
        """How many blobs are stored (for tests and status)."""
        with self._db.read() as tx:
            row = tx.one("SELECT COUNT(*) AS n FROM blobs")
        return int(row["n"]) if row else 0


class BlobStore(_JsonBlobs):
    """Durable, content-addressed files under one directory."""

    def __init__(self, root: Path, keyring: Keyring | None = None) -> None:
        """Args:
        root: The blob directory (``VarLayout.blobs``).
        keyring: Seals the files at rest (``storage.encryption``); ``None``: in clear.
        """
        self.root = root
        self._ring = keyring

    def path(self, sha256: str) -> Path:
        """Where the blob with this digest lives."""
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise RecordError("BlobRef", f"got sha256 {sha256[:80]!r}; expected 64 hex digits")
        return self.root / sha256[:2] / sha256

    def put(self, data: bytes, media_type: str = "application/octet-stream") -> BlobRef:
        """Store ``data`` durably (once) and return its reference.

        Raises:
            OutOfResources: The disk is full.
            OSError: Another I/O failure; nothing is left half-written.
        """
        digest = hashlib.sha256(data).hexdigest()
        path = self.path(digest)
        if not path.exists():  # named by the plaintext's digest: sealed or not, written once
            write_sealed_final(path, data, self._ring)
        return BlobRef(digest, len(data), media_type)

    def get(self, ref: BlobRef) -> bytes:
        """Read a blob and check it against its digest.

        Raises:
            RecordError: The blob is missing or its bytes do not match its name.
        """
        try:
            data = read_plain(self.path(ref.sha256), self._ring)
        except FileNotFoundError:
            raise RecordError("BlobRef", f"blob {ref.sha256} is missing under {self.root}") from None
        except EnvelopeError as exc:
            raise RecordError("BlobRef", f"blob {ref.sha256} cannot be opened: {exc}") from None
        return _check(ref, data)

    def count(self) -> int:
        """How many blobs are stored (for tests and status)."""
        if not self.root.is_dir():
            return 0
        return sum(len(files) for _, _, files in os.walk(self.root))


Blobs = BlobStore | DatabaseBlobStore
"""Either store (``state.ledger.open_ledger`` picks one with the backend)."""
