"""Real I/O behind core's ports: files, the SQLite ledger, DIMSE (store, query/retrieve),
MLLP, FHIR HTTP, TLS, Orthanc, dcmtk, and the HL7 bridge's context store."""

__all__ = [
    "context_join",
    "context_store",
    "dcmtk",
    "dimse",
    "ehr_outbox",
    "fhir_http",
    "fs",
    "group_commit",
    "hl7_inbox",
    "ledger",
    "mllp",
    "orthanc",
    "paths",
    "quarantine",
    "query_retrieve",
    "study_records",
    "tls",
]
