"""Real I/O behind core's ports: files, the SQLite ledger, DIMSE, TLS."""

__all__ = ["dimse", "fs", "ledger", "paths", "tls"]
