"""Model weights: find the file, check its sha256, load it into the family's network.

No model hub can be reached (DESIGN.md, "Where the models come from"): a weights file is named in
the registry entry with its sha256 pinned there; a sidecar ``<weights>.sha256`` next to it
(``sha256sum`` format, as ``train_demo`` writes it) may only confirm it, or, for demo weights
(``demo: true``) only, supply it (issue 13). A missing or mismatched file stops the replica with a ``ModelWeightsError`` naming the file, the expected and the found.

Three formats load: TorchScript archives (``torch.jit.save``; the archive holds
``constants.pkl`` and ``code/``), ONNX files (``.onnx``, run by onnxruntime:
:class:`models.bundles.OnnxNetwork`) and ``state_dict`` files (``torch.save``), read with
``weights_only=True`` so that a weights file cannot run code. State dicts load strictly, into the
family's network, or for a bundle family into the bundle's ``network_def``
(:func:`models.networks.build_network`).
"""

from __future__ import annotations

import logging
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

from core.config import ModelEntry
from core.errors import ModelWeightsError
from models.bundles import OnnxNetwork
from models.networks import build_network
from models.weights import SIDECAR_SUFFIX, file_sha256, resolve_weights, sidecar_path

__all__ = ["SIDECAR_SUFFIX", "file_sha256", "load_network", "resolve_weights", "sidecar_path"]

logger = logging.getLogger(__name__)


def load_network(family: str, entry: ModelEntry, map_location: str = "cpu") -> torch.nn.Module:
    """Check and load the weights of ``entry`` into the family's network, in eval mode.

    Args:
        family: Model family key (selects the architecture for a state_dict).
        entry: The registry entry.
        map_location: Device to load the tensors onto (an ONNX network runs on the CPU).

    Returns:
        The network in eval mode (a ``ScriptModule`` for TorchScript files, an ``OnnxNetwork``
        for ``.onnx`` files).

    Raises:
        ModelWeightsError: If the file is missing, mismatched or unreadable, or its state_dict does
            not fit the family's network (or the bundle's ``network_def``) exactly.
        ModelError: If the family is unknown, or a bundle's ``network_def`` cannot be built.
    """
    path = resolve_weights(entry)
    if path.suffix.lower() == ".onnx":
        network: torch.nn.Module = OnnxNetwork(path, threads=entry.serve.torch_threads)
    elif _is_torchscript(path):
        try:
            network = torch.jit.load(str(path), map_location=map_location)
        except RuntimeError as exc:
            raise ModelWeightsError(f"Cannot load TorchScript weights file {path}: {exc}") from exc
    else:
        network = build_network(family, entry)
        _load_state_dict(network, _read_state_dict(path, map_location), path)
        network = network.to(map_location)
    logger.info("Loaded %s %s from %s", entry.name, entry.version, path)
    return network.eval()


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives are zip files with ``<name>/constants.pkl`` and ``<name>/code/``."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


def _read_state_dict(path: Path, map_location: str) -> Mapping[str, torch.Tensor]:
    try:
        loaded = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        raise ModelWeightsError(
            f"Cannot read weights file {path} as a state_dict (torch.load, weights_only=True): "
            f"{type(exc).__name__}: {str(exc)[:300]}"
        ) from exc
    if not isinstance(loaded, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()
    ):
        raise ModelWeightsError(
            f"Weights file {path} holds a {type(loaded).__name__}; "
            "expected a state_dict (a mapping of parameter names to tensors)"
        )
    return loaded


def _load_state_dict(network: torch.nn.Module, state: Mapping[str, torch.Tensor], path: Path) -> None:
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelWeightsError(
            f"Weights file {path} does not fit the network: {str(exc)[:600]}; expected exactly "
            "the parameters of the configured architecture and finding count"
        ) from exc
