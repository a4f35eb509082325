"""Real I/O behind core's ports: DIMSE (store, query/retrieve), MLLP, FHIR HTTP, TLS, the wall
clock, the HL7 bridge's context store and join, and the demo's Orthanc and dcmtk. The ledger
and the other durable stores are the ``state`` package."""

__all__ = [
    "clock",
    "context_join",
    "context_store",
    "dcmtk",
    "dimse",
    "fhir_http",
    "group_commit",
    "hl7_inbox",
    "mllp",
    "orthanc",
    "query_retrieve",
    "tls",
]
