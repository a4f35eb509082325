"""Chest X-ray predictor: DICOM bytes in, one ``Prediction`` per study task out. Ray-free.

The steps are separate methods so that a Serve deployment can batch the network pass across
requests: ``preprocess`` (per request, CPU) -> ``forward`` (per batch) -> ``to_prediction``
(per request). ``predict`` chains them for one request without batching.

A study task may hold several radiographs (PA and lateral, repeats). Each is classified and a
finding's probability is its maximum over the images: a finding seen on any view is reported.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from core.config import ModelEntry
from core.errors import ModelError
from core.findings import term_for
from core.types import Finding, InferenceRequest, Prediction
from models.preprocessing import radiograph_to_array
from models.registry import load_network

__all__ = ["ChestXrayPredictor"]

logger = logging.getLogger(__name__)


class ChestXrayPredictor:
    """Multi-label chest radiograph classifier around a loaded network.

    Args:
        entry: The registry entry (input size, findings with thresholds, name and version).
        network: The network, in eval mode, with one output per finding of ``entry``.
        family: Model family key reported in predictions.
        device: Torch device of ``network``.
    """

    def __init__(
        self,
        entry: ModelEntry,
        network: torch.nn.Module,
        family: str = "chest_xray",
        device: str = "cpu",
    ) -> None:
        self.entry = entry
        self.family = family
        self._network = network.eval()
        self._device = torch.device(device)
        self._spatial_size = tuple(entry.input.spatial_size)

    @classmethod
    def load(cls, entry: ModelEntry, family: str = "chest_xray") -> ChestXrayPredictor:
        """Check and load the weights of ``entry``; use a GPU only if the entry asks for one.

        Args:
            entry: The registry entry.
            family: Model family key.

        Returns:
            The predictor, ready to run.

        Raises:
            ModelWeightsError: If the weights are missing, mismatched or do not fit.
            ModelError: If the family is unknown.
        """
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

    def preprocess(self, request: InferenceRequest) -> tuple[np.ndarray, tuple[str, ...]]:
        """Decode and prepare every instance of the request.

        Args:
            request: The task, with the DICOM file bytes of each instance.

        Returns:
            float32 ``(N, C, H, W)`` network input and the N SOP Instance UIDs, in order.

        Raises:
            ModelError: If the request is for another family, holds no instance, or an instance
                cannot be turned into an input (the message names its SOP Instance UID).
        """
        if request.family != self.family:
            raise ModelError(
                f'Got a request for family "{request.family}"; expected "{self.family}"'
            )
        if not request.instances:
            raise ModelError(f"Got a request for study {request.study_uid} with no instances")
        images = []
        for uid, data in request.instances:
            try:
                images.append(radiograph_to_array(data, self._spatial_size))
            except ModelError as exc:
                raise ModelError(f"SOP Instance {uid}: {exc.reason}") from exc
        batch = np.stack(images)
        channels = self.entry.input.channels
        if channels > 1:
            batch = np.repeat(batch, channels, axis=1)
        return batch, tuple(uid for uid, _ in request.instances)

    def forward(self, batch: np.ndarray) -> np.ndarray:
        """Run the network on a batch and return sigmoid probabilities.

        Args:
            batch: float32 ``(N, C, H, W)``.

        Returns:
            float32 ``(N, K)`` probabilities, K = number of findings.

        Raises:
            ModelError: If the batch or the output has an unexpected shape.
        """
        expected = (self.entry.input.channels, *self._spatial_size)
        if batch.ndim != 4 or tuple(batch.shape[1:]) != expected:
            raise ModelError(f"Got a batch of shape {batch.shape}; expected (N, {expected})")
        with torch.inference_mode():
            tensor = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
            logits = self._network(tensor.to(self._device))
            probs = torch.sigmoid(logits.float()).cpu().numpy()
        if probs.shape != (batch.shape[0], len(self.entry.findings)):
            raise ModelError(
                f"Network returned shape {probs.shape}; "
                f"expected ({batch.shape[0]}, {len(self.entry.findings)})"
            )
        return probs

    def to_prediction(self, probs_per_image: np.ndarray, uids: tuple[str, ...]) -> Prediction:
        """Combine per-image probabilities into the study's prediction (maximum over images).

        Args:
            probs_per_image: ``(N, K)`` probabilities, one row per instance of ``uids``.
            uids: The N SOP Instance UIDs.

        Returns:
            The prediction; ``extra["source_by_finding"]`` names, per finding, the instance with
            the highest probability (the evidence image for the SR).

        Raises:
            ModelError: If the shapes disagree with ``uids`` or the findings.
        """
        probs = np.asarray(probs_per_image, dtype=np.float64)
        if probs.ndim != 2 or probs.shape != (len(uids), len(self.entry.findings)):
            raise ModelError(
                f"Got probabilities of shape {probs.shape}; "
                f"expected ({len(uids)}, {len(self.entry.findings)})"
            )
        best = probs.argmax(axis=0)
        findings = tuple(
            Finding(
                key=spec.key,
                term=term_for(spec.key),
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
            source_uids=tuple(uids),
            demo=self.entry.demo,
            extra={"source_by_finding": {f.key: uids[best[k]] for k, f in enumerate(findings)}},
        )

    def predict(self, request: InferenceRequest) -> Prediction:
        """Preprocess, classify and combine one request (no cross-request batching).

        Args:
            request: The task.

        Returns:
            The prediction.

        Raises:
            ModelError: If an instance cannot be used or the network misbehaves.
        """
        batch, uids = self.preprocess(request)
        return self.to_prediction(self.forward(batch), uids)

    def self_test(self) -> None:
        """Run a blank image through the network; check the output's shape and range.

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
