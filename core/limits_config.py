"""Config of the hostile-input limits of the DIMSE listener (issue 13, item 5).

Kept apart from ``core.config`` (which grew past a readable size); ``ListenerConfig.limits``
uses this model. Every bound has a safe default: a peer that ignores our maximum PDU, sends a
deflate bomb, drips one byte a minute or opens a thousand associations gets a failure status
or a closed connection, and the listener keeps serving the others.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["DimseLimitsConfig"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DimseLimitsConfig(_Model):
    """Bounds on what one peer may make the DICOM listener hold, inflate, keep or wait for."""

    max_dataset_bytes: int = Field(
        default=4 << 30,
        ge=1 << 20,
        description="Largest C-STORE data set accepted; a longer one is read to its end without "
        "keeping the excess and answered 0xA700 (out of resources)",
    )
    spill_bytes: int = Field(
        default=8 << 20,
        ge=1 << 16,
        description="A data set longer than this is received to a file in the spool's .incoming "
        "directory instead of memory (a 2 GB multi-frame never sits in memory)",
    )
    max_inflated_bytes: int = Field(
        default=1 << 30,
        ge=1 << 20,
        description="Deflated Explicit VR Little Endian: most bytes a data set may inflate to; "
        "beyond it the instance is answered 0xA700 naming this cap (deflate bomb)",
    )
    max_association_s: float = Field(
        default=3600.0,
        gt=0,
        description="Total time one association may stay open, whatever it sends (a slow drip "
        "that beats the idle timeout is aborted here)",
    )
    max_associations_per_peer: int = Field(
        default=16,
        ge=1,
        description="Concurrent associations from one IP address; more are closed at once",
    )
    rejected_max_bytes: int = Field(
        default=8 << 30,
        ge=0,
        description="Quota of the rejected/ directory (unparseable data kept for inspection); "
        "over it, a data set that would be kept there is answered 0xA700 and not kept",
    )
    rejected_max_files: int = Field(
        default=10_000,
        ge=0,
        description="Most files in the rejected/ directory; over it, as for rejected_max_bytes",
    )
