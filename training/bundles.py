"""MONAI bundles and exported networks made with MONAI's own tooling, from a ``BundleDesign``.

The files that are data come from :mod:`synthetic.bundles` (which may not import torch); the
networks are made here: ``monai.bundle.init_bundle`` (directory layout and ``models/model.pt``),
``monai.bundle.ckpt_export`` (``models/model.ts``) and ``torch.onnx.export`` (``dynamo=False``,
dynamic batch axis). Every weights file gets its ``sha256sum`` sidecar. The tests of issue 17 and
``benchmarks/bench_inference.py`` both use it; the product never imports it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from monai.bundle import ConfigParser, ckpt_export, init_bundle

from synthetic.bundles import BundleDesign, write_bundle_configs, write_sidecar, write_spec

__all__ = ["build_network", "export_onnx", "make_bundle", "make_exported"]


def build_network(design: BundleDesign) -> torch.nn.Module:
    """The design's network, seeded, with its output biases set; eval mode, CPU."""
    torch.manual_seed(design.seed)
    network = ConfigParser({"network_def": design.network_def()}).get_parsed_content("network_def")
    if design.output_bias:
        out = network.class_layers.out
        with torch.no_grad():
            out.weight.mul_(design.weight_scale)
            out.bias.copy_(torch.tensor(design.output_bias, dtype=out.bias.dtype))
    return network.eval()


def export_onnx(network: torch.nn.Module, path: Path, design: BundleDesign, fixed_batch: int = 0) -> Path:
    """Export ``network`` to ONNX with a dynamic batch axis (or a fixed one); write its sidecar."""
    example = torch.zeros((fixed_batch or 1, 1, *design.spatial_shape))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter, on purpose
        torch.onnx.export(
            network,
            (example,),
            str(path),
            dynamo=False,
            input_names=["image"],
            output_names=["pred"],
            dynamic_axes=None if fixed_batch else {"image": {0: "batch"}, "pred": {0: "batch"}},
        )
    write_sidecar(path)
    return path


def make_bundle(directory: Path, design: BundleDesign, weights: str = "ts") -> Path:
    """Make a MONAI bundle in ``directory`` holding the design's network.

    Args:
        directory: Where (created).
        design: The bundle.
        weights: ``ts`` (``models/model.ts`` by ``ckpt_export``), ``onnx`` (``models/model.onnx``)
            or ``pt`` (only the state_dict ``models/model.pt`` for the bundle's ``network_def``).

    Returns:
        ``directory``.
    """
    network = build_network(design)
    directory.parent.mkdir(parents=True, exist_ok=True)
    init_bundle(str(directory), network=network)
    write_bundle_configs(directory, design)
    models = directory / "models"
    if weights == "ts":
        ckpt_export(
            net_id="network_def",
            filepath=str(models / "model.ts"),
            ckpt_file=str(models / "model.pt"),
            meta_file=str(directory / "configs" / "metadata.json"),
            config_file=str(directory / "configs" / "inference.json"),
        )
        write_sidecar(models / "model.ts")
    elif weights == "onnx":
        export_onnx(network, models / "model.onnx", design)
    write_sidecar(models / "model.pt")
    return directory


def make_exported(directory: Path, design: BundleDesign, fmt: str = "onnx") -> tuple[Path, Path]:
    """Export the design's network as a bare file (``onnx`` or ``ts``) with its spec YAML.

    Returns:
        The weights file and the spec file.
    """
    directory.mkdir(parents=True, exist_ok=True)
    network = build_network(design)
    if fmt == "onnx":
        weights = export_onnx(network, directory / f"{design.name}.onnx", design)
    else:
        weights = directory / f"{design.name}.ts"
        torch.jit.save(torch.jit.script(network), str(weights))
        write_sidecar(weights)
    return weights, write_spec(directory / f"{design.name}.yaml", design)
