"""Real I/O behind core's ports: DIMSE (store, MPPS / IAN, query/retrieve), MLLP, FHIR HTTP, TLS, the wall
clock, and the HL7 bridge's context store and join. The ledger and the other durable stores are
the ``state`` package; the demo's Orthanc runner and the dcmtk wrappers live in the ``demo``
package, outside the product."""

__all__ = [
    "clock",
    "context_join",
    "context_store",
    "dimse",
    "fhir_http",
    "group_commit",
    "hl7_inbox",
    "mllp",
    "procedure_steps",
    "query_retrieve",
    "tls",
]
