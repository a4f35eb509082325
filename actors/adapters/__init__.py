"""Real I/O behind core's ports: DIMSE (store, MPPS / IAN, query/retrieve), DICOMweb (STOW-RS
delivery), MLLP, FHIR HTTP,
TLS, the wall clock, the HL7 listener and the join to its context; logging set-up (rotated files,
a quiet console), Ray metrics recording and OpenTelemetry study traces. The ledger, the HL7 context
store and the other durable stores are the ``state`` package; the demo's Orthanc runner and the
dcmtk wrappers live in the ``demo``
package, outside the product."""

__all__ = [
    "association_gate",
    "audit_syslog",
    "cells",
    "clock",
    "context_join",
    "dicomweb",
    "dimse",
    "dimse_limits",
    "fhir_http",
    "hl7_inbox",
    "hl7_workers",
    "logs",
    "metrics",
    "mllp",
    "procedure_steps",
    "query_retrieve",
    "tls",
    "tracing",
    "webhook",
]
