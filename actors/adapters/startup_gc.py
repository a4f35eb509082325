"""Start-up objects out of the garbage collector's reach, once per process.

A listener process holds ~100k objects from its imports and set-up (pydicom, pynetdicom,
fhir.resources, our modules, the stores). Left in the oldest generation, every full collection
walks them: 57-74 ms in the DICOM listener under load and ~100 ms in the HL7 listener, every
connection waiting. ``gc.freeze`` once the listener has started moves them to the permanent
generation. Once per process: one that starts listeners again and again (a test session, in
process) would otherwise freeze whatever cyclic garbage it held at each start.
"""

from __future__ import annotations

import gc

__all__ = ["freeze_startup"]

_done: list[bool] = []
"""Non-empty once this process froze its start-up objects."""


def freeze_startup() -> None:
    """``gc.freeze()``, the first time this process calls it."""
    if not _done:
        gc.freeze()
        _done.append(True)
