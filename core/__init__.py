"""Pure domain logic of PACS-AI Bridge: no Ray, no sockets, no files, no wall clock."""

__all__ = [
    "assembly",
    "audit",
    "completeness",
    "config",
    "errors",
    "findings",
    "identifiers",
    "interval",
    "ledger",
    "part10",
    "ports",
    "priors",
    "routing",
    "sr",
    "types",
    "uids",
    "validation",
]
