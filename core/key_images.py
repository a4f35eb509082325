"""Key images for PACS viewers that do not render Parametric Maps (issue 12).

Most PACS viewers show neither a Parametric Map nor the regions of a TID 1500 SR. Per positive
finding, optionally, the bridge therefore also writes into the original study:

- a Secondary Capture image (PS3.3 A.8.1): the source frame, windowed, with the heatmap blended
  in and the finding's region outlined, and ``AI RESULT - NOT FOR DIAGNOSIS`` burned in at the
  top together with the finding and its probability. Burned In Annotation is YES, Image Type
  DERIVED\\SECONDARY, and the Source Image Sequence names the frame it came from;
- one Key Object Selection document per result (PS3.3 A.35.4, IHE KIN style) titled
  "Of Interest" (113000, DCM) that points at those images, so a viewer's key-image list opens them.

UIDs are derived like the SR's (model version, finding, source frame), so a re-sent key image is
a duplicate, not a second copy. Pure: arrays and datasets in, datasets out (the text is drawn
with Pillow's built-in font; no files are read).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from core.records import Finding, FrameRef, HeatmapRef, PlanarRegion, PlaneGrid, Prediction
from core.sr import stamp_times
from core.uids import uid_from_parts

__all__ = [
    "BANNER",
    "KeyImageFinding",
    "KeyImagePlan",
    "key_image",
    "key_object_selection",
    "plan_key_images",
    "render_overlay",
]

BANNER = "AI RESULT - NOT FOR DIAGNOSIS"
"""Burned into every key image: a secondary capture must never be read as the source image."""
_OF_INTEREST = hd.sr.CodedConcept("113000", "DCM", "Of Interest")


@dataclass(frozen=True, slots=True)
class KeyImageFinding:
    """What one key image shows.

    Attributes:
        key: The finding key (in the UID and the burned-in text).
        meaning: The finding in words (burned in).
        probability: The model's probability (burned in).
        model: Model name and version (burned in, and in the UID).
        frame_number: The source frame (1-based) of a multi-frame instance; ``None``: single frame.
        heat: The heatmap on the source frame's pixel grid, values in [0, 1]; ``None``: none.
        outline: The region's closed polyline in (column, row) image coordinates, if localised.
        inputs: The SOP Instance UIDs the result was computed from (in the UID, like the
            Parametric Map's: a later version of the study on more instances is a new object).
    """

    key: str
    meaning: str
    probability: float
    model: str
    frame_number: int | None = None
    heat: np.ndarray | None = None
    outline: tuple[tuple[float, float], ...] = ()
    inputs: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class KeyImagePlan:
    """Which frame one positive finding's key image shows, and what is drawn on it.

    Attributes:
        finding: The positive finding.
        frame: The source frame: the region's, else the plane heatmap's, else the evidence frame.
        heatmap: The stored heatmap when it lies on exactly that frame (a plane map); ``None``:
            no heatmap is blended (a volume map is not resampled onto one frame).
        outline: The planar region's polyline when it is drawn on that frame; else empty.
    """

    finding: Finding
    frame: FrameRef
    heatmap: HeatmapRef | None = None
    outline: tuple[tuple[float, float], ...] = ()


def _same_frame(a: FrameRef, b: FrameRef) -> bool:
    return a.sop_instance_uid == b.sop_instance_uid and (a.frame_number or 1) == (b.frame_number or 1)


def plan_key_images(prediction: Prediction) -> list[KeyImagePlan]:
    """One plan per positive finding that has a heatmap or a region, in the findings' order.

    A positive finding with neither (nothing to show beyond the SR's words) gets no key image.

    >>> from core.types import CodedTerm
    >>> frame = FrameRef("1.2.3", "1.2.840.10008.5.1.4.1.1.1.1")
    >>> region = PlanarRegion(frame, ((1.0, 1.0), (2.0, 1.0), (1.0, 1.0)), (1.5, 1.0))
    >>> found = Finding("nodule", CodedTerm("1", "99PACSAI", "Nodule"), 0.9, 0.5, region=region)
    >>> absent = Finding("mass", CodedTerm("2", "99PACSAI", "Mass"), 0.1, 0.5, evidence=frame)
    >>> [(p.finding.key, p.frame.sop_instance_uid, len(p.outline)) for p in plan_key_images(
    ...     Prediction("cxr", "m", "1", (found, absent), ("1.2.3",)))]
    [('nodule', '1.2.3', 3)]
    """
    plans = []
    for finding in prediction.findings:
        heatmap = prediction.heatmap(finding.key)
        if not finding.present or (heatmap is None and finding.region is None):
            continue
        grid = heatmap.grid if heatmap is not None and isinstance(heatmap.grid, PlaneGrid) else None
        if finding.region is not None:
            frame = finding.region.frame
        elif grid is not None:
            frame = grid.frame
        elif finding.evidence is not None:
            frame = finding.evidence
        else:
            continue  # a volume heatmap and no evidence frame: nothing to put on one image
        region = finding.region
        outline = region.polyline if isinstance(region, PlanarRegion) and _same_frame(region.frame, frame) else ()
        on_frame = heatmap if grid is not None and _same_frame(grid.frame, frame) else None
        plans.append(KeyImagePlan(finding, frame, on_frame, outline))
    return plans


def _grey(source: Dataset, frame_number: int | None) -> np.ndarray:
    """The frame windowed to 8 bits (the source's own VOI where it has one, else min-max)."""
    pixels = source.pixel_array
    if frame_number is not None and int(source.get("NumberOfFrames", 1)) > 1:
        pixels = pixels[frame_number - 1]
    values = apply_modality_lut(pixels, source)
    if "WindowCenter" in source or "VOILUTSequence" in source:
        values = apply_voi_lut(values, source)
    values = values.astype(np.float64)
    lo, hi = float(values.min()), float(values.max())
    grey = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    if source.get("PhotometricInterpretation") == "MONOCHROME1":
        grey = 1.0 - grey
    return np.asarray(np.rint(grey * 255.0), dtype=np.uint8)


def render_overlay(source: Dataset, finding: KeyImageFinding) -> np.ndarray:
    """The key image's RGB pixels: a black banner with the warning, then the frame with the
    heatmap blended in red-yellow and the region outlined (rows grow by the banner's height)."""
    grey = _grey(source, finding.frame_number).astype(np.float64)
    rgb = np.stack([grey, grey, grey], axis=-1)
    if finding.heat is not None:
        heat = np.clip(np.asarray(finding.heat, dtype=np.float64), 0.0, 1.0)[..., None]
        colour = np.stack([np.full(heat.shape[:2], 255.0), 255.0 * heat[..., 0], np.zeros(heat.shape[:2])], -1)
        alpha = 0.45 * heat
        rgb = rgb * (1.0 - alpha) + colour * alpha
    frame = Image.fromarray(np.asarray(np.rint(rgb), dtype=np.uint8), "RGB")
    draw = ImageDraw.Draw(frame)
    if len(finding.outline) >= 2:
        draw.line([(c, r) for c, r in finding.outline], fill=(0, 255, 0), width=max(1, frame.width // 256))
    lines = [BANNER, f"{finding.meaning} p={finding.probability:.2f} ({finding.model})"]
    font, size = _font_fitting(lines, frame.width - 8, max(8, frame.height // 24))
    banner = (size + 4) * len(lines) + 4
    image = Image.new("RGB", (frame.width, frame.height + banner), (0, 0, 0))
    image.paste(frame, (0, banner))  # above the frame, so the text hides none of the image
    draw = ImageDraw.Draw(image)
    for i, text in enumerate(lines):
        draw.text((4, 2 + i * (size + 4)), text, fill=(255, 255, 0), font=font)
    return np.asarray(image)


def _font_fitting(lines: list[str], width: int, size: int) -> tuple[ImageFont.FreeTypeFont, int]:
    """Pillow's built-in font at the largest size up to ``size`` whose lines fit ``width``."""
    while True:
        font = ImageFont.load_default(size=size)
        if size <= 6 or max(font.getlength(t) for t in lines) <= width:
            return font, size  # type: ignore[return-value]
        size -= 1


def key_image(
    source: Dataset, finding: KeyImageFinding, manufacturer: str, series_number: int, when: datetime
) -> Dataset:
    """The Secondary Capture key image of one finding on ``source`` (see the module)."""
    pixels = render_overlay(source, finding)
    frame = str(finding.frame_number or 1)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=pixels,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=uid_from_parts("key-images", str(source.StudyInstanceUID), finding.model),
        series_number=series_number,
        sop_instance_uid=uid_from_parts(
            "key-image", str(source.SOPInstanceUID), frame, finding.model, finding.key, *sorted(finding.inputs)
        ),
        instance_number=1,
        manufacturer=manufacturer,
        patient_orientation=("L", "P"),
    )
    sc.BurnedInAnnotation = "YES"
    sc.Laterality = source.get("Laterality", "")  # Type 2C in General Series: empty when unpaired
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.SeriesDescription = f"AI key images, not for diagnosis: {finding.model}"[:64]
    sc.DerivationDescription = f"AI heatmap and region of {finding.key} burned in; not for diagnosis"[:1024]
    sc.SourceImageSequence = [_reference(source, finding.frame_number)]
    stamp_times(sc, when)
    return sc


def _reference(source: Dataset, frame_number: int | None) -> Dataset:
    ref = Dataset()
    ref.ReferencedSOPClassUID = source.SOPClassUID
    ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
    if frame_number is not None and int(source.get("NumberOfFrames", 1)) > 1:
        ref.ReferencedFrameNumber = frame_number
    return ref


def key_object_selection(
    images: Sequence[Dataset], model: str, manufacturer: str, series_number: int, when: datetime
) -> Dataset:
    """The KOS (IHE KIN style, "Of Interest") pointing at one result's key images.

    Raises:
        ValueError: No images, or images of more than one study.
    """
    if not images:
        raise ValueError("images: empty; expected the key images of one result")
    studies = {str(i.StudyInstanceUID) for i in images}
    if len(studies) != 1:
        raise ValueError(f"images: from {len(studies)} studies; expected one")
    sop_uids = sorted(str(i.SOPInstanceUID) for i in images)
    content = hd.ko.KeyObjectSelection(
        document_title=_OF_INTEREST,
        referenced_objects=list(images),
        description=f"AI result ({model}): key images, not for diagnosis"[:1024],
    )
    kos = hd.ko.KeyObjectSelectionDocument(
        evidence=list(images),
        content=content,
        series_instance_uid=uid_from_parts("key-objects", studies.pop(), model),
        series_number=series_number,
        sop_instance_uid=uid_from_parts("kos", model, *sop_uids),
        instance_number=1,
        manufacturer=manufacturer,
    )
    stamp_times(kos, when)
    return kos
