"""Ray Serve deployment of the chest X-ray predictor, batching radiographs across requests.

A request is one study task (``InferenceRequest``). The replica preprocesses it in a worker
thread, sends each of its images through ``_forward_batch`` (``@serve.batch``), which stacks the
images of concurrent requests into one network pass, and combines its images' probabilities
into one ``Prediction``. The event loop never runs torch or pydicom itself, so requests keep
arriving while a batch runs.

Errors reach the caller as raised: a ``ModelError`` (bad instance, blank image) comes back from
``handle.remote(request).result()`` / ``await handle.remote(request)`` as a
``ray.exceptions.RayTaskError`` that is also an instance of ``ModelError`` (Ray builds the
subclass with ``as_instanceof_cause``), so ``except ModelError`` catches it. A replica that
fails ``check_health`` is restarted by Serve.
"""

from __future__ import annotations

import asyncio
import logging

import numpy as np
from ray import serve

from core.config import ModelEntry
from core.types import InferenceRequest, Prediction
from models.predictor import ChestXrayPredictor

__all__ = ["ChestXrayDeployment"]

logger = logging.getLogger(__name__)

_OUR_PACKAGES = ("core", "models", "serve")
"""Top-level packages whose module loggers should reach the replica's Serve log."""


def _log_through_serve() -> None:
    """Send our module loggers' records to the replica's Serve log, at Serve's level.

    Serve configures only the ``ray.serve`` logger (file and stderr, with the request ID) and
    leaves the root logger unconfigured in a replica, so ``logging.getLogger(__name__)`` records
    would otherwise be dropped. ``serve.run(..., logging_config={"log_level": "DEBUG"})`` then
    shows the batch sizes.
    """
    serve_logger = logging.getLogger("ray.serve")
    for name in _OUR_PACKAGES:
        ours = logging.getLogger(name)
        ours.setLevel(serve_logger.level)
        for handler in serve_logger.handlers:
            if handler not in ours.handlers:
                ours.addHandler(handler)
        ours.propagate = False


@serve.deployment
class ChestXrayDeployment:
    """One replica of a chest X-ray model. Resources and limits come from ``build_app``.

    Args:
        entry: The registry entry (weights, findings, ``serve`` options).
        family: Model family key reported in predictions.

    Raises:
        ModelWeightsError: If the weights are missing or do not match (the replica fails to
            start and Serve reports the deployment unhealthy).
    """

    def __init__(self, entry: ModelEntry, family: str = "chest_xray") -> None:
        _log_through_serve()
        self._predictor = ChestXrayPredictor.load(entry, family=family)
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

    async def __call__(self, request: InferenceRequest) -> Prediction:
        """Classify every image of one study task and combine them.

        Args:
            request: The task, with the DICOM bytes of each instance.

        Returns:
            The prediction (maximum probability over the task's images, per finding).

        Raises:
            ModelError: If an instance cannot be turned into network input.
        """
        batch, uids = await asyncio.to_thread(self._predictor.preprocess, request)
        probs = await asyncio.gather(*(self._forward_batch(image) for image in batch))
        return self._predictor.to_prediction(np.stack(probs), uids)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02)
    async def _forward_batch(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Run one network pass over images of concurrent requests (sizes set in ``__init__``)."""
        logger.debug("forward batch of %d", len(images))
        probs = await asyncio.to_thread(self._predictor.forward, np.stack(images))
        return list(probs)

    async def check_health(self) -> None:
        """Run the predictor's self-test off the event loop; raising makes Serve restart us.

        Raises:
            ModelError: If the network gives non-finite or ill-shaped output.
        """
        await asyncio.to_thread(self._predictor.self_test)
