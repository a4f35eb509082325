"""Durable state shared by the actors and the Serve applications: files, blobs, databases.

- ``files``: the one durability helper (write, fsync, atomic rename, directory fsync).
- ``layout``: where things live under ``storage.var_dir``.
- ``blobs``: content-addressed payloads too large for a ledger row.
- ``db``, ``sqlite``, ``postgres``: one database contract, two backends.
- ``migrate``: versioned schemas applied at start (yoyo-migrations).
- ``ledger``: the ledger's repositories (``open_ledger``).

Depends on ``core`` only (an import-linter contract): no Ray, no sockets, no actors.
"""

from __future__ import annotations

__all__ = ["blobs", "db", "files", "layout", "ledger", "migrate", "postgres", "sqlite"]
