"""Predictors: DICOM bytes in, one ``Prediction`` per study task out. Ray-free.

Every family runs the same three steps, so that a Serve deployment can batch the network pass
across requests: ``prepare`` (per request, CPU: decode, assemble, resample) -> ``forward`` (per
batch of network inputs) -> ``finish`` (per request: combine the inputs' probabilities, and for
each positive finding a Grad-CAM heatmap and the region it points at). ``predict`` chains them
for one request.

A family differs only in what its network inputs are (``_inputs``) and how a heatmap maps back
to the source (``_localise``): radiograph frames here, CT slices and 3D volumes in
:mod:`models.volume_predictor`. A finding's probability is its maximum over the inputs of the
task (a finding seen on any view, slice or series is reported), and the input that gave it is
the finding's evidence.

The generic ``RadiographPredictor`` (and ``SlicePredictor`` / ``VolumePredictor``) serve families
from MONAI bundles and exported networks too (``entry.kind``, :mod:`models.families`): their
outputs become probabilities by ``entry.output_activation``, their findings carry the codes the
bundle declares, and with ``preprocessing: bundle`` the bundle's own transforms
(:class:`models.bundles.BundlePreprocessing`) replace the window after resampling.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from io import BytesIO
from typing import Any

import numpy as np
import pydicom
import torch
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from core.config import FindingSpec, ModelEntry
from core.errors import ModelError, UndecodablePixels
from core.findings import term_for
from core.parametric_maps import encode_levels
from core.records import (
    AxisScale,
    Finding,
    Heatmap,
    HeatmapGrid,
    InferenceRequest,
    ModelOutput,
    PlanarRegion,
    PlaneGeometry,
    PlaneGrid,
    Prediction,
    QualityFlag,
    Region,
)
from core.types import CodedTerm
from models.bundles import BundlePreprocessing
from models.gradcam import GradCamMaker, region_of
from models.networks import GRADCAM_LAYERS
from models.preprocessing import prepare_pixels, resize
from models.registry import load_network
from models.resampling import AxisMap, to_unit_range
from models.volumes import FrameRef, planes_of

__all__ = [
    "BoneFracturePredictor",
    "ChestXrayPredictor",
    "PlaneItem",
    "Predictor",
    "Prepared",
    "RadiographPredictor",
    "finding_term",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class PlaneItem:
    """A network input made from one 2D source frame.

    Attributes:
        ref: The source frame.
        rows: Its Rows.
        columns: Its Columns.
        maps: Network-to-source index maps of rows and columns.
        geometry: Plane geometry for cross-sectional frames (position, orientation, pixel
            spacing, slice thickness, frame of reference); None for projection radiographs.
    """

    ref: FrameRef
    rows: int
    columns: int
    maps: tuple[AxisMap, AxisMap]
    geometry: PlaneGeometry | None = None


@dataclass(frozen=True, eq=False)
class Prepared:
    """One request as network inputs.

    Attributes:
        inputs: float32 ``(N, C, *spatial)``.
        items: Per input, what it is (a ``PlaneItem``, a ``VolumeItem``, ...).
        uids: The request's SOP Instance UIDs, in request order.
        quality_flags: Image-quality flags (see :mod:`models.quality`).
    """

    inputs: np.ndarray
    items: tuple[Any, ...]
    uids: tuple[str, ...]
    quality_flags: tuple[QualityFlag, ...] = field(default=())


def finding_term(spec: FindingSpec) -> CodedTerm:
    """The coded concept of a finding: the code its model declares, else the built-in catalogue's.

    >>> from core.config import FindingCode
    >>> finding_term(FindingSpec(key="opacity", code=FindingCode(scheme="SCT", value="263716002", meaning="Opacity")))
    CodedTerm(value='263716002', scheme='SCT', meaning='Opacity')
    >>> finding_term(FindingSpec(key="pneumothorax")).scheme
    'SCT'
    """
    if spec.code is not None:
        return CodedTerm(spec.code.value, spec.code.scheme, spec.code.meaning)
    return term_for(spec.key)


def decode_instance(uid: str, data: bytes) -> Dataset:
    """Parse one instance's bytes.

    Raises:
        ModelError: If they are not DICOM (the message names the SOP Instance UID).
    """
    try:
        return pydicom.dcmread(BytesIO(data))
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(
            f"SOP Instance {uid}: got {len(data)} bytes that pydicom cannot parse "
            f"({type(exc).__name__}: {exc}); expected a DICOM Part 10 file"
        ) from exc


class Predictor:
    """Common machinery: weights, batching-friendly steps, aggregation and heatmaps.

    Args:
        entry: The registry entry (input spec, findings with thresholds, name, version).
        network: The network, in eval mode, with one output per finding of ``entry``.
        family: Model family key reported in predictions (default: the class's family).
        device: Torch device of ``network``.

    Raises:
        ModelError: If the entry asks for its bundle's preprocessing and that cannot be loaded.
    """

    default_family = ""

    def __init__(
        self,
        entry: ModelEntry,
        network: torch.nn.Module,
        family: str | None = None,
        device: str = "cpu",
    ) -> None:
        self.entry = entry
        self.family = family or self.default_family
        self._network = network.eval()
        self._device = torch.device(device)
        self._spatial_size = tuple(entry.input.spatial_size)
        self._gradcam: GradCamMaker | None = None
        self._bundle_transforms = BundlePreprocessing(entry) if entry.preprocessing == "bundle" else None

    @classmethod
    def load(cls, entry: ModelEntry, family: str | None = None) -> Predictor:
        """Check and load the weights of ``entry``; use a GPU only if the entry asks for one.

        Args:
            entry: The registry entry.
            family: Model family key (default: the class's family).

        Returns:
            The predictor, ready to run.

        Raises:
            ModelWeightsError: If the weights are missing, mismatched or do not fit.
            ModelError: If the family is unknown.
        """
        family = family or cls.default_family
        if entry.serve.torch_threads > 0:
            torch.set_num_threads(entry.serve.torch_threads)
        device = "cuda" if entry.serve.num_gpus > 0 and torch.cuda.is_available() else "cpu"
        network = load_network(family, entry, map_location=device)
        logger.info("%s predictor %s %s on %s", family, entry.name, entry.version, device)
        return cls(entry, network, family=family, device=device)

    @property
    def finding_keys(self) -> tuple[str, ...]:
        """The output keys, in network order."""
        return tuple(spec.key for spec in self.entry.findings)

    def prepare(self, request: InferenceRequest) -> Prepared:
        """Decode every instance of the request and turn it into network inputs.

        Raises:
            ModelError: If the request is for another family, holds no instance, or an instance
                cannot be turned into an input (the message names it).
        """
        if request.family != self.family:
            raise ModelError(f'Got a request for family "{request.family}"; expected "{self.family}"')
        if not request.instances:
            raise ModelError(f"Got a request for study {request.study_uid} with no instances")
        datasets = [decode_instance(uid, data) for uid, data in request.instances]
        inputs, items, flags = self._inputs(datasets)
        batch = np.stack(inputs).astype(np.float32, copy=False)
        if self.entry.input.channels > 1 and batch.shape[1] == 1:
            batch = np.repeat(batch, self.entry.input.channels, axis=1)
        uids = tuple(uid for uid, _ in request.instances)
        return Prepared(batch, tuple(items), uids, tuple(flags))

    def forward(self, batch: np.ndarray) -> np.ndarray:
        """Run the network on a batch and return probabilities (``entry.output_activation``).

        Args:
            batch: float32 ``(N, C, *spatial)``.

        Returns:
            float32 ``(N, K)`` probabilities, K = number of findings.

        Raises:
            ModelError: If the batch or the output has an unexpected shape.
        """
        expected = (self.entry.input.channels, *self._spatial_size)
        if batch.ndim != 2 + len(self._spatial_size) or tuple(batch.shape[1:]) != expected:
            raise ModelError(f"Got a batch of shape {batch.shape}; expected (N, {expected})")
        with torch.inference_mode():
            tensor = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
            logits = self._network(tensor.to(self._device)).float()
            if self.entry.output_activation == "sigmoid":
                logits = torch.sigmoid(logits)
            elif self.entry.output_activation == "softmax":
                logits = torch.softmax(logits, dim=1)
            probs = logits.cpu().numpy()
        if probs.shape != (batch.shape[0], len(self.entry.findings)):
            raise ModelError(
                f"Network returned shape {probs.shape}; expected ({batch.shape[0]}, {len(self.entry.findings)})"
            )
        return probs

    def to_prediction(self, probs_per_item: np.ndarray, item_uids: tuple[str, ...]) -> Prediction:
        """Combine per-input probabilities into the study's prediction (maximum over inputs).

        Args:
            probs_per_item: ``(N, K)`` probabilities, one row per input.
            item_uids: The SOP Instance UID of each input.

        Returns:
            The prediction (study-level probabilities; ``finish`` adds evidence and regions).

        Raises:
            ModelError: If the shapes disagree with ``item_uids`` or the findings.
        """
        probs = np.asarray(probs_per_item, dtype=np.float64)
        if probs.ndim != 2 or probs.shape != (len(item_uids), len(self.entry.findings)):
            raise ModelError(
                f"Got probabilities of shape {probs.shape}; expected ({len(item_uids)}, {len(self.entry.findings)})"
            )
        best = probs.argmax(axis=0)
        findings = tuple(
            Finding(
                key=spec.key,
                term=finding_term(spec),
                probability=float(probs[best[k], k]),
                threshold=spec.threshold,
                critical=spec.critical,
            )
            for k, spec in enumerate(self.entry.findings)
        )
        return Prediction(
            family=self.family,
            model_name=self.entry.name,
            model_version=self.entry.version,
            findings=findings,
            source_uids=tuple(dict.fromkeys(item_uids)),
            demo=self.entry.demo,
        )

    def finish(self, prepared: Prepared, probs: np.ndarray) -> ModelOutput:
        """Combine the inputs' probabilities; localise every positive finding.

        Args:
            prepared: What ``prepare`` returned.
            probs: ``(N, K)``: ``forward`` of ``prepared.inputs``.

        Returns:
            The prediction (each finding with its evidence frame and, when positive and
            localised, its region; the quality flags) and the heatmaps' pixels (unless the
            entry turns heatmaps off).

        Raises:
            ModelError: If the shapes disagree.
        """
        item_uids = tuple(item.ref.sop_instance_uid for item in prepared.items)
        base = self.to_prediction(probs, item_uids)
        best = np.asarray(probs).argmax(axis=0)
        findings, heatmaps = [], []
        for k, finding in enumerate(base.findings):
            item = prepared.items[best[k]]
            finding = replace(finding, evidence=item.ref)
            if finding.present and self.entry.heatmaps:
                heat = self._heatmap(prepared.inputs[best[k]], k)
                located = self._localise(item, heat) if heat is not None else None
                if located is not None and heat is not None:
                    region, grid = located
                    finding = replace(finding, region=region)
                    heatmaps.append(Heatmap(finding.key, grid, tuple(heat.shape), encode_levels(heat)))
            findings.append(finding)
        prediction = replace(
            base,
            findings=tuple(findings),
            source_uids=tuple(prepared.uids),
            quality_flags=tuple(prepared.quality_flags),
        )
        return ModelOutput(prediction, tuple(heatmaps))

    def predict(self, request: InferenceRequest) -> ModelOutput:
        """Prepare, classify and finish one request (no cross-request batching).

        Raises:
            ModelError: If an instance cannot be used or the network misbehaves.
        """
        prepared = self.prepare(request)
        return self.finish(prepared, self.forward(prepared.inputs))

    def self_test(self) -> None:
        """Run a blank input through the network; check the output's shape and range.

        Raises:
            ModelError: If the output is not finite probabilities of the right shape.
        """
        blank = np.zeros((1, self.entry.input.channels, *self._spatial_size), dtype=np.float32)
        probs = self.forward(blank)
        if not np.all(np.isfinite(probs)) or probs.min() < 0.0 or probs.max() > 1.0:
            raise ModelError(
                f"Self-test of {self.entry.name} {self.entry.version}: got outputs "
                f"{probs.ravel()[:5]}...; expected finite probabilities in [0, 1]"
            )

    def _to_input(self, resampled: np.ndarray) -> np.ndarray:
        """Turn an image resampled onto the network grid (modality units) into one input
        ``(C, *spatial)``: the bundle's transforms, else the declared window or percentiles.

        Raises:
            ModelError: If the image has no contrast or the bundle's transforms fail.
        """
        if self._bundle_transforms is not None:
            return self._bundle_transforms(resampled[None])
        return to_unit_range(resampled, self.entry.input.window)[None]

    def _heatmap(self, item: np.ndarray, class_index: int) -> np.ndarray | None:
        """Grad-CAM of one input, or None where the network cannot be hooked."""
        if self._gradcam is None:
            layer = GRADCAM_LAYERS.get(self.family, "class_layers.relu")
            try:
                self._gradcam = GradCamMaker(self._network, layer, str(self._device))
            except ModelError as exc:
                logger.warning("%s: no heatmaps: %s", self.family, exc.reason)
                return None
        return self._gradcam(item, class_index)

    def _inputs(self, datasets: list[Dataset]) -> tuple[list[np.ndarray], list[Any], list[QualityFlag]]:
        """Return the network inputs ``(C, *spatial)``, their items and quality flags."""
        raise NotImplementedError

    def _localise(self, item: Any, heat: np.ndarray) -> tuple[Region, HeatmapGrid] | None:
        """Return the region a heatmap of ``item`` points at and the grid it lies on, or None."""
        raise NotImplementedError


def plane_location(item: PlaneItem, heat: np.ndarray) -> tuple[PlanarRegion, PlaneGrid] | None:
    """The region (a closed POLYLINE in image coordinates, PS3.3 C.18.6.1.2) and the grid of a
    2D input's heatmap. Image coordinates put the top-left pixel's centre at (0.5, 0.5)."""
    region = region_of(heat)
    if region is None:
        return None
    row_map, col_map = item.maps

    def point(row: float, col: float) -> tuple[float, float]:
        r = float(np.clip(row_map.source(row) + 0.5, 0.0, item.rows))
        c = float(np.clip(col_map.source(col) + 0.5, 0.0, item.columns))
        return (round(c, 3), round(r, 3))

    (r0, c0), (r1, c1) = (region.low[0] - 0.5, region.low[1] - 0.5), (region.high[0] + 0.5, region.high[1] + 0.5)
    corners = (point(r0, c0), point(r0, c1), point(r1, c1), point(r1, c0), point(r0, c0))
    located = PlanarRegion(item.ref, corners, point(*region.peak))
    grid = PlaneGrid(
        item.ref,
        item.rows,
        item.columns,
        AxisScale(row_map.scale, row_map.offset),
        AxisScale(col_map.scale, col_map.offset),
        item.geometry,
    )
    return located, grid


class RadiographPredictor(Predictor):
    """Projection radiographs: every frame of every instance is one input.

    Frames are resized to ``input.spatial_size`` and mapped to [0, 1] by their robust percentile
    range, or by ``input.window`` where the entry sets one; with ``preprocessing: bundle`` the
    resized frame goes through the bundle's transforms instead.
    """

    def _inputs(self, datasets: list[Dataset]) -> tuple[list[np.ndarray], list[Any], list[QualityFlag]]:
        inputs, items = [], []
        for ds in datasets:
            uid = str(ds.get("SOPInstanceUID", "?"))
            try:
                for plane in planes_of(ds):
                    rows, cols = plane.pixels.shape
                    inputs.append(self._planar_input(plane.pixels))
                    maps = (AxisMap.fit(rows, self._spatial_size[0]), AxisMap.fit(cols, self._spatial_size[1]))
                    items.append(PlaneItem(plane.ref, rows, cols, maps))
            except UndecodablePixels:
                raise  # names its instance already; the inference stage quarantines it
            except ModelError as exc:
                raise ModelError(f"SOP Instance {uid}: {exc.reason}") from exc
        return inputs, items, []

    def _planar_input(self, pixels: np.ndarray) -> np.ndarray:
        if self._bundle_transforms is None and self.entry.input.window is None:
            return prepare_pixels(pixels, self._spatial_size)
        if len(self._spatial_size) != 2:
            raise ModelError(f"Got spatial_size {self._spatial_size}; expected (H, W) for 2D images")
        return self._to_input(resize(pixels, (self._spatial_size[0], self._spatial_size[1])))

    def _localise(self, item: Any, heat: np.ndarray) -> tuple[Region, HeatmapGrid] | None:
        return plane_location(item, heat)


class ChestXrayPredictor(RadiographPredictor):
    """Multi-label chest radiograph classifier (18 findings and tension pneumothorax)."""

    default_family = "chest_xray"

    def preprocess(self, request: InferenceRequest) -> tuple[np.ndarray, tuple[str, ...]]:
        """Return the network inputs ``(N, C, H, W)`` and the SOP Instance UID of each.

        Raises:
            ModelError: As ``prepare``.
        """
        prepared = self.prepare(request)
        return prepared.inputs, tuple(item.ref.sop_instance_uid for item in prepared.items)


class BoneFracturePredictor(RadiographPredictor):
    """Limb radiographs: fracture present, and where (Grad-CAM region)."""

    default_family = "bone_fracture"
