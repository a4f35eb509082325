"""Pure domain logic of PACS-AI Bridge: no Ray, no sockets, no files, no wall clock."""

__all__ = [
    "assembly",
    "audit",
    "config",
    "errors",
    "findings",
    "identifiers",
    "ledger",
    "parametric_maps",
    "ports",
    "routing",
    "sr",
    "types",
    "uids",
    "validation",
]
