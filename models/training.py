"""Demo weights: a short CPU training run on freshly drawn phantoms (``pacsai models train-demo``).

The weights are for the demo and the tests only: they prove that detection works end to end on
phantoms with known lesions, and say nothing about real radiographs. Every step draws a new
batch, balanced so that every phantom finding is positive about 30 % of the time; outputs without
a phantom signal are trained towards 0. A phantom with exactly one of nodule and mass comes with
its twin (same anatomy, the other lesion), which teaches the two apart within the short budget.
The images go through the same resize and percentile window as at inference time
(:func:`models.preprocessing.prepare_pixels`); the held-out evaluation goes through synthetic
DICOM and the whole inference preprocessing.

The file is written atomically (temporary file, fsync, rename) with a ``sha256sum``-style
sidecar, which :func:`models.registry.resolve_weights` checks on load.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core.config import ModelEntry
from core.errors import ModelError
from models.networks import build_network
from models.phantoms import PHANTOM_FINDINGS, chest_phantom, implied_findings, sample_findings
from models.preprocessing import prepare_pixels, radiograph_to_array
from models.registry import file_sha256, sidecar_path
from models.synthetic_dicom import make_cxr_study

__all__ = ["DEFAULT_STEPS", "FindingEvaluation", "TrainReport", "auc", "train_demo"]

logger = logging.getLogger(__name__)

DEFAULT_STEPS = 150
"""Steps when the caller passes ``steps=0``: about 2-3 minutes on 2 CPU cores at 128 x 128."""

_LEARNING_RATE = 2e-3
_WEIGHT_DECAY = 1e-4
_WARMUP_FRACTION = 0.1
_LOSS_WEIGHTS = {"nodule": 2.0, "mass": 2.0}
"""Small, confusable lesions weigh more, so that the short run learns them as well."""


@dataclass(frozen=True, slots=True)
class FindingEvaluation:
    """Held-out result for one phantom finding.

    Attributes:
        key: Finding key.
        auc: Area under the ROC curve (NaN if a class is missing).
        mean_positive: Mean probability on phantoms showing the finding.
        mean_negative: Mean probability on the others.
        n_positive: Phantoms showing the finding.
        n_negative: Phantoms not showing it.
    """

    key: str
    auc: float
    mean_positive: float
    mean_negative: float
    n_positive: int
    n_negative: int


@dataclass(frozen=True, slots=True)
class TrainReport:
    """What a demo training run did and how well it separates the phantom findings.

    Attributes:
        family: Model family key.
        path: The weights file written.
        sha256: Its sha256 (also in the sidecar).
        steps: Optimiser steps.
        batch_size: Phantoms per step.
        final_loss: Mean training loss of the last (up to) 10 steps.
        seconds: Wall time of the training loop (evaluation excluded).
        evaluation: One entry per phantom finding the model outputs.
    """

    family: str
    path: Path
    sha256: str
    steps: int
    batch_size: int
    final_loss: float
    seconds: float
    evaluation: tuple[FindingEvaluation, ...]

    def auc_of(self, key: str) -> float:
        """Return the held-out AUC of ``key`` (NaN if it was not evaluated)."""
        return next((e.auc for e in self.evaluation if e.key == key), math.nan)


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Return the ROC AUC: the chance that a positive outscores a negative (ties count half).

    >>> auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]))
    0.75

    Args:
        scores: Scores, any scale.
        labels: 1 for positive, 0 for negative.

    Returns:
        The AUC, or NaN if there are no positives or no negatives.
    """
    positive = scores[labels.astype(bool)]
    negative = scores[~labels.astype(bool)]
    if positive.size == 0 or negative.size == 0:
        return math.nan
    greater = (positive[:, None] > negative[None, :]).mean()
    ties = (positive[:, None] == negative[None, :]).mean()
    return float(greater + 0.5 * ties)


def train_demo(
    family: str,
    entry: ModelEntry,
    out_path: Path,
    *,
    steps: int,
    seed: int = 0,
    batch_size: int = 16,
    log: Callable[[str], None] = print,
    eval_size: int = 64,
) -> TrainReport:
    """Train the family's network briefly on CPU on phantoms; write weights and sidecar.

    Args:
        family: Model family key; only ``"chest_xray"`` has phantoms so far.
        entry: The registry entry (input size and findings, in output order).
        out_path: Where to write the ``state_dict``; ``<out_path>.sha256`` is written too.
        steps: Optimiser steps (each on a freshly drawn batch); 0 means ``DEFAULT_STEPS``.
        seed: Seed of the phantoms and the initial weights.
        batch_size: Phantoms per step.
        log: Receives progress lines.
        eval_size: Held-out phantoms for the evaluation (synthetic DX DICOM at twice the input
            size, through the same preprocessing as inference).

    Returns:
        The report, with the held-out evaluation of every phantom finding the model outputs.

    Raises:
        ModelError: If the family has no phantoms, the entry has no phantom finding, or the
            arguments are out of range.
    """
    steps = steps or DEFAULT_STEPS
    keys = _check_arguments(family, entry, steps, batch_size)
    torch.manual_seed(seed)
    # channels_last makes the oneDNN convolutions about 15 % faster on CPU; the saved
    # state_dict loads into a default (contiguous) network all the same.
    network = build_network(family, entry).to(memory_format=torch.channels_last)
    start = time.perf_counter()
    losses = _fit(network, entry, keys, np.random.default_rng(seed), steps, batch_size, log)
    seconds = time.perf_counter() - start
    network.eval()
    digest = _save_atomically(network, out_path)
    evaluation = _evaluate(network, entry, keys, np.random.default_rng(seed + 1_000_003), eval_size)
    for e in evaluation:
        log(f"held-out {e.key}: AUC {e.auc:.3f}, mean p {e.mean_positive:.3f} (positive, "
            f"n={e.n_positive}) vs {e.mean_negative:.3f} (negative, n={e.n_negative})")
    final_loss = float(np.mean(losses[-10:]))
    return TrainReport(family, out_path, digest, steps, batch_size, final_loss, seconds, evaluation)


def _fit(
    network: torch.nn.Module,
    entry: ModelEntry,
    keys: tuple[str, ...],
    rng: np.random.Generator,
    steps: int,
    batch_size: int,
    log: Callable[[str], None],
) -> list[float]:
    """AdamW with warm-up and cosine decay, one fresh batch per step; return the losses."""
    weights = torch.tensor([_LOSS_WEIGHTS.get(key, 1.0) for key in keys])
    optimiser = torch.optim.AdamW(network.parameters(), _LEARNING_RATE, weight_decay=_WEIGHT_DECAY)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: _lr_factor(s, steps))
    losses: list[float] = []
    network.train()
    start = time.perf_counter()
    # One thread draws the next batch while torch trains on this one.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="phantoms") as pool:
        pending = pool.submit(_batch, rng, entry, keys, batch_size)
        for step in range(1, steps + 1):
            images, labels = pending.result()
            if step < steps:
                pending = pool.submit(_batch, rng, entry, keys, batch_size)
            losses.append(_step(network, optimiser, images, labels, weights))
            schedule.step()
            if step == 1 or step % 10 == 0 or step == steps:
                log(
                    f"step {step}/{steps} loss {np.mean(losses[-10:]):.4f} "
                    f"({time.perf_counter() - start:.0f} s)"
                )
    return losses


def _step(
    network: torch.nn.Module,
    optimiser: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
) -> float:
    """One optimiser step of weighted multi-label BCE; return the loss."""
    logits = network(images.contiguous(memory_format=torch.channels_last))
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels, weight=weights)
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    optimiser.step()
    return loss.item()


def _check_arguments(
    family: str, entry: ModelEntry, steps: int, batch_size: int
) -> tuple[str, ...]:
    """Validate; return the entry's finding keys in output order."""
    if family != "chest_xray":
        raise ModelError(f'Got family "{family}" for train-demo; expected "chest_xray"')
    if steps < 1 or batch_size < 1:
        raise ModelError(f"Got steps={steps}, batch_size={batch_size}; expected both >= 1")
    keys = tuple(spec.key for spec in entry.findings)
    if not set(keys) & set(PHANTOM_FINDINGS):
        raise ModelError(
            f"Model {entry.name} outputs {list(keys)}; expected at least one of "
            f"{list(PHANTOM_FINDINGS)}, the findings phantoms can show"
        )
    return keys


def _lr_factor(step: int, steps: int) -> float:
    """Linear warm-up over the first 10 % of the steps, then cosine decay to zero."""
    warmup = max(1, int(steps * _WARMUP_FRACTION))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _batch(
    rng: np.random.Generator,
    entry: ModelEntry,
    keys: tuple[str, ...],
    size: int,
    paired: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``size`` phantoms; return ``(N, C, H, W)`` inputs and ``(N, K)`` 0/1 labels.

    With ``paired``, a phantom showing exactly one of nodule and mass is followed by its twin:
    the same anatomy and noise with the other lesion. The only difference inside such a pair is
    the lesion's kind, which teaches nodule versus mass in far fewer steps.
    """
    spatial = tuple(entry.input.spatial_size)
    images = np.empty((size, entry.input.channels, *spatial), dtype=np.float32)
    labels = np.zeros((size, len(keys)), dtype=np.float32)
    twin: tuple[int, frozenset[str]] | None = None
    for i in range(size):
        if twin is not None:
            seed, findings = twin
            twin = None
        else:
            seed, findings = int(rng.integers(2**63)), sample_findings(rng)
            swapped = _swap_lesions(findings)
            twin = (seed, swapped) if paired and swapped != findings else None
        phantom = chest_phantom(np.random.default_rng(seed), max(spatial), findings)
        images[i] = prepare_pixels(phantom.image, spatial)
        labels[i] = [key in phantom.findings for key in keys]
    return torch.from_numpy(images), torch.from_numpy(labels)


def _swap_lesions(findings: frozenset[str]) -> frozenset[str]:
    """Exchange nodule and mass (unchanged if the set holds both or neither)."""
    swap = {"nodule": "mass", "mass": "nodule"}
    return frozenset(swap.get(key, key) for key in findings)


def _evaluate(
    network: torch.nn.Module,
    entry: ModelEntry,
    keys: tuple[str, ...],
    rng: np.random.Generator,
    size: int,
) -> tuple[FindingEvaluation, ...]:
    """Score ``size`` fresh phantoms; per phantom finding, AUC and mean probabilities."""
    images, truth = _held_out(rng, entry, keys, size)
    with torch.inference_mode():
        chunks = torch.from_numpy(images).split(16)
        probs = torch.cat([torch.sigmoid(network(chunk)) for chunk in chunks]).numpy()
    results = []
    for k, key in enumerate(keys):
        if key not in PHANTOM_FINDINGS:
            continue
        positive = truth[:, k] == 1
        results.append(
            FindingEvaluation(
                key=key,
                auc=auc(probs[:, k], truth[:, k]),
                mean_positive=float(probs[positive, k].mean()) if positive.any() else math.nan,
                mean_negative=float(probs[~positive, k].mean()) if (~positive).any() else math.nan,
                n_positive=int(positive.sum()),
                n_negative=int((~positive).sum()),
            )
        )
    return tuple(results)


def _held_out(
    rng: np.random.Generator, entry: ModelEntry, keys: tuple[str, ...], size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Fresh phantoms as a deployment sees them: DX datasets at twice the input size, through
    the inference preprocessing. Return ``(N, C, H, W)`` inputs and ``(N, K)`` labels."""
    spatial = tuple(entry.input.spatial_size)
    images = np.empty((size, entry.input.channels, *spatial), dtype=np.float32)
    labels = np.zeros((size, len(keys)), dtype=np.float32)
    for i in range(size):
        findings = implied_findings(sample_findings(rng))
        study = make_cxr_study(int(rng.integers(2**31)), findings, size=2 * max(spatial))
        images[i] = radiograph_to_array(study[0], spatial)
        labels[i] = [key in findings for key in keys]
    return images, labels


def _save_atomically(network: torch.nn.Module, out_path: Path) -> str:
    """Write the state_dict and its sidecar, each via a temporary file and a rename."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    weights_tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    with weights_tmp.open("wb") as f:
        torch.save(network.state_dict(), f)
        f.flush()
        os.fsync(f.fileno())
    digest = file_sha256(weights_tmp)
    os.replace(weights_tmp, out_path)
    sidecar = sidecar_path(out_path)
    sidecar_tmp = sidecar.with_name(f".{sidecar.name}.{os.getpid()}.tmp")
    with sidecar_tmp.open("w", encoding="ascii") as f:
        f.write(f"{digest}  {out_path.name}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(sidecar_tmp, sidecar)
    _fsync_directory(out_path.parent)
    return digest


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
