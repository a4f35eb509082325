"""Pure domain logic of PACS-AI Bridge: no Ray, no sockets, no files, no wall clock."""

__all__ = [
    "assembly",
    "audit",
    "codestreams",
    "config",
    "errors",
    "findings",
    "geometry",
    "identifiers",
    "ledger",
    "pixels",
    "ports",
    "quarantine",
    "reasons",
    "routing",
    "sr",
    "types",
    "uids",
    "validation",
]
