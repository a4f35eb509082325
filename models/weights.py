"""Weights files checked against their sha256, without torch (issue 13: the sha256 is pinned).

A weights file is named in the registry entry with its sha256 pinned there; a sidecar
``<weights>.sha256`` next to it (``sha256sum`` format, as ``train_demo`` writes it) may only
confirm it, or, for demo weights (``demo: true``) only, supply it. A missing or mismatched file
is a ``ModelWeightsError`` naming the file, the expected and the found sha256.

Kept apart from ``models.registry`` (which loads the networks, so imports torch): ``pacsai up``
checks every weights file before Ray starts (``serve.weights``), in a second instead of after
the pipeline is up. A file's digest is remembered per process by path, size and modification
time, so the replica-side check after it does not read the file again in the same process.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

from core.config import ModelEntry
from core.errors import ModelWeightsError

__all__ = ["SIDECAR_SUFFIX", "file_sha256", "resolve_weights", "sidecar_path"]

_HEX_DIGITS = frozenset("0123456789abcdef")
_digests: dict[tuple[str, int, int], str] = {}
_lock = threading.Lock()

SIDECAR_SUFFIX = ".sha256"
"""Appended to the weights file name to get the sidecar holding its expected sha256."""

_HEX_DIGITS = frozenset("0123456789abcdef")


def sidecar_path(weights: Path) -> Path:
    """Return ``<weights>.sha256``."""
    return weights.with_name(weights.name + SIDECAR_SUFFIX)


def file_sha256(path: Path) -> str:
    """Return the lowercase hex sha256 of a file, read in 1 MiB chunks (remembered while the
    file keeps its size and modification time)."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    with _lock:
        known = _digests.get(key)
    if known is not None:
        return known
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    with _lock:
        _digests[key] = digest.hexdigest()
    return digest.hexdigest()


def resolve_weights(entry: ModelEntry) -> Path:
    """Return the weights file of ``entry`` after checking it against its expected sha256.

    Args:
        entry: The registry entry; ``entry.weights`` is relative to the working directory.

    Returns:
        The weights path.

    Raises:
        ModelWeightsError: If the file or its sidecar is missing or unreadable, the sidecar holds
            no sha256, or the file's sha256 differs from the expected one.
    """
    path = Path(entry.weights)
    if not path.is_file():
        raise ModelWeightsError(
            f"Weights file {path} of model {entry.name} {entry.version} not found "
            f"(resolved to {path.absolute()}); expected a state_dict, TorchScript or ONNX file "
            "(run `make weights` or `python -m training` for demo weights)"
        )
    expected = _expected_sha256(entry, path)
    try:
        found = file_sha256(path)
    except OSError as exc:
        raise ModelWeightsError(f"Cannot read weights file {path}: {exc}") from exc
    if found != expected:
        source = "the registry entry" if entry.sha256 else f"sidecar {sidecar_path(path)}"
        raise ModelWeightsError(f"Weights file {path} has sha256 {found}; expected {expected} (from {source})")
    return path


def _expected_sha256(entry: ModelEntry, path: Path) -> str:
    """The sha256 pinned in the entry; a sidecar beside the weights may only confirm it (issue
    13: whoever can write the weights can write the sidecar). Demo weights (``demo: true``)
    without a pinned sha256 take the sidecar's, as ``train_demo`` writes it."""
    if entry.sha256 is None:
        if not entry.demo:
            raise ModelWeightsError(
                f"Model {entry.name} {entry.version}: no sha256 in its registry entry; expected the "
                "weights' sha256 pinned in the config (a sidecar may only confirm it)"
            )
        return _sidecar_sha256(path)
    if sidecar_path(path).exists() and _sidecar_sha256(path) != entry.sha256:
        raise ModelWeightsError(
            f"Sidecar {sidecar_path(path)} of weights file {path} disagrees with the sha256 pinned "
            f"in the registry entry ({entry.sha256}); expected the same sha256 or no sidecar"
        )
    return entry.sha256


def _sidecar_sha256(weights: Path) -> str:
    """Read the expected sha256 from ``<weights>.sha256`` (first token, ``sha256sum`` format)."""
    sidecar = sidecar_path(weights)
    try:
        text = sidecar.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelWeightsError(
            f"Weights file {weights} has no sha256 in its registry entry and its sidecar "
            f"{sidecar} cannot be read ({type(exc).__name__}); expected the entry's sha256 or a "
            "sidecar holding 64 hex digits"
        ) from exc
    token = text.split()[0].lower() if text.split() else ""
    if len(token) != 64 or not set(token) <= _HEX_DIGITS:
        raise ModelWeightsError(
            f"Sidecar {sidecar} of weights file {weights} holds {token[:80]!r}; expected a sha256 of 64 hex digits"
        )
    return token
