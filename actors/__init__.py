"""Ray actors (thin shells around core) and adapters for real I/O; ``pipeline`` composes them."""

__all__ = [
    "adapters",
    "assembler",
    "auditor",
    "cli",
    "delivery",
    "ehr_delivery",
    "hl7_listener",
    "inference",
    "listener",
    "pipeline",
    "polling",
    "prevalidation",
    "prior_linker",
    "router",
    "sr_writer",
    "stage",
    "supervisor",
    "validator",
]
