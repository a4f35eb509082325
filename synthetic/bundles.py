"""Test material for families from MONAI bundles and exported networks (issue 17): the files.

A MONAI bundle is a directory (``configs/metadata.json``, ``configs/inference.json``,
``models/model.ts|.onnx|.pt``, ``LICENSE``, ``docs/``); an exported network is an ONNX or
TorchScript file with a spec YAML beside it. This module writes every file that is *data*: the
metadata with its ``pacsai`` section (what :mod:`core.bundles` reads), the inference config
(``network_def`` and ``preprocessing``), the spec YAML and the weights' ``sha256sum`` sidecar.

The networks themselves (``monai.bundle.init_bundle``, ``monai.bundle.ckpt_export``,
``torch.onnx.export``) are made by the callers that may import torch (tests, benchmarks), from a
:class:`BundleDesign`: this package stays plain data (an import-linter contract keeps torch and
MONAI out of it). A design fixes the architecture (a narrow MONAI DenseNet), the seed, and the
output biases, so that an untrained network's findings are known in advance: a positive bias
makes a finding present on any image, a negative one absent.

>>> metadata(RADIOGRAPH_BUNDLE)["pacsai"]["findings"][0]["code"]["scheme"]
'RADLEX'
>>> RADIOGRAPH_BUNDLE.network_def()["out_channels"]
2
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "BundleDesign",
    "RADIOGRAPH_BUNDLE",
    "VOLUME_BUNDLE",
    "inference_config",
    "metadata",
    "spec_document",
    "write_bundle_configs",
    "write_sidecar",
    "write_spec",
]


@dataclass(frozen=True, slots=True)
class BundleDesign:
    """What a synthetic bundle declares and which network it holds.

    Attributes:
        name: Bundle name (metadata ``name``).
        version: Bundle version.
        kind: ``planar``, ``slices`` or ``volume`` (the ``pacsai`` section).
        spatial_shape: The network's input size.
        findings: Per output, in order: ``key``, ``code`` (scheme, value, meaning),
            ``threshold``, ``critical``.
        modalities: Modalities served.
        body_parts: Body parts served.
        network: ``_target_`` and keyword arguments of the MONAI network (``out_channels``
            and ``spatial_dims`` are added by :meth:`network_def`).
        value_range: Modality values mapped to [0, 1] by the bundle's ``ScaleIntensityRanged``.
        output_activation: As declared in the ``pacsai`` section.
        preprocessing: ``declared`` or ``bundle`` (the ``pacsai`` section).
        output_bias: Bias of each output of the (untrained) network: positive means present.
        weight_scale: Factor on the last layer's weights, so that the bias dominates while
            every output still depends on the image.
        seed: ``torch.manual_seed`` before the network is built.
        network_outputs: Outputs of the network when they should differ from the declared
            findings (for refusal tests); None: one per finding.
    """

    name: str
    version: str
    kind: str
    spatial_shape: tuple[int, ...]
    findings: tuple[Mapping[str, Any], ...]
    modalities: tuple[str, ...]
    body_parts: tuple[str, ...]
    network: Mapping[str, Any] = field(
        default_factory=lambda: {
            "_target_": "DenseNet",
            "in_channels": 1,
            "init_features": 16,
            "growth_rate": 12,
            "block_config": [2, 2, 2],
            "bn_size": 2,
        }
    )
    value_range: tuple[float, float] = (0.0, 4095.0)
    output_activation: str = "sigmoid"
    preprocessing: str = "declared"
    output_bias: tuple[float, ...] = ()
    weight_scale: float = 0.1
    seed: int = 0
    network_outputs: int | None = None

    def network_def(self) -> dict[str, Any]:
        """The ``network_def`` of ``configs/inference.json`` (MONAI's ``_target_`` syntax)."""
        return {
            **self.network,
            "spatial_dims": len(self.spatial_shape),
            "out_channels": self.network_outputs or len(self.findings),
        }


RADIOGRAPH_BUNDLE = BundleDesign(
    name="chest_opacity_bundle",
    version="1.2.0",
    kind="planar",
    spatial_shape=(64, 64),
    findings=(
        {
            "key": "effusion",
            "code": {"scheme": "RADLEX", "value": "RID34539", "meaning": "Pleural effusion"},
            "threshold": 0.5,
            "critical": False,
        },
        {
            "key": "nodule",
            "code": {"scheme": "SCT", "value": "27925004", "meaning": "Nodule"},
            "threshold": 0.5,
            "critical": True,
        },
    ),
    modalities=("DX", "CR"),
    body_parts=("CHEST",),
    output_bias=(4.0, -4.0),
)
"""A 2D radiograph family: the architecture of the built-in ``bone_fracture`` network (so the
same weights can be served as a built-in family) with two outputs; ``effusion`` comes out
present and ``nodule`` absent on any chest phantom."""

VOLUME_BUNDLE = BundleDesign(
    name="head_ct_volume_bundle",
    version="0.3.0",
    kind="volume",
    spatial_shape=(16, 32, 32),
    findings=(
        {
            "key": "intracranial_haemorrhage",
            "code": {"scheme": "SCT", "value": "1386000", "meaning": "Intracranial hemorrhage"},
            "threshold": 0.5,
            "critical": True,
        },
    ),
    modalities=("CT",),
    body_parts=("HEAD",),
    network={
        "_target_": "DenseNet",
        "in_channels": 1,
        "init_features": 8,
        "growth_rate": 8,
        "block_config": [2, 2],
        "bn_size": 2,
    },
    value_range=(-1024.0, 3071.0),
    output_bias=(-4.0,),
)
"""A 3D CT family (16 x 32 x 32), for the refusals: routed radiographs, a planar entry."""


def metadata(design: BundleDesign) -> dict[str, Any]:
    """The bundle's ``configs/metadata.json`` (MONAI's schema) with its ``pacsai`` section.

    Args:
        design: The bundle.

    Returns:
        The JSON object.
    """
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json",
        "name": design.name,
        "version": design.version,
        "changelog": {design.version: "synthetic test bundle"},
        "authors": "PACS-AI Bridge tests",
        "copyright": "Copyright (c) PACS-AI Bridge tests",
        "license": "Apache-2.0",
        "task": f"{design.kind} classification of {', '.join(f['key'] for f in design.findings)}",
        "description": "An untrained, seeded MONAI DenseNet whose output biases fix its findings; not clinical.",
        "intended_use": "Software tests of the PACS-AI Bridge only",
        "data_source": "None (untrained)",
        "data_type": "dicom",
        "eval_metrics": {"auc": None},
        "references": ["Huang et al., Densely Connected Convolutional Networks, CVPR 2017"],
        "network_data_format": _data_format(design),
        "pacsai": _extension(design),
    }


def _data_format(design: BundleDesign) -> dict[str, Any]:
    """``network_data_format``: one image in, one probability per finding out."""
    low, high = design.value_range
    return {
        "inputs": {
            "image": {
                "type": "image",
                "format": "magnitude",
                "modality": "/".join(design.modalities),
                "num_channels": 1,
                "spatial_shape": list(design.spatial_shape),
                "dtype": "float32",
                "value_range": [low, high],
                "is_patch_data": False,
                "channel_def": {"0": "image"},
            }
        },
        "outputs": {
            "pred": {
                "type": "probabilities",
                "format": "classes",
                "num_channels": len(design.findings),
                "spatial_shape": [len(design.findings)],
                "dtype": "float32",
                "value_range": [0, 1],
                "is_patch_data": False,
                "channel_def": {str(i): f["key"] for i, f in enumerate(design.findings)},
            }
        },
    }


def _extension(design: BundleDesign) -> dict[str, Any]:
    return {
        "kind": design.kind,
        "modalities": list(design.modalities),
        "body_parts": list(design.body_parts),
        "output_activation": design.output_activation,
        "preprocessing": design.preprocessing,
        "demo": True,  # untrained: its SRs say they are not clinical
        "findings": [dict(f) for f in design.findings],
    }


def inference_config(design: BundleDesign, base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The bundle's ``configs/inference.json``: ``network_def`` and ``preprocessing``.

    Args:
        design: The bundle.
        base: The config to start from (what ``monai.bundle.init_bundle`` wrote), if any.

    Returns:
        The JSON object: a loader, the channel axis, ``ScaleIntensityRanged`` over
        ``design.value_range`` and ``EnsureTyped``, as a bundle trained on such files has.
    """
    low, high = design.value_range
    preprocessing = {
        "_target_": "Compose",
        "transforms": [
            {"_target_": "LoadImaged", "keys": "image"},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {
                "_target_": "ScaleIntensityRanged",
                "keys": "image",
                "a_min": low,
                "a_max": high,
                "b_min": 0.0,
                "b_max": 1.0,
                "clip": True,
            },
            {"_target_": "EnsureTyped", "keys": "image", "device": "@device"},
        ],
    }
    config = dict(base or {})
    config.setdefault("imports", ["$import glob"])
    config.setdefault("device", "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')")
    return {**config, "network_def": design.network_def(), "preprocessing": preprocessing}


def write_bundle_configs(directory: Path, design: BundleDesign) -> None:
    """Write ``configs/metadata.json`` and ``configs/inference.json`` of a bundle directory.

    An ``inference.json`` already there (``init_bundle``'s template) is kept, with its
    ``network_def`` and ``preprocessing`` replaced.

    Args:
        directory: The bundle directory.
        design: The bundle.
    """
    configs = directory / "configs"
    configs.mkdir(parents=True, exist_ok=True)
    existing = configs / "inference.json"
    base = json.loads(existing.read_text(encoding="utf-8")) if existing.is_file() else None
    (configs / "metadata.json").write_text(json.dumps(metadata(design), indent=4), encoding="utf-8")
    existing.write_text(json.dumps(inference_config(design, base), indent=4), encoding="utf-8")


def spec_document(design: BundleDesign) -> dict[str, Any]:
    """The spec YAML of an exported network (the keys of :func:`core.bundles.from_spec`).

    Args:
        design: What the network declares.

    Returns:
        The mapping to dump as YAML.
    """
    return {
        "name": design.name,
        "version": design.version,
        "authors": "PACS-AI Bridge tests",
        "input": {"spatial_size": list(design.spatial_shape), "channels": 1},
        "card": {
            "description": "An untrained, seeded MONAI DenseNet exported to ONNX; not clinical.",
            "intended_use": "Software tests of the PACS-AI Bridge only",
            "license": "Apache-2.0",
        },
        **_extension(design),
    }


def write_spec(path: Path, design: BundleDesign) -> Path:
    """Write :func:`spec_document` as YAML to ``path``.

    Returns:
        ``path``.
    """
    path.write_text(yaml.safe_dump(spec_document(design), sort_keys=False), encoding="utf-8")
    return path


def write_sidecar(weights: Path) -> Path:
    """Write ``<weights>.sha256`` in ``sha256sum`` format, as demo training does.

    Returns:
        The sidecar path.
    """
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    sidecar = weights.with_name(weights.name + ".sha256")
    sidecar.write_text(f"{digest}  {weights.name}\n", encoding="ascii")
    return sidecar
