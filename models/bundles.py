"""Networks and preprocessing of families from MONAI bundles and exported networks (issue 17).

A bundle or exported family has no code of its own (``core.bundles`` turns its files into an
ordinary registry entry with ``kind`` set); what it needs at run time is here:

- :class:`OnnxNetwork`: an ONNX file run by onnxruntime (``CPUExecutionProvider``), wrapped as a
  ``torch.nn.Module`` from tensor to tensor, so that ``Predictor.forward`` runs it like any
  network. The batch axis may be dynamic or fixed (then the batch runs in chunks of that size).
- :func:`network_from_bundle`: the bundle's ``network_def`` from ``configs/inference.json``
  (or ``.yaml``), instantiated with MONAI's bundle API (``monai.bundle.ConfigParser``), for a
  ``models/model.pt`` state_dict (loaded strictly, ``weights_only=True``, by
  :mod:`models.registry`).
- :class:`BundlePreprocessing`: the bundle's own ``preprocessing`` transforms, for entries with
  ``preprocessing: bundle``. They run after the predictor has resampled the image onto
  ``input.spatial_size`` (modality units, no window), on ``{"image": (1, *spatial)}``; loader
  transforms (``LoadImage(d)``, ``EnsureChannelFirst(d)``) are skipped, since the image is
  already an array, channel first.

A bundle's config may hold Python expressions (``$...``) that MONAI evaluates: a bundle is code,
to be deployed only from a trusted source, like any network. Its weights are still checked
against their sha256 before anything is loaded (:func:`models.registry.resolve_weights`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from monai.bundle import ConfigParser

from core.bundles import BUNDLE_INFERENCE
from core.config import ModelEntry
from core.errors import ModelError, ModelWeightsError

__all__ = ["BundlePreprocessing", "LOADER_TRANSFORMS", "OnnxNetwork", "inference_config", "network_from_bundle"]

logger = logging.getLogger(__name__)

LOADER_TRANSFORMS = frozenset({"LoadImage", "LoadImaged", "EnsureChannelFirst", "EnsureChannelFirstd"})
"""Transforms of a bundle's ``preprocessing`` that read files or add the channel axis: skipped,
since the predictor hands over an array that is already channel first."""


class OnnxNetwork(torch.nn.Module):
    """An ONNX network run by onnxruntime on the CPU, called like a torch network.

    Args:
        path: The ``.onnx`` file (its sha256 already checked).
        threads: onnxruntime intra-op threads; 0 lets onnxruntime choose.

    Raises:
        ModelWeightsError: If onnxruntime cannot load the file, or the network does not take
            exactly one input and give at least one output.
    """

    def __init__(self, path: Path, threads: int = 0) -> None:
        super().__init__()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        try:
            self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's errors derive from Exception only
            raise ModelWeightsError(f"Cannot load ONNX weights file {path}: {type(exc).__name__}: {exc}") from exc
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if len(inputs) != 1 or not outputs:
            raise ModelWeightsError(
                f"ONNX weights file {path} takes {len(inputs)} inputs and gives {len(outputs)} outputs; "
                "expected one image input and one output (the first output is used)"
            )
        self._path = path
        self._input = inputs[0].name
        batch = inputs[0].shape[0] if inputs[0].shape else None
        self._fixed_batch = batch if isinstance(batch, int) and batch > 0 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the network on a float32 batch ``(N, C, *spatial)``.

        Returns:
            The first output of the network, on the CPU.

        Raises:
            ModelError: If onnxruntime refuses the input (the message names the shape).
        """
        array = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        if self._fixed_batch is None:
            return torch.from_numpy(self._run(array))
        n, size = len(array), self._fixed_batch
        chunks = []
        for start in range(0, n, size):
            chunk = array[start : start + size]
            padded = np.concatenate([chunk, np.zeros((size - len(chunk), *chunk.shape[1:]), np.float32)])
            chunks.append(self._run(padded)[: len(chunk)])
        return torch.from_numpy(np.concatenate(chunks))

    def _run(self, array: np.ndarray) -> np.ndarray:
        try:
            return np.asarray(self._session.run(None, {self._input: array})[0])
        except Exception as exc:  # onnxruntime's errors derive from Exception only
            raise ModelError(
                f"ONNX network {self._path.name} refused an input of shape {tuple(array.shape)}: "
                f"{type(exc).__name__}: {str(exc)[:300]}"
            ) from exc


def inference_config(bundle: str) -> Path:
    """Return the bundle's inference config: the first of ``core.bundles.BUNDLE_INFERENCE``.

    Raises:
        ModelError: If the bundle has none.
    """
    for name in BUNDLE_INFERENCE:
        path = Path(bundle) / name
        if path.is_file():
            return path
    raise ModelError(f"Bundle {bundle} has none of {list(BUNDLE_INFERENCE)}; expected its inference config")


def _parser(bundle: str) -> ConfigParser:
    path = inference_config(bundle)
    parser = ConfigParser()
    try:
        parser.read_config(str(path))
    except (OSError, ValueError) as exc:
        raise ModelError(f"Cannot read {path}: {type(exc).__name__}: {exc}") from exc
    parser["bundle_root"] = str(bundle)
    return parser


def network_from_bundle(entry: ModelEntry) -> torch.nn.Module:
    """Instantiate the ``network_def`` of the entry's bundle (MONAI bundle API), untrained.

    Args:
        entry: A bundle entry (``entry.bundle`` set).

    Returns:
        The network, on the CPU.

    Raises:
        ModelError: If the entry names no bundle, or its ``network_def`` is missing or cannot be
            instantiated (the message names the config file).
    """
    if entry.bundle is None:
        raise ModelError(
            f"Weights {entry.weights} of model {entry.name} {entry.version} are a state_dict, which needs "
            "the network's definition; expected a bundle (network_def in configs/inference.json), or "
            "TorchScript / ONNX weights"
        )
    parser = _parser(entry.bundle)
    if "network_def" not in parser:
        raise ModelError(f"{inference_config(entry.bundle)}: network_def: missing; expected the network's definition")
    try:
        network = parser.get_parsed_content("network_def")
    except Exception as exc:  # MONAI instantiates arbitrary targets: any error is the bundle's
        raise ModelError(
            f"{inference_config(entry.bundle)}: network_def: cannot be instantiated ({type(exc).__name__}: "
            f"{str(exc)[:300]})"
        ) from exc
    if not isinstance(network, torch.nn.Module):
        raise ModelError(
            f"{inference_config(entry.bundle)}: network_def: got a {type(network).__name__}; expected a torch module"
        )
    return network


def _without_loaders(section: Any) -> Any:
    """The ``preprocessing`` config without its loader transforms (a Compose or a list)."""

    def keep(transform: Any) -> bool:
        target = transform.get("_target_", "") if isinstance(transform, Mapping) else ""
        return str(target).replace("#", ".").rsplit(".", 1)[-1] not in LOADER_TRANSFORMS

    if isinstance(section, Mapping) and isinstance(section.get("transforms"), Sequence):
        return {**section, "transforms": [t for t in section["transforms"] if keep(t)]}
    if isinstance(section, Sequence) and not isinstance(section, str):
        return {"_target_": "Compose", "transforms": [t for t in section if keep(t)]}
    return section


class BundlePreprocessing:
    """A bundle's ``preprocessing`` transforms, applied to a resampled image.

    Args:
        entry: A bundle entry with ``preprocessing: bundle``.

    Raises:
        ModelError: If the bundle has no inference config or no ``preprocessing`` in it, or the
            transforms cannot be instantiated.
    """

    def __init__(self, entry: ModelEntry) -> None:
        if entry.bundle is None:
            raise ModelError(
                f"Model {entry.name} {entry.version} has preprocessing: bundle but no bundle; expected a "
                "bundle directory with configs/inference.json"
            )
        parser = _parser(entry.bundle)
        where = inference_config(entry.bundle)
        if "preprocessing" not in parser:
            raise ModelError(f"{where}: preprocessing: missing; expected the bundle's transforms")
        parser["preprocessing"] = _without_loaders(parser.get("preprocessing"))
        parser["device"] = "$torch.device('cpu')"  # preprocessing runs in the replica's CPU threads
        try:
            self._transform = parser.get_parsed_content("preprocessing")
        except Exception as exc:  # MONAI instantiates arbitrary targets: any error is the bundle's
            raise ModelError(
                f"{where}: preprocessing: cannot be instantiated ({type(exc).__name__}: {str(exc)[:300]})"
            ) from exc
        self._where = where
        self._expected = (entry.input.channels, *entry.input.spatial_size)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """Transform one image ``(1, *spatial)`` in modality units into network input.

        Returns:
            float32 ``(1, *spatial)`` or ``(channels, *spatial)``.

        Raises:
            ModelError: If the transforms fail or change the shape (both shapes named).
        """
        try:
            out = self._transform({"image": image})
        except Exception as exc:  # MONAI transforms raise anything; the message names the bundle
            raise ModelError(f"{self._where}: preprocessing failed: {type(exc).__name__}: {str(exc)[:300]}") from exc
        result = out.get("image") if isinstance(out, Mapping) else None
        if result is None:
            raise ModelError(f"{self._where}: preprocessing gave a {type(out).__name__}; expected a dict with 'image'")
        array = result.detach().cpu().numpy() if isinstance(result, torch.Tensor) else np.asarray(result)
        allowed = {self._expected, (1, *self._expected[1:])}
        if tuple(array.shape) not in allowed:
            raise ModelError(
                f"{self._where}: preprocessing gave an image of shape {tuple(array.shape)}; expected "
                f"{self._expected} (input.channels, *input.spatial_size)"
            )
        return array.astype(np.float32, copy=False)
