"""Real I/O behind core's ports: files, the SQLite ledger, DIMSE (store, query/retrieve),
MLLP, FHIR HTTP, TLS, and the HL7 bridge's context store.

The demo's Orthanc runner and the dcmtk wrappers live in the ``demo`` package, outside the product."""

__all__ = [
    "context_join",
    "context_store",
    "dimse",
    "ehr_outbox",
    "fhir_http",
    "fs",
    "group_commit",
    "hl7_inbox",
    "ledger",
    "mllp",
    "paths",
    "quarantine",
    "query_retrieve",
    "study_records",
    "tls",
]
