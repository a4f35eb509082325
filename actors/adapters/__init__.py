"""Real I/O behind core's ports: files, the SQLite ledger, DIMSE, TLS, Orthanc, dcmtk."""

__all__ = ["dcmtk", "dimse", "fs", "ledger", "orthanc", "paths", "query_retrieve", "study_records", "tls"]
