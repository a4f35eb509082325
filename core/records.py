"""What a model returns and what stages hand each other about it: one typed vocabulary.

Every value here is a frozen, slotted dataclass that round-trips through JSON
(``core.codec``), so the ledger stores it as JSON and any stage can read it back typed. There
is one word for each idea:

- ``Geometry.PLANAR`` / ``Geometry.VOLUMETRIC``: where a finding is (a polyline on one frame,
  PS3.3 C.18.6.1.2; or an ellipsoid in the frame of reference, C.18.9.1.2) and what grid its
  heatmap lies on (a source frame, or the network volume).
- ``FrameRef``: one source frame (instance + 1-based frame number for multi-frame instances).
- ``Finding``: one model output per finding: probability, presence (against its threshold),
  the frame it is strongest on (``evidence``) and, when localised, its ``region``.
- ``Heatmap`` travels from the replica to the inference stage with its pixels; the inference
  stage stores the pixels as a content-addressed blob and keeps a ``HeatmapRef``, so a ledger
  row never holds pixel data.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import Annotated, Literal

from pydantic import Field

from core.types import CodedTerm

__all__ = [
    "AxisScale",
    "BlobRef",
    "Finding",
    "FrameRef",
    "Geometry",
    "Heatmap",
    "HeatmapGrid",
    "HeatmapRef",
    "InferenceRequest",
    "ModelOutput",
    "ModelTask",
    "PlanarRegion",
    "PlaneGeometry",
    "PlaneGrid",
    "Prediction",
    "QualityFlag",
    "Region",
    "Route",
    "VolumeGrid",
    "VolumetricRegion",
]


class Geometry(enum.StrEnum):
    """Where a finding or a heatmap lies."""

    PLANAR = "planar"
    """On one source frame, in its image coordinates (rows, columns)."""
    VOLUMETRIC = "volumetric"
    """In a 3D frame of reference (patient coordinates, mm)."""


@dataclass(frozen=True, slots=True)
class BlobRef:
    """A content-addressed payload stored beside the spool (``state.blobs``).

    Attributes:
        sha256: Hex digest of the stored bytes; also their name.
        size: Stored size in bytes.
        media_type: What the bytes are (e.g. ``application/json``).
    """

    sha256: str
    size: int
    media_type: str = "application/octet-stream"


@dataclass(frozen=True, slots=True)
class FrameRef:
    """One source frame: the instance and, for multi-frame instances, the 1-based frame."""

    sop_instance_uid: str
    sop_class_uid: str
    frame_number: int | None = None


@dataclass(frozen=True, slots=True)
class PlanarRegion:
    """A closed polyline in a frame's image coordinates (column, row; pixel centres at .5).

    Attributes:
        frame: The source frame the polyline is drawn on.
        polyline: Closed (first point repeated last) list of ``(column, row)`` points.
        peak: Where the heatmap peaks, ``(column, row)``.
    """

    frame: FrameRef
    polyline: tuple[tuple[float, float], ...]
    peak: tuple[float, float]
    geometry: Literal[Geometry.PLANAR] = Geometry.PLANAR


@dataclass(frozen=True, slots=True)
class VolumetricRegion:
    """An ellipsoid (three axes' end points, mm) in a frame of reference.

    Attributes:
        frame: The source frame nearest to the peak (the region's selected source).
        frame_of_reference_uid: Frame of Reference UID of the coordinates.
        ellipsoid: Six points: each axis' two end points, longest axis first.
        peak_mm: Where the heatmap peaks, in patient coordinates.
    """

    frame: FrameRef
    frame_of_reference_uid: str
    ellipsoid: tuple[tuple[float, float, float], ...]
    peak_mm: tuple[float, float, float]
    geometry: Literal[Geometry.VOLUMETRIC] = Geometry.VOLUMETRIC


Region = Annotated[PlanarRegion | VolumetricRegion, Field(discriminator="geometry")]
"""Where a positive finding is."""


@dataclass(frozen=True, slots=True)
class QualityFlag:
    """An image-quality flag measured on one series (``models.quality``).

    Attributes:
        key: The flag (``motion_artefact``, ``incomplete_series``).
        series_instance_uid: The flagged series.
        score: What was measured.
        threshold: The score above which the flag is raised.
        detail: What was found, in words (no PHI).
    """

    key: str
    series_instance_uid: str
    score: float
    threshold: float
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Finding:
    """One model output for one finding of a study.

    Attributes:
        key: The finding's key in the model's registry entry.
        term: Its code (SNOMED CT where verified, else the local scheme).
        probability: The study-level probability (the maximum over the inputs).
        threshold: Probability at or above which the finding is present.
        critical: Whether a present finding is critical (alerts).
        size_mm: Its measured size (longest diameter), where the model measures one.
        evidence: The source frame of the input with the highest probability.
        region: Where it is, for a localised positive finding.
    """

    key: str
    term: CodedTerm
    probability: float
    threshold: float
    critical: bool = False
    size_mm: float | None = None
    evidence: FrameRef | None = None
    region: Region | None = None

    @property
    def present(self) -> bool:
        """Whether the probability reaches the finding's threshold."""
        return self.probability >= self.threshold


@dataclass(frozen=True, slots=True)
class AxisScale:
    """Network index ``i`` samples source (continuous) index ``scale * i + offset``."""

    scale: float
    offset: float


@dataclass(frozen=True, slots=True)
class PlaneGeometry:
    """The patient geometry of a cross-sectional frame (PS3.3 C.7.6.2)."""

    position: tuple[float, float, float]
    orientation: tuple[float, float, float, float, float, float]
    pixel_spacing: tuple[float, float]
    slice_thickness: float
    frame_of_reference_uid: str


@dataclass(frozen=True, slots=True)
class PlaneGrid:
    """A heatmap of one source frame, at network resolution.

    Attributes:
        frame: The source frame.
        rows: The frame's Rows.
        columns: The frame's Columns.
        row_map: Network row to source row.
        column_map: Network column to source column.
        plane: The frame's plane geometry; ``None`` for projection radiographs.
    """

    frame: FrameRef
    rows: int
    columns: int
    row_map: AxisScale
    column_map: AxisScale
    plane: PlaneGeometry | None = None
    geometry: Literal[Geometry.PLANAR] = Geometry.PLANAR


@dataclass(frozen=True, slots=True)
class VolumeGrid:
    """A heatmap on the network's volume grid.

    Attributes:
        affine: 4 x 4 voxel index (slice, row, column) to patient coordinates (mm).
        frame_of_reference_uid: Frame of Reference UID of the source series.
    """

    affine: tuple[tuple[float, float, float, float], ...]
    frame_of_reference_uid: str
    geometry: Literal[Geometry.VOLUMETRIC] = Geometry.VOLUMETRIC


HeatmapGrid = Annotated[PlaneGrid | VolumeGrid, Field(discriminator="geometry")]
"""Which grid a heatmap lies on."""


@dataclass(frozen=True, slots=True)
class Heatmap:
    """A Grad-CAM heatmap with its pixels, as the replica returns it (never stored inline).

    Attributes:
        finding: The finding's key.
        grid: Where it lies.
        shape: Its array shape.
        levels: The map's values in [0, 1] as 16-bit levels (little-endian, zlib).
    """

    finding: str
    grid: HeatmapGrid
    shape: tuple[int, ...]
    levels: bytes

    def stored_as(self, blob: BlobRef) -> HeatmapRef:
        """The reference that replaces the pixels once they are stored as ``blob``."""
        return HeatmapRef(self.finding, self.grid, self.shape, blob)


@dataclass(frozen=True, slots=True)
class HeatmapRef:
    """A stored heatmap: where it lies and the blob that holds its levels."""

    finding: str
    grid: HeatmapGrid
    shape: tuple[int, ...]
    blob: BlobRef


@dataclass(frozen=True, slots=True)
class Prediction:
    """One model's result for one task of a study.

    Attributes:
        family: Model family key.
        model_name: Algorithm name (SR TID 4019).
        model_version: Algorithm version.
        findings: Per finding, in the registry entry's order.
        source_uids: SOP Instance UIDs of every input the model read.
        demo: Whether the model is a demo model (its SRs say so).
        quality_flags: Image-quality flags of the input series.
        heatmaps: Stored heatmaps of the positive findings.
    """

    family: str
    model_name: str
    model_version: str
    findings: tuple[Finding, ...]
    source_uids: tuple[str, ...]
    demo: bool = False
    quality_flags: tuple[QualityFlag, ...] = ()
    heatmaps: tuple[HeatmapRef, ...] = ()

    def heatmap(self, finding: str) -> HeatmapRef | None:
        """The stored heatmap of one finding, if any."""
        return next((h for h in self.heatmaps if h.finding == finding), None)


@dataclass(frozen=True, slots=True)
class ModelOutput:
    """What a model deployment returns: the prediction and the heatmaps' pixels.

    The inference stage stores ``heatmaps`` as blobs and puts their references in the
    prediction (``with_stored``) before anything reaches the ledger.
    """

    prediction: Prediction
    heatmaps: tuple[Heatmap, ...] = ()

    def with_stored(self, refs: tuple[HeatmapRef, ...]) -> Prediction:
        """The prediction that names the stored heatmaps."""
        return replace(self.prediction, heatmaps=refs)


@dataclass(frozen=True, slots=True)
class ModelTask:
    """One model family to run on a set of instances of a study."""

    family: str
    sop_instance_uids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Route:
    """The router's decision for a job: the tasks to run and why.

    Attributes:
        tasks: Model runs to do (empty: the job is skipped).
        reason: In words, for the audit trail and ``pacsai status``.
        priority: Priority floor from the matched rules.
    """

    tasks: tuple[ModelTask, ...]
    reason: str
    priority: int = 0

    def task(self, family: str) -> ModelTask | None:
        """The task of one family, if routed."""
        return next((t for t in self.tasks if t.family == family), None)


@dataclass(frozen=True, slots=True)
class InferenceRequest:
    """What the inference stage sends to a model deployment.

    The DICOM files travel as bytes (exactly as spooled), so a replica on another node of a Ray
    cluster needs no shared disk; decoding and preprocessing happen in the replica.

    Attributes:
        study_uid: Study Instance UID.
        family: Model family key.
        instances: ``(sop_instance_uid, dicom_file_bytes)`` of every instance of the task.
        job_id: Ledger job, for logs.
    """

    study_uid: str
    family: str
    instances: tuple[tuple[str, bytes], ...]
    job_id: int = 0
