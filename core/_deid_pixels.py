"""Pixels that may show who the patient is: which images to exclude, and masking the rest.

A header can be cleaned attribute by attribute; text burned into the pixels cannot be found
that way. An image is treated as carrying such text when it says so (Burned In Annotation
(0028,0301) ``YES``), when its SOP Class is a capture of a screen or a scanned document
(``SCREEN_CAPTURE_CLASSES``), or when its Image Type names a vendor screen save or dose page.
Encapsulated documents (PDF, CDA, 3D models) and structured reports are excluded too: their
content (a PDF, free text in SR content items) is not de-identified here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

__all__ = [
    "DOCUMENT_CLASSES",
    "MaskRegion",
    "SCREEN_CAPTURE_CLASSES",
    "SCREEN_IMAGE_TYPES",
    "burned_in_reason",
    "mask_pixels",
]

SCREEN_CAPTURE_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image",
    "1.2.840.10008.5.1.4.1.1.7.1": "Multi-frame Single Bit Secondary Capture Image",
    "1.2.840.10008.5.1.4.1.1.7.2": "Multi-frame Grayscale Byte Secondary Capture Image",
    "1.2.840.10008.5.1.4.1.1.7.3": "Multi-frame Grayscale Word Secondary Capture Image",
    "1.2.840.10008.5.1.4.1.1.7.4": "Multi-frame True Color Secondary Capture Image",
    "1.2.840.10008.5.1.4.1.1.77.1.1.1": "Video Endoscopic Image",
    "1.2.840.10008.5.1.4.1.1.77.1.4.1": "Video Photographic Image",
    "1.2.840.10008.5.1.4.1.1.77.1.2.1": "Video Microscopic Image",
}
"""Screen and video captures: their pixels are whatever was on a screen, text included."""

DOCUMENT_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.104.1": "Encapsulated PDF",
    "1.2.840.10008.5.1.4.1.1.104.2": "Encapsulated CDA",
    "1.2.840.10008.5.1.4.1.1.104.3": "Encapsulated STL",
    "1.2.840.10008.5.1.4.1.1.104.4": "Encapsulated OBJ",
    "1.2.840.10008.5.1.4.1.1.104.5": "Encapsulated MTL",
}
"""Documents carried whole: nothing in them is de-identified, so they never leave."""

_SR_ROOT = "1.2.840.10008.5.1.4.1.1.88."
"""Structured reports and key object selections: their Content Sequence carries free text."""

SCREEN_IMAGE_TYPES = frozenset({"SCREEN SAVE", "SCREEN_SAVE", "DOSE_INFO", "DOSE INFO", "DOSE REPORT"})
"""Image Type values vendors give screen captures inside CT/MR series (GE "SCREEN SAVE" dose
pages, Siemens and Philips dose information pages)."""


@dataclass(frozen=True, slots=True)
class MaskRegion:
    """A rectangle of every frame to blank: columns ``x0`` to ``x1``, rows ``y0`` to ``y1`` (exclusive)."""

    x0: int
    y0: int
    x1: int
    y1: int


def burned_in_reason(ds: Dataset) -> str | None:
    """Why ``ds`` may show identifying text in its pixels, or ``None``.

    >>> ds = Dataset(); ds.BurnedInAnnotation = "YES"; burned_in_reason(ds)
    'burned-in annotation: Burned In Annotation is YES'
    """
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class in DOCUMENT_CLASSES:
        return f"encapsulated document: {DOCUMENT_CLASSES[sop_class]}"
    if sop_class.startswith(_SR_ROOT):
        return "structured report: its free text is not de-identified (no Clean Structured Content)"
    if str(ds.get("BurnedInAnnotation", "")).strip().upper() == "YES":
        return "burned-in annotation: Burned In Annotation is YES"
    if sop_class in SCREEN_CAPTURE_CLASSES:
        return f"burned-in annotation: screen capture class {SCREEN_CAPTURE_CLASSES[sop_class]}"
    image_type = ds.get("ImageType", [])
    values = [image_type] if isinstance(image_type, str) else list(image_type or [])
    screen = sorted(SCREEN_IMAGE_TYPES.intersection(str(v).strip().upper() for v in values))
    if screen:
        return f"burned-in annotation: Image Type {screen[0]}"
    return None


def mask_pixels(ds: Dataset, regions: Sequence[MaskRegion], reason: str) -> str:
    """Blank ``regions`` of every frame of native (uncompressed) pixels, in place.

    Returns the manifest reason: ``masked: ...`` when done, else why the image stays excluded
    (``reason``, the exclusion, when it is not about pixels).
    """
    from pydicom.uid import UID

    meta = getattr(ds, "file_meta", None)
    syntax = UID(str(meta.get("TransferSyntaxUID", ""))) if meta is not None else None
    if not reason.startswith("burned-in"):
        return reason  # a document or a report: no pixels to mask
    if "PixelData" not in ds or syntax is None or syntax.is_compressed:
        return "burned-in annotation: pixels compressed or absent, cannot mask"
    if int(ds.get("BitsAllocated", 0)) not in (8, 16, 32) or str(ds.get("SOPClassUID", "")) in DOCUMENT_CLASSES:
        return "burned-in annotation: cannot mask this pixel layout"
    pixels = np.array(ds.pixel_array)  # a writable copy
    frames = pixels if int(ds.get("NumberOfFrames", 1) or 1) > 1 else pixels[np.newaxis]
    for r in regions:
        frames[:, r.y0 : r.y1, r.x0 : r.x1] = frames.min()
    ds.PixelData = frames.astype(pixels.dtype).tobytes()
    if "PlanarConfiguration" in ds:
        ds.PlanarConfiguration = 0  # pixel_array is colour-by-pixel, as written back
    return f"masked: {len(regions)} region(s) blanked; Burned In Annotation kept as received"
