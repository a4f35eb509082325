"""Model families from MONAI bundles and exported networks, without code (issue 17). Pure.

A ``models:`` entry may name a MONAI bundle directory (``bundle:``) or a bare ONNX / TorchScript
file (``weights:``) with a small YAML saying what a bundle's metadata would (``spec:``). Before
the schema (``core.config.ModelEntry``) sees such an entry, :func:`expand_models` fills in what
the files declare, so that every later stage works with an ordinary, typed entry:

- from a bundle's ``configs/metadata.json`` (MONAI's bundle format): ``name`` (else the
  directory name), ``version``, ``authors``, the input's ``spatial_shape`` and ``num_channels``
  (``network_data_format.inputs.image``), the output count (``outputs.pred.num_channels``), and
  the model card (``description``, ``intended_use``, ``data_source``, ``eval_metrics``,
  ``license`` / ``copyright``, ``references``);
- from its ``pacsai`` section (MONAI bundles allow extra metadata keys): what a PACS needs and a
  bundle does not say: the kind of input (planar, slices, volume), the modalities and body parts
  it serves, the output activation, the intensity window or spacing, and per output, in the
  network's order, the finding key, its code (SNOMED CT / RadLex / local), threshold and
  critical flag;
- the weights: ``models/model.ts`` (TorchScript), else ``models/model.onnx``, else
  ``models/model.pt`` (a state_dict for the bundle's ``network_def``).

A spec file has the same keys as the ``pacsai`` section plus ``name``, ``version``, ``authors``,
``input`` and ``card``. Anything the entry itself sets wins over the files (``serve``,
``sha256``, a threshold). A field that is missing or contradicts another raises ``ConfigError``
naming the file and the field.

File access is a port (``read_text``, ``exists``): the composition root passes the real ones.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import PurePath
from typing import Any

import yaml

from core.errors import ConfigError

__all__ = ["BUNDLE_METADATA", "BUNDLE_WEIGHTS", "EXTENSION_KEY", "expand_models", "from_metadata", "from_spec"]

BUNDLE_METADATA = "configs/metadata.json"
"""The MONAI bundle's metadata, relative to the bundle directory."""
BUNDLE_INFERENCE = ("configs/inference.json", "configs/inference.yaml")
"""The bundle's inference config (network_def, preprocessing), first that exists."""
BUNDLE_WEIGHTS = ("models/model.ts", "models/model.onnx", "models/model.pt")
"""Weights looked for in a bundle, in this order."""
EXTENSION_KEY = "pacsai"
"""The metadata section holding what a PACS needs beyond MONAI's own keys."""

_EXTENSION_FIELDS = (
    "kind",
    "modalities",
    "body_parts",
    "output_activation",
    "preprocessing",
    "heatmaps",
    "demo",
)
"""Keys of the ``pacsai`` section (and of a spec file) copied to the entry as they are."""

Reader = Callable[[str], str]
Exists = Callable[[str], bool]


def expand_models(raw: Mapping[str, Any], read_text: Reader, exists: Exists, source: str) -> dict[str, Any]:
    """Return ``raw`` with every bundle or spec entry of ``models:`` (and their versions) filled in.

    Args:
        raw: The configuration mapping as read from YAML.
        read_text: Returns a file's text (raises ``OSError`` if it cannot).
        exists: Whether a file exists.
        source: Where ``raw`` came from (for errors).

    Returns:
        A new mapping; entries without ``bundle`` or ``spec`` are unchanged.

    Raises:
        ConfigError: A bundle or spec file is missing, unreadable or lacks a field (each named).
    """
    models = raw.get("models") if isinstance(raw, Mapping) else None
    if not isinstance(models, Mapping):
        return dict(raw) if isinstance(raw, Mapping) else raw
    problems: list[str] = []
    out: dict[str, Any] = {}
    for family, entry in models.items():
        where = f"models.{family}"
        if not isinstance(entry, Mapping):
            out[family] = entry
            continue
        expanded = _expand_entry(entry, where, read_text, exists, problems)
        versions = expanded.get("versions")
        if isinstance(versions, Mapping):
            expanded["versions"] = {
                key: _expand_entry(child, f"{where}.versions.{key}", read_text, exists, problems)
                if isinstance(child, Mapping)
                else child
                for key, child in versions.items()
            }
        out[family] = expanded
    if problems:
        raise ConfigError(source, problems)
    return {**raw, "models": out}


def _expand_entry(
    entry: Mapping[str, Any], where: str, read_text: Reader, exists: Exists, problems: list[str]
) -> dict[str, Any]:
    if "bundle" in entry and "spec" in entry:
        problems.append(f"{where}: both bundle and spec; expected one of them")
        return dict(entry)
    try:
        if "bundle" in entry:
            declared = _bundle_fields(str(entry["bundle"]), where, read_text, exists)
        elif "spec" in entry:
            declared = _spec_fields(str(entry["spec"]), where, read_text)
        else:
            return dict(entry)
    except _Refused as exc:
        problems.append(str(exc))
        return dict(entry)
    merged = {**declared, **{k: v for k, v in entry.items() if k != "findings"}}
    if "findings" in entry:  # the entry may adjust a declared finding (threshold, critical) by key
        merged["findings"] = _merge_findings(declared.get("findings", []), entry["findings"])
    return merged


class _Refused(Exception):
    """A bundle or spec cannot be used; the message names the file and the field."""


def _bundle_fields(bundle: str, where: str, read_text: Reader, exists: Exists) -> dict[str, Any]:
    meta_path = str(PurePath(bundle) / BUNDLE_METADATA)
    try:
        text = read_text(meta_path)
    except OSError as exc:
        raise _Refused(
            f"{where}.bundle: cannot read {meta_path} ({exc.strerror or exc}); expected a MONAI bundle directory"
        ) from None
    try:
        metadata = json.loads(text)
    except ValueError as exc:
        raise _Refused(f"{where}.bundle: {meta_path} is not JSON ({exc})") from None
    license_text = ""
    if not metadata.get("license") and exists(str(PurePath(bundle) / "LICENSE")):
        try:
            license_text = read_text(str(PurePath(bundle) / "LICENSE"))
        except OSError:
            license_text = ""
    fields = from_metadata(metadata, f"{where}.bundle: {meta_path}", default_name=PurePath(bundle).name)
    if license_text and not fields["card"].get("license"):
        fields["card"]["license"] = next((ln.strip() for ln in license_text.splitlines() if ln.strip()), "")[:200]
    weights = next((str(PurePath(bundle) / w) for w in BUNDLE_WEIGHTS if exists(str(PurePath(bundle) / w))), None)
    if weights is None:
        raise _Refused(f"{where}.bundle: no weights in {bundle}; expected one of {list(BUNDLE_WEIGHTS)}")
    fields["weights"] = weights
    if fields.get("preprocessing") == "bundle" and not any(exists(str(PurePath(bundle) / c)) for c in BUNDLE_INFERENCE):
        raise _Refused(
            f"{where}.bundle: {EXTENSION_KEY}.preprocessing is bundle but {bundle} has none of "
            f"{list(BUNDLE_INFERENCE)}; expected its inference config"
        )
    return fields


def _spec_fields(spec: str, where: str, read_text: Reader) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(read_text(spec))
    except OSError as exc:
        raise _Refused(f"{where}.spec: cannot read {spec} ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise _Refused(f"{where}.spec: {spec} is not valid YAML ({exc})") from None
    if not isinstance(loaded, Mapping):
        raise _Refused(f"{where}.spec: {spec} holds a {type(loaded).__name__}; expected a mapping")
    return from_spec(loaded, f"{where}.spec: {spec}")


def from_metadata(metadata: Mapping[str, Any], where: str, default_name: str = "") -> dict[str, Any]:
    """Map a MONAI bundle's ``metadata.json`` (with its ``pacsai`` section) to entry fields.

    Raises:
        _Refused: A required key is missing or inconsistent (named with its path).
    """
    if not isinstance(metadata, Mapping):
        raise _Refused(f"{where}: holds a {type(metadata).__name__}; expected a JSON object")
    ext = metadata.get(EXTENSION_KEY)
    if not isinstance(ext, Mapping):
        raise _Refused(
            f"{where}: {EXTENSION_KEY}: missing; expected a section with kind, modalities and per output "
            "a finding key and code"
        )
    version = metadata.get("version")
    if not isinstance(version, str) or not version:
        raise _Refused(f"{where}: version: got {version!r}; expected the bundle's version string")
    fmt = metadata.get("network_data_format")
    inputs = fmt.get("inputs") if isinstance(fmt, Mapping) else None
    outputs = fmt.get("outputs") if isinstance(fmt, Mapping) else None
    image = _only(inputs, f"{where}: network_data_format.inputs")
    pred_key, pred = _only_item(outputs, f"{where}: network_data_format.outputs")
    shape = image.get("spatial_shape")
    if not isinstance(shape, list | tuple) or not shape or not all(isinstance(n, int) and n > 0 for n in shape):
        raise _Refused(
            f"{where}: network_data_format.inputs.image.spatial_shape: got {shape!r}; expected fixed "
            "positive integers (the size the network takes)"
        )
    channels = image.get("num_channels", 1)
    if not isinstance(channels, int) or channels < 1:
        raise _Refused(f"{where}: network_data_format.inputs.image.num_channels: got {channels!r}; expected >= 1")
    findings = _findings(ext.get("findings"), f"{where}: {EXTENSION_KEY}.findings")
    n_out = pred.get("num_channels")
    if n_out != len(findings):
        raise _Refused(
            f"{where}: network_data_format.outputs.{pred_key}.num_channels: got {n_out!r}; expected "
            f"{len(findings)}, one per finding in {EXTENSION_KEY}.findings"
        )
    fields: dict[str, Any] = {
        "name": str(metadata.get("name") or default_name or "bundle"),
        "version": version,
        "manufacturer": _text(metadata.get("authors"))[:64] or "unknown",
        "input": {
            "spatial_size": list(shape),
            "channels": channels,
            **{k: ext[k] for k in ("window", "spacing_mm") if k in ext},
        },
        "findings": findings,
        "heatmaps": False,
        "card": {
            "description": _text(metadata.get("description") or metadata.get("task")),
            "intended_use": _text(metadata.get("intended_use")),
            "training_data": _text(metadata.get("data_source")),
            "performance": _text(metadata.get("eval_metrics")),
            "license": _text(metadata.get("license") or metadata.get("copyright")),
            "authors": _text(metadata.get("authors")),
            "references": [str(r) for r in metadata.get("references", []) if isinstance(r, str)],
        },
    }
    fields.update({k: ext[k] for k in _EXTENSION_FIELDS if k in ext})
    return fields


def from_spec(spec: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Map a spec file (for a bare ONNX / TorchScript network) to entry fields.

    Raises:
        _Refused: A required key is missing (named).
    """
    for key in ("name", "version", "input", "kind"):
        if key not in spec:
            raise _Refused(f"{where}: {key}: missing; expected it in the spec of an exported network")
    fields: dict[str, Any] = {
        "name": spec["name"],
        "version": str(spec["version"]),
        "manufacturer": _text(spec.get("authors"))[:64] or "unknown",
        "input": spec["input"],
        "findings": _findings(spec.get("findings"), f"{where}: findings"),
        "heatmaps": False,
        "card": {**(spec.get("card") or {}), "authors": _text(spec.get("authors"))},
    }
    fields.update({k: spec[k] for k in _EXTENSION_FIELDS if k in spec})
    return fields


def _findings(raw: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(raw, list | tuple) or not raw:
        raise _Refused(f"{where}: got {type(raw).__name__}; expected a list with one finding per network output")
    out = []
    for i, f in enumerate(raw):
        if not isinstance(f, Mapping) or "key" not in f:
            raise _Refused(f"{where}.{i}.key: missing; expected a finding key per output")
        if not isinstance(f.get("code"), Mapping):
            raise _Refused(
                f"{where}.{i}.code: missing; expected {{scheme, value, meaning}} (SNOMED CT, RadLex or a "
                "local scheme) for finding " + repr(f["key"])
            )
        out.append(dict(f))
    return out


def _merge_findings(declared: list[dict[str, Any]], given: Any) -> Any:
    """The entry's ``findings`` adjust declared ones by key (threshold, critical); the order and
    the set of findings stay the network's."""
    if not isinstance(given, list | tuple) or not declared:
        return given
    by_key = {f.get("key"): f for f in given if isinstance(f, Mapping)}
    return [{**d, **by_key.get(d.get("key"), {})} for d in declared]


def _only(mapping: Any, where: str) -> Mapping[str, Any]:
    return _only_item(mapping, where)[1]


def _only_item(mapping: Any, where: str) -> tuple[str, Mapping[str, Any]]:
    if not isinstance(mapping, Mapping) or len(mapping) != 1:
        count = len(mapping) if isinstance(mapping, Mapping) else 0
        raise _Refused(f"{where}: got {count} entries; expected exactly one (one image in, one prediction out)")
    key, value = next(iter(mapping.items()))
    if not isinstance(value, Mapping):
        raise _Refused(f"{where}.{key}: got {type(value).__name__}; expected an object")
    return str(key), value


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple):
        return ", ".join(_text(v) for v in value)
    if isinstance(value, Mapping):
        return "; ".join(f"{k}: {_text(v)}" for k, v in value.items())
    return str(value)
