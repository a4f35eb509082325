"""Pure domain logic of PACS-AI Bridge: no Ray, no sockets, no files, no wall clock."""

__all__ = [
    "acks",
    "assembly",
    "audit",
    "config",
    "context",
    "errors",
    "fhir",
    "findings",
    "hl7",
    "identifiers",
    "ledger",
    "ports",
    "routing",
    "sr",
    "types",
    "uids",
    "v2fhir",
    "v2types",
    "validation",
]
