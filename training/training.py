"""Demo weights: a short CPU training run on freshly drawn phantoms (``python -m training``).

The weights are for the demo and the tests only: they prove that detection works end to end on
phantoms with known lesions, and say nothing about real radiographs. Every step draws a new
batch, balanced so that every phantom finding is positive about 30 % of the time; outputs without
a phantom signal are trained towards 0. A phantom with exactly one of nodule and mass comes with
its twin (same anatomy, the other lesion), which teaches the two apart within the short budget.
The images go through the same resize and percentile window as at inference time
(:func:`models.preprocessing.prepare_pixels`); the held-out evaluation sends synthetic DICOM
files through the family's serving predictor, so through the same decode
(:func:`core.pixels.decode_frames`) and preprocessing as a deployment.

The file is written atomically (temporary file, fsync, rename) with a ``sha256sum``-style
sidecar, which :func:`models.registry.resolve_weights` checks on load.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
import torch
from pydicom.dataset import Dataset

from core.config import ModelEntry
from core.errors import ModelError
from core.records import InferenceRequest
from models.families import PREDICTORS
from models.networks import build_network
from models.predictor import Predictor
from models.preprocessing import prepare_pixels
from models.registry import file_sha256, sidecar_path
from synthetic.phantoms import PHANTOM_FINDINGS, chest_phantom, implied_findings, sample_findings
from synthetic.synthetic_dicom import make_cxr_study
from training.recipes import RECIPES

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
    batch_size: int = 0,
    log: Callable[[str], None] = print,
    eval_size: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> TrainReport:
    """Train the family's network briefly on CPU on phantoms; write weights and sidecar.

    Args:
        family: Model family key: ``"chest_xray"`` or one of ``training.recipes.RECIPES``.
        entry: The registry entry (input size and findings, in output order).
        out_path: Where to write the ``state_dict``; ``<out_path>.sha256`` is written too.
        steps: Optimiser steps (each on a freshly drawn batch); 0 means the family's default.
        seed: Seed of the phantoms and the initial weights.
        batch_size: Phantoms per step; 0 means the family's default.
        log: Receives progress lines.
        eval_size: Held-out phantoms or studies for the evaluation (synthetic DICOM through the
            same preprocessing as inference); 0 means the family's default.
        progress: Called as ``progress(step, steps)`` after every optimiser step (a progress bar;
            the held-out evaluation follows the last step).

    Returns:
        The report, with the held-out evaluation of every phantom finding the model outputs.

    Raises:
        ModelError: If the family has no phantoms, the entry has no phantom finding, or the
            arguments are out of range.
    """
    plan = _plan(family, entry, steps, batch_size, eval_size)
    steps, batch_size = plan.steps, plan.batch_size
    torch.manual_seed(seed)
    network = build_network(family, entry)
    planar = len(entry.input.spatial_size) == 2
    if planar:  # oneDNN convolutions run about 15 % faster channels_last on CPU (2D only)
        network = network.to(memory_format=torch.channels_last)
    weights = torch.tensor([_LOSS_WEIGHTS.get(key, 1.0) for key in plan.keys])
    start = time.perf_counter()
    losses = _fit(
        network, plan.draw, weights, np.random.default_rng(seed), steps, log, planar, plan.learning_rate, progress
    )
    seconds = time.perf_counter() - start
    network.eval()
    digest = _save_atomically(network, out_path)
    evaluation = plan.evaluate(network, np.random.default_rng(seed + 1_000_003))
    for e in evaluation:
        log(
            f"held-out {e.key}: AUC {e.auc:.3f}, mean p {e.mean_positive:.3f} (positive, "
            f"n={e.n_positive}) vs {e.mean_negative:.3f} (negative, n={e.n_negative})"
        )
    final_loss = float(np.mean(losses[-10:]))
    return TrainReport(family, out_path, digest, steps, batch_size, final_loss, seconds, evaluation)


@dataclass(frozen=True, slots=True)
class _Plan:
    """What one family's training run draws, evaluates and how fast it learns."""

    steps: int
    batch_size: int
    keys: tuple[str, ...]
    draw: Callable[[np.random.Generator], tuple[torch.Tensor, torch.Tensor]]
    evaluate: Callable[[torch.nn.Module, np.random.Generator], tuple[FindingEvaluation, ...]]
    learning_rate: float


def _plan(family: str, entry: ModelEntry, steps: int, batch_size: int, eval_size: int) -> _Plan:
    """The chest X-ray run (phantoms of :mod:`synthetic.phantoms`) or a family's recipe."""
    if family not in RECIPES:
        steps, batch_size = steps or DEFAULT_STEPS, batch_size or 16
        keys = _check_arguments(family, entry, steps, batch_size)
        return _Plan(
            steps,
            batch_size,
            keys,
            lambda rng: _batch(rng, entry, keys, batch_size),
            lambda net, rng: _evaluate(net, entry, keys, rng, eval_size or 64),
            _LEARNING_RATE,
        )
    recipe = RECIPES[family]
    steps, batch_size = steps or recipe.steps, batch_size or recipe.batch_size
    _check_steps(steps, batch_size)

    def draw(rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = recipe.draw(rng, entry, batch_size)
        return torch.from_numpy(images), torch.from_numpy(labels)

    return _Plan(
        steps,
        batch_size,
        tuple(spec.key for spec in entry.findings),
        draw,
        lambda net, rng: _evaluate_studies(net, family, entry, rng, eval_size or recipe.eval_size),
        recipe.learning_rate,
    )


def _fit(
    network: torch.nn.Module,
    draw: Callable[[np.random.Generator], tuple[torch.Tensor, torch.Tensor]],
    weights: torch.Tensor,
    rng: np.random.Generator,
    steps: int,
    log: Callable[[str], None],
    channels_last: bool,
    learning_rate: float = _LEARNING_RATE,
    progress: Callable[[int, int], None] | None = None,
) -> list[float]:
    """AdamW with warm-up and cosine decay, one fresh batch per step; return the losses."""
    optimiser = torch.optim.AdamW(network.parameters(), learning_rate, weight_decay=_WEIGHT_DECAY)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: _lr_factor(s, steps))
    losses: list[float] = []
    network.train()
    start = time.perf_counter()
    # One thread draws the next batch while torch trains on this one.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="phantoms") as pool:
        pending = pool.submit(draw, rng)
        for step in range(1, steps + 1):
            images, labels = pending.result()
            if step < steps:
                pending = pool.submit(draw, rng)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            losses.append(_step(network, optimiser, images, labels, weights))
            schedule.step()
            if progress is not None:
                progress(step, steps)
            if step == 1 or step % 10 == 0 or step == steps:
                log(f"step {step}/{steps} loss {np.mean(losses[-10:]):.4f} ({time.perf_counter() - start:.0f} s)")
    return losses


def _step(
    network: torch.nn.Module,
    optimiser: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
) -> float:
    """One optimiser step of weighted multi-label BCE; return the loss."""
    logits = network(images)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels, weight=weights)
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    optimiser.step()
    return loss.item()


def _check_arguments(family: str, entry: ModelEntry, steps: int, batch_size: int) -> tuple[str, ...]:
    """Validate; return the entry's finding keys in output order."""
    if family != "chest_xray":
        raise ModelError(f'Got family "{family}" for demo training; expected one of {sorted(["chest_xray", *RECIPES])}')
    _check_steps(steps, batch_size)
    keys = tuple(spec.key for spec in entry.findings)
    if not set(keys) & set(PHANTOM_FINDINGS):
        raise ModelError(
            f"Model {entry.name} outputs {list(keys)}; expected at least one of "
            f"{list(PHANTOM_FINDINGS)}, the findings phantoms can show"
        )
    return keys


def _check_steps(steps: int, batch_size: int) -> None:
    if steps < 1 or batch_size < 1:
        raise ModelError(f"Got steps={steps}, batch_size={batch_size}; expected both >= 1")


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
    images, truth = _held_out(PREDICTORS["chest_xray"](entry, network, "chest_xray"), rng, keys, size)
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


def _evaluate_studies(
    network: torch.nn.Module, family: str, entry: ModelEntry, rng: np.random.Generator, size: int
) -> tuple[FindingEvaluation, ...]:
    """Send ``size`` held-out synthetic studies through the family's whole predictor (decode,
    volume assembly, resampling, study-level maximum); per finding, AUC and mean p."""
    predictor = PREDICTORS[family](entry, network, family)
    keys = tuple(spec.key for spec in entry.findings)
    scores = np.empty((size, len(keys)))
    truth = np.empty((size, len(keys)))
    for i in range(size):
        study = RECIPES[family].held_out(rng, i)
        prepared = predictor.prepare(_request(study.study_uid, family, study.datasets))
        scores[i] = predictor.forward(prepared.inputs).max(axis=0)
        truth[i] = [key in study.findings for key in keys]
    return tuple(
        FindingEvaluation(
            key=key,
            auc=auc(scores[:, k], truth[:, k]),
            mean_positive=float(scores[truth[:, k] == 1, k].mean()) if truth[:, k].any() else math.nan,
            mean_negative=float(scores[truth[:, k] == 0, k].mean()) if (truth[:, k] == 0).any() else math.nan,
            n_positive=int(truth[:, k].sum()),
            n_negative=int((truth[:, k] == 0).sum()),
        )
        for k, key in enumerate(keys)
    )


def _request(study_uid: str, family: str, datasets: Sequence[Dataset]) -> InferenceRequest:
    """The request serving would get for these datasets: each as Part 10 file bytes."""
    instances = []
    for ds in datasets:
        buffer = BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        instances.append((str(ds.SOPInstanceUID), buffer.getvalue()))
    return InferenceRequest(study_uid, family, tuple(instances))


def _held_out(
    predictor: Predictor, rng: np.random.Generator, keys: tuple[str, ...], size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Fresh phantoms as a deployment gets them: DX Part 10 files at twice the input size, through
    the serving predictor's ``prepare`` (decode, Modality LUT, resize, window). Return
    ``(N, C, H, W)`` inputs and ``(N, K)`` labels."""
    entry = predictor.entry
    spatial = tuple(entry.input.spatial_size)
    images = np.empty((size, entry.input.channels, *spatial), dtype=np.float32)
    labels = np.zeros((size, len(keys)), dtype=np.float32)
    for i in range(size):
        findings = implied_findings(sample_findings(rng))
        study = make_cxr_study(int(rng.integers(2**31)), findings, size=2 * max(spatial))
        [images[i]] = predictor.prepare(_request(str(study[0].StudyInstanceUID), predictor.family, study[:1])).inputs
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
