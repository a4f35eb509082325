"""The Ray Serve deployment of every model family: a thin shell over a Ray-free predictor.

A request is one study task (``InferenceRequest``). The replica prepares it in a worker thread
(decode, volume assembly, resampling: the replica is where a study's pixels are decoded, once),
then classifies its network inputs (radiograph frames, CT slices or whole volumes): whole
batches of them (``serve.max_batch_size``) go to the network as they are, and the remainder joins
``_forward_batch`` (``@serve.batch``), which stacks the inputs of concurrent requests into one
network pass. It finishes in a worker thread (study-level aggregation, Grad-CAM heatmaps and
regions of positive findings). The event loop never runs torch or pydicom itself, so requests
keep arriving while a batch runs; network passes run one at a time (a lock), so the CPU's
threads are not split between two passes.

Batch size and wait come from the registry entry (``serve.max_batch_size``,
``serve.batch_wait_timeout_s``); resources, replicas, autoscaling and queue bounds are applied by
``serve.app.build_app``. Errors reach the caller as raised: a ``ModelError`` comes back from the
handle as a ``RayTaskError`` that is also a ``ModelError``. A replica whose ``check_health``
raises is restarted by Serve.
"""

from __future__ import annotations

import asyncio
import logging
import os

import numpy as np
from ray import serve
from ray.util import metrics

from core.config import ModelEntry
from core.metrics import METRICS
from core.records import InferenceRequest, ModelOutput
from models.families import load_predictor

__all__ = ["ModelDeployment"]

logger = logging.getLogger(__name__)

_OUR_PACKAGES = ("core", "models", "serve")
"""Top-level packages whose module loggers should reach the replica's Serve log."""


def _log_through_serve() -> None:
    """Send our module loggers' records to the replica's Serve log, at Serve's level.

    Serve configures only the ``ray.serve`` logger in a replica, so ``logging.getLogger(__name__)``
    records would otherwise be dropped; ``logging_config={"log_level": "DEBUG"}`` on
    ``serve.run`` then shows the batch sizes.
    """
    serve_logger = logging.getLogger("ray.serve")
    for name in _OUR_PACKAGES:
        ours = logging.getLogger(name)
        ours.setLevel(serve_logger.level)
        for handler in serve_logger.handlers:
            if handler not in ours.handlers:
                ours.addHandler(handler)
        ours.propagate = False


def _batch_size_histogram() -> metrics.Histogram | None:
    """The replica's ``pacsai_inference_batch_size`` (``core.metrics``); none with ``PACSAI_METRICS=0``."""
    if os.environ.get("PACSAI_METRICS", "1") == "0":
        return None
    spec = METRICS["pacsai_inference_batch_size"]
    return metrics.Histogram(spec.name, spec.help, boundaries=list(spec.buckets), tag_keys=spec.labels)


@serve.deployment
class ModelDeployment:
    """One replica of one model family. Resources and limits come from ``build_app``.

    Args:
        entry: The registry entry (weights, findings, ``serve`` options).
        family: Model family key (selects the predictor).

    Raises:
        ModelWeightsError: If the weights are missing or do not match (the replica fails to
            start and Serve reports the deployment unhealthy).
    """

    def __init__(self, entry: ModelEntry, family: str) -> None:
        _log_through_serve()
        self._family = family
        self._predictor = load_predictor(family, entry)
        self._batch_sizes = _batch_size_histogram()
        self._max_batch = entry.serve.max_batch_size
        self._network = asyncio.Lock()  # one network pass at a time: CPU threads are not oversubscribed
        self._forward_batch.set_max_batch_size(entry.serve.max_batch_size)
        self._forward_batch.set_batch_wait_timeout_s(entry.serve.batch_wait_timeout_s)
        logger.info(
            "%s replica ready: %s %s, batches of up to %d, wait %.3f s",
            family,
            entry.name,
            entry.version,
            entry.serve.max_batch_size,
            entry.serve.batch_wait_timeout_s,
        )

    async def __call__(self, request: InferenceRequest) -> ModelOutput:
        """Run every network input of one study task and combine them.

        Args:
            request: The task, with the DICOM bytes of each instance.

        Returns:
            The prediction and its heatmaps' pixels (the caller stores them).

        Raises:
            ModelError: If an instance cannot be turned into network input.
        """
        prepared = await asyncio.to_thread(self._predictor.prepare, request)
        probs = await self._forward_grouped(prepared.inputs)
        return await asyncio.to_thread(self._predictor.finish, prepared, probs)

    async def _forward_grouped(self, items: np.ndarray) -> np.ndarray:
        """Classify one request's inputs ``(N, C, *spatial)``: whole batches of them go to the
        network as they are, only the remainder joins the cross-request batcher.

        A study is usually its own full batches (a 400-slice CT is 12 passes of 32), so it pays
        one network pass per batch, not one batcher future per slice (issue 14); a radiograph's
        one or two inputs still share passes with concurrent requests.

        The whole batches of one request run back to back in one worker thread under one hold of
        the network lock, not interleaved with another request's: with two requests in flight,
        the first then finishes after its own passes and its caller's next request arrives while
        the second runs, so the network never waits for a round trip (interleaved, both finished
        together and the replica sat idle until the next two came: 0.76 of a plain torch loop at
        batch 8 on the 2-core CPU, bone fracture).
        """
        size = max(1, self._max_batch)
        whole = (len(items) // size) * size
        tail = asyncio.gather(*(self._forward_batch(item) for item in items[whole:]))
        head = await self._forward_direct(items[:whole], size) if whole else None
        rest = await tail
        chunks = [] if head is None else [head]
        if rest:
            chunks.append(np.stack(rest))
        return np.concatenate(chunks) if chunks else np.zeros((0, len(self._predictor.entry.findings)), np.float32)

    async def _forward_direct(self, items: np.ndarray, size: int) -> np.ndarray:
        """Network passes over one request's whole batches of ``size``, back to back."""
        if self._batch_sizes is not None:
            for _ in range(len(items) // size):
                self._batch_sizes.observe(size, tags={"family": self._family})
        async with self._network:
            return await asyncio.to_thread(self._passes, items, size)

    def _passes(self, items: np.ndarray, size: int) -> np.ndarray:
        """Worker thread: ``forward`` over ``items`` in slices of ``size``."""
        return np.concatenate(
            [np.asarray(self._predictor.forward(items[i : i + size])) for i in range(0, len(items), size)]
        )

    async def forward(self, item: np.ndarray) -> np.ndarray:
        """Classify one prepared network input (``(C, *spatial)``) through the batcher.

        For clients that prepare inputs themselves, and for the batching benchmark.

        Returns:
            float32 ``(K,)`` probabilities.
        """
        return await self._forward_batch(item)

    async def forward_many(self, items: np.ndarray) -> np.ndarray:
        """Classify a stack of prepared inputs (``(N, C, *spatial)``) through the batcher.

        The path of ``__call__`` without the DICOM preparation: whole batches of the stack run
        as they are, the remainder shares passes with concurrent requests.

        Returns:
            float32 ``(N, K)`` probabilities.
        """
        return await self._forward_grouped(np.asarray(items))

    def reconfigure(self, config: dict[str, float]) -> None:
        """Apply live batching knobs from Serve's ``user_config`` without a restart.

        Args:
            config: ``max_batch_size`` and / or ``batch_wait_timeout_s``.
        """
        if "max_batch_size" in config:
            self._max_batch = int(config["max_batch_size"])
            self._forward_batch.set_max_batch_size(self._max_batch)
        if "batch_wait_timeout_s" in config:
            self._forward_batch.set_batch_wait_timeout_s(float(config["batch_wait_timeout_s"]))
        logger.info("%s: batching reconfigured to %s", self._family, config)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02)
    async def _forward_batch(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Run one network pass over inputs of concurrent requests (sizes set in ``__init__``)."""
        logger.debug("%s: forward batch of %d", self._family, len(inputs))
        if self._batch_sizes is not None:
            self._batch_sizes.observe(len(inputs), tags={"family": self._family})
        async with self._network:
            probs = await asyncio.to_thread(self._predictor.forward, np.stack(inputs))
        return list(probs)

    async def check_health(self) -> None:
        """Run the predictor's self-test off the event loop; raising makes Serve restart us.

        Raises:
            ModelError: If the network gives non-finite or ill-shaped output.
        """
        await asyncio.to_thread(self._predictor.self_test)
