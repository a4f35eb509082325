"""Inference throughput per model family: Ray Serve with dynamic batching vs a plain torch loop.

For each family a synthetic study is prepared once (decode, volume assembly, resampling), giving
network inputs: radiograph frames, CT slices or whole volumes. Then, for each batch size, on
this machine and in this run:

- raw: the predictor's ``forward`` in a loop over batches of that size, in this process.
- serve: the family's ``ModelDeployment`` (one replica, ``max_batch_size`` = batch), sent one
  input per request with ``2 x batch`` requests in flight, so that ``@serve.batch`` forms the
  batches: the cost of one Serve request per input.
- serve grouped: the same replica, sent requests of a study's worth of inputs each
  (``forward_many``; ``--study-inputs``, default 32, at least the batch size), two in flight: the
  shape of the pipeline's requests, one per study task, whose whole batches ``__call__`` runs as
  they are (the remainder joins ``@serve.batch``).

The summary line per family and batch size has ``ratio_serve_over_raw``,
``ratio_grouped_over_raw`` (issue 14's goal: >= 0.9 at batch >= 8), and the Serve path's cost
per request measured apart from the network: ``request_overhead_p50_ms`` (a grouped request with
no input) next to ``network_p50_ms`` (one raw pass of the batch).

Both sides use the same number of torch threads (``--threads``, default: every core), since
Ray would otherwise give the replica one thread per CPU it reserves.

The three take turns ``--repeats`` times (default 3) and each reports its run of median
throughput, so that load from elsewhere hits all alike. Inputs per second, p50/p95 latency (raw:
per batch call; serve: per request, submit to result) and the ratio serve / raw are printed as
JSON lines. It never asserts.

Then (``--bundle on``, the default; ``only`` skips the families above) the cost of serving a
family from a MONAI bundle (issue 17): one seeded network, the built-in ``bone_fracture``
architecture with two outputs, written once as a bundle (``monai.bundle.init_bundle``, TorchScript
by ``monai.bundle.ckpt_export``) and once as a built-in family's state_dict, both deployed in this
run and measured alternately (``--bundle-repeats`` rounds, median) through both Serve paths at each
batch size, and in a plain torch loop in this process. The line ``{"what": "bundle", "ratio":
bundle / built-in Serve throughput, "ratio_grouped": the same for grouped requests, "ratio_raw":
the same for the torch loop, "serve_over_raw_ratio": the bundle's Serve/raw over the built-in's,
...}`` has the goal ratio >= 0.95.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_inference.py [--n 64] [--batches 1 8 32]
        [--families bone_fracture chest_cta ...] [--config configs/default.yaml] [--threads 2]
        [--bundle on|off|only] [--bundle-repeats 3] [--gpus 1]

``--gpus`` (GPUs per replica; 0, the default, keeps both sides on the CPU) puts the replicas and
the raw loop on the GPU that Ray sees, for the goal's "where a GPU is lent, the same on it". Not
yet run on a GPU: no session has been lent one, and Ray is not in the lent machine's image.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from functools import partial
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from _common import emit, percentile  # benchmarks/ is on sys.path when run as a script
from ray import serve

from actors.pipeline import load_config
from core.bundles import expand_models
from core.config import FindingSpec, ModelEntry, ModelInputSpec, ServeDeploymentConfig, app_name
from core.records import InferenceRequest
from models.families import load_predictor
from serve.app import build_app
from synthetic.bundles import RADIOGRAPH_BUNDLE, write_sidecar
from synthetic.synthetic_dicom import make_cxr_study
from synthetic.synthetic_studies import (
    brain_mr_study,
    chest_cta_study,
    fracture_study,
    head_ct_study,
)
from training.bundles import build_network, make_bundle

STUDIES = {
    "chest_xray": lambda: make_cxr_study(1, frozenset({"effusion"})),
    "bone_fracture": lambda: fracture_study(2, True).datasets,
    "head_ct_haemorrhage": lambda: head_ct_study(3, {10: ["subdural"]}, n_slices=32).datasets,
    "brain_mri_tumour": lambda: brain_mr_study(4, True).datasets,
    "chest_cta": lambda: chest_cta_study(5, True).datasets,
}


def _inputs(family: str, predictor: Any, n: int) -> np.ndarray:
    """``n`` network inputs of the family, cycled from one prepared synthetic study."""
    instances = []
    for ds in STUDIES[family]():
        buffer = BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        instances.append((str(ds.SOPInstanceUID), buffer.getvalue()))
    prepared = predictor.prepare(InferenceRequest("bench", family, tuple(instances)))
    return np.stack([prepared.inputs[i % len(prepared.inputs)] for i in range(n)])


def _raw(predictor: Any, inputs: np.ndarray, batch: int) -> dict[str, float]:
    predictor.forward(inputs[:batch])  # warm-up
    latencies = []
    start = time.perf_counter()
    for i in range(0, len(inputs), batch):
        t = time.perf_counter()
        predictor.forward(inputs[i : i + batch])
        latencies.append(time.perf_counter() - t)
    return _summary(len(inputs), time.perf_counter() - start, latencies)


def _windowed(method: Any, payloads: list[Any], window: int, n_inputs: int) -> dict[str, float]:
    """Submit ``payloads`` to a handle method with at most ``window`` in flight; per-request
    latency is submit to result."""
    pending, latencies = [], []
    start = time.perf_counter()
    for payload in payloads:
        pending.append((time.perf_counter(), method.remote(payload)))
        if len(pending) >= window:
            submitted, response = pending.pop(0)
            response.result()
            latencies.append(time.perf_counter() - submitted)
    for submitted, response in pending:
        response.result()
        latencies.append(time.perf_counter() - submitted)
    return _summary(n_inputs, time.perf_counter() - start, latencies)


def _serve(handle: Any, inputs: np.ndarray, batch: int) -> dict[str, float]:
    """One request per input, ``2 x batch`` in flight, so that ``@serve.batch`` fills batches."""
    [r.result() for r in [handle.forward.remote(inputs[0]) for _ in range(batch)]]  # warm-up
    return _windowed(handle.forward, [ray.put(item) for item in inputs], 2 * batch, len(inputs))


def _serve_grouped(handle: Any, inputs: np.ndarray, batch: int, study: int = 0) -> dict[str, float]:
    """Requests of a study's worth of inputs each (``study``, at least ``batch``: a CT series'
    slices), two in flight: the shape of the pipeline's own requests, one per study task, which
    the replica runs as whole batches of ``batch``."""
    size = max(batch, study)
    handle.forward_many.remote(inputs[:size]).result()  # warm-up
    chunks = [ray.put(inputs[i : i + size]) for i in range(0, len(inputs), size)]
    return _windowed(handle.forward_many, chunks, 2, len(inputs))


def _overhead(handle: Any, inputs: np.ndarray, requests: int = 50) -> float:
    """p50 ms of a grouped request that carries no input: the Serve path's own cost per
    request (handle, router, replica queue, event loop), apart from any network pass."""
    empty = ray.put(inputs[:0])
    handle.forward_many.remote(empty).result()
    latencies = []
    for _ in range(requests):
        t = time.perf_counter()
        handle.forward_many.remote(empty).result()
        latencies.append(time.perf_counter() - t)
    return round(1000 * statistics.median(latencies), 2)


def _summary(n: int, seconds: float, latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    return {
        "items_per_s": round(n / seconds, 2),
        "p50_ms": round(1000 * statistics.median(ordered), 1),
        "p95_ms": round(1000 * percentile(ordered, 95, "nearest"), 1),
    }


def _deploy(family: str, entry: Any, batch: int) -> Any:
    serve_cfg = entry.serve.model_copy(
        update={
            "max_batch_size": batch,
            "max_ongoing_requests": max(4 * batch, 8),
            "max_queued_requests": -1,
            "min_replicas": 1,
            "max_replicas": 1,
        }
    )
    app = build_app(family, entry.model_copy(update={"serve": serve_cfg}))
    name = app_name(family)
    serve.run(app, name=name, route_prefix=None)
    return serve.get_app_handle(name)


BUNDLE_FAMILY = "bundle_radiograph"
"""The family key the bundle is deployed under (not a built-in one: it needs its ``kind``)."""
BUILTIN_FAMILY = "bone_fracture"
"""The built-in family whose architecture the bundle's network has."""


def bundle_pair(directory: Path, serve_cfg: ServeDeploymentConfig) -> tuple[ModelEntry, ModelEntry]:
    """Write one seeded network as a MONAI bundle (TorchScript) and as a built-in state_dict.

    Returns:
        The bundle family's entry and the built-in family's entry, both with ``serve_cfg``.
    """
    design = RADIOGRAPH_BUNDLE
    network = build_network(design)  # seeded: the same weights make_bundle exports
    make_bundle(directory / "bundle", design, "ts")
    torch.save(network.state_dict(), directory / "builtin.pt")
    write_sidecar(directory / "builtin.pt")
    raw = {"bundle": str(directory / "bundle"), "serve": serve_cfg.model_dump()}
    expanded = expand_models({"models": {BUNDLE_FAMILY: raw}}, lambda f: Path(f).read_text(), os.path.isfile, "bench")
    bundle = ModelEntry.model_validate(expanded["models"][BUNDLE_FAMILY])
    builtin = ModelEntry(
        name="builtin-radiograph",
        version=design.version,
        weights=str(directory / "builtin.pt"),
        input=ModelInputSpec(spatial_size=design.spatial_shape),
        findings=tuple(FindingSpec(key=f["key"]) for f in design.findings),
        heatmaps=False,
        serve=serve_cfg,
    )
    return bundle, builtin


def _rate(measure: Any, target: Any, inputs: np.ndarray, batch: int) -> float:
    return float(measure(target, inputs, batch)["items_per_s"])


def _taking_turns(measures: tuple[Any, ...], repeats: int) -> list[dict[str, float]]:
    """Run each measurement ``repeats`` times, taking turns, so that load from elsewhere on a
    shared machine hits all alike; per measurement, the run of median throughput."""
    runs: list[list[dict[str, float]]] = [[] for _ in measures]
    for _ in range(repeats):
        for done, measure in zip(runs, measures, strict=True):
            done.append(measure())
    return [sorted(done, key=lambda r: r["items_per_s"])[len(done) // 2] for done in runs]


def _alternate(measures: dict[str, Any], repeats: int) -> dict[str, float]:
    """Run every measurement (a callable giving items per second) ``repeats`` times, taking
    turns so that drift on a shared machine hits all alike; return the median of each."""
    rates: dict[str, list[float]] = {key: [] for key in measures}
    for _ in range(repeats):
        for key, measure in measures.items():
            rates[key].append(measure())
    return {key: statistics.median(values) for key, values in rates.items()}


def _bundle_comparison(args: argparse.Namespace, cfg: Any) -> None:
    """Throughput of the bundle family over the built-in family, same network, same run."""
    serve_cfg = cfg.models[BUILTIN_FAMILY].serve.model_copy(update=_device_update(args))
    with tempfile.TemporaryDirectory(prefix="bench-bundle-") as tmp:
        entries = dict(zip(("bundle", "builtin"), bundle_pair(Path(tmp), serve_cfg), strict=True))
        families = {"bundle": BUNDLE_FAMILY, "builtin": BUILTIN_FAMILY}
        predictors = {side: load_predictor(families[side], entries[side]) for side in entries}
        inputs = _inputs(BUILTIN_FAMILY, predictors["builtin"], args.n)
        for batch in args.batches:
            handles = {side: _deploy(families[side], entries[side], batch) for side in entries}
            measures = {}
            for side in entries:
                measures[f"{side}_raw"] = partial(_rate, _raw, predictors[side], inputs, batch)
                measures[f"{side}_serve"] = partial(_rate, _serve, handles[side], inputs, batch)
                measures[f"{side}_grouped"] = partial(_rate, _serve_grouped, handles[side], inputs, batch)
            rate = _alternate(measures, args.bundle_repeats)
            emit(
                {
                    "name": "inference",
                    "what": "bundle",
                    "batch_size": batch,
                    "n": args.n,
                    "repeats": args.bundle_repeats,
                    "input_shape": list(inputs.shape[1:]),
                    "builtin_items_per_s": round(rate["builtin_serve"], 2),
                    "bundle_items_per_s": round(rate["bundle_serve"], 2),
                    "ratio": round(rate["bundle_serve"] / rate["builtin_serve"], 3),
                    "ratio_grouped": round(rate["bundle_grouped"] / rate["builtin_grouped"], 3),
                    "ratio_raw": round(rate["bundle_raw"] / rate["builtin_raw"], 3),
                    # each one's Serve throughput over its own torch loop, and the one over the other
                    "bundle_serve_over_raw": round(rate["bundle_serve"] / rate["bundle_raw"], 3),
                    "builtin_serve_over_raw": round(rate["builtin_serve"] / rate["builtin_raw"], 3),
                    "serve_over_raw_ratio": round(
                        (rate["bundle_serve"] / rate["bundle_raw"]) / (rate["builtin_serve"] / rate["builtin_raw"]), 3
                    ),
                    "goal": "ratio >= 0.95",
                }
            )
            for family in families.values():
                serve.delete(app_name(family))


def _device_update(args: argparse.Namespace) -> dict[str, Any]:
    """The serve settings both sides share: torch threads, and GPUs per replica (``num_gpus``
    > 0 also puts the raw loop's predictor on the GPU: ``load_predictor`` reads it)."""
    return {"torch_threads": args.threads, "num_gpus": args.gpus}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument("--n", type=int, default=128, help="inputs per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of raw / serve / grouped, taking turns")
    parser.add_argument(
        "--study-inputs", type=int, default=32, help="grouped: inputs per request (a study's worth; at least the batch)"
    )
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--families", nargs="+", default=sorted(STUDIES))
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="torch threads for both the raw loop and the replica (same device)",
    )
    parser.add_argument(
        "--gpus",
        type=float,
        default=0.0,
        help="GPUs per replica, and the raw loop on the GPU too (0: both on the CPU); needs a GPU that Ray sees",
    )
    parser.add_argument("--bundle", choices=["on", "off", "only"], default="on", help="the bundle comparison")
    parser.add_argument("--bundle-repeats", type=int, default=3, help="alternating rounds of the bundle comparison")
    args = parser.parse_args()
    cfg = load_config(args.config)
    gpus = 1 if args.gpus > 0 else 0
    ray.init(
        num_cpus=os.cpu_count() or 2, num_gpus=gpus, include_dashboard=False, logging_level="ERROR", namespace="bench"
    )
    serve.start(proxy_location="Disabled")
    try:
        for family in args.families if args.bundle != "only" else []:
            entry = cfg.models[family]
            # Same compute for both sides: Ray would give the replica one thread per CPU it asks.
            entry = entry.model_copy(update={"serve": entry.serve.model_copy(update=_device_update(args))})
            predictor = load_predictor(family, entry)
            inputs = _inputs(family, predictor, args.n)
            for batch in args.batches:
                handle = _deploy(family, entry, batch)
                raw, served, grouped = _taking_turns(
                    (
                        partial(_raw, predictor, inputs, batch),
                        partial(_serve, handle, inputs, batch),
                        partial(_serve_grouped, handle, inputs, batch, args.study_inputs),
                    ),
                    args.repeats,
                )
                for mode, result in (("raw_torch", raw), ("ray_serve", served), ("ray_serve_grouped", grouped)):
                    emit(
                        {
                            "name": "inference",
                            "family": family,
                            "mode": mode,
                            "batch_size": batch,
                            "n": args.n,
                            "input_shape": list(inputs.shape[1:]),
                            **result,
                        }
                    )
                emit(
                    {
                        "name": "inference",
                        "family": family,
                        "mode": "summary",
                        "batch_size": batch,
                        "ratio_serve_over_raw": round(served["items_per_s"] / raw["items_per_s"], 3),
                        "ratio_grouped_over_raw": round(grouped["items_per_s"] / raw["items_per_s"], 3),
                        "request_overhead_p50_ms": _overhead(handle, inputs),
                        "network_p50_ms": raw["p50_ms"],
                        "goal": ">= 0.9 at batch 8 and above",
                    }
                )
            serve.delete(app_name(family))
        if args.bundle != "off":
            _bundle_comparison(args, cfg)
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
