"""Pure domain logic of PACS-AI Bridge: no Ray, no sockets, no files, no wall clock."""

__all__ = [
    "assembly",
    "audit",
    "config",
    "errors",
    "findings",
    "identifiers",
    "ledger",
    "part10",
    "ports",
    "routing",
    "sr",
    "types",
    "uids",
    "validation",
]
