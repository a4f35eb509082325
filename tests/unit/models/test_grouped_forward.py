"""The replica's grouped path (``serve.deployment.ModelDeployment``) without Ray: a request's whole
batches and its remainder come back in the order of the inputs, equal to one plain forward, with
another request in flight at the same time."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import numpy as np
import pytest
from ray import serve as ray_serve

import serve.deployment
from core.config import ModelEntry
from serve.deployment import ModelDeployment


def test_whole_batches_and_the_remainder_come_back_in_input_order(
    untrained_entry: ModelEntry, monkeypatch: pytest.MonkeyPatch
) -> None:
    # @serve.batch asks its replica's context for max_ongoing_requests; there is no Ray here.
    context = SimpleNamespace(_deployment_config=SimpleNamespace(max_ongoing_requests=16))
    monkeypatch.setattr(ray_serve, "get_replica_context", lambda: context)
    # nor a replica's logging: its set-up would leave this process's loggers not propagating
    monkeypatch.setattr(serve.deployment, "_log_through_serve", lambda: None)
    entry = untrained_entry.model_copy(
        update={"serve": untrained_entry.serve.model_copy(update={"max_batch_size": 4, "batch_wait_timeout_s": 0.0})}
    )
    replica = ModelDeployment.func_or_class(entry, "chest_xray")
    rng = np.random.default_rng(7)
    items = rng.random((11, 1, 64, 64), dtype=np.float32)
    expected = replica._predictor.forward(items)

    async def requests() -> list[np.ndarray]:
        # the batcher lives on one event loop (the replica's): every request shares it
        answers = []
        for n in (0, 3, 8, 11):  # nothing, only a remainder, only whole batches, both
            answers += await asyncio.gather(replica.forward_many(items[:n]), replica.forward_many(items[:n][::-1]))
        return answers

    answers = iter(asyncio.run(requests()))
    for n in (0, 3, 8, 11):
        got, reversed_got = next(answers), next(answers)
        assert got.shape == (n, len(entry.findings)) and got.dtype == np.float32
        np.testing.assert_allclose(got, expected[:n], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(reversed_got, expected[:n][::-1], rtol=1e-4, atol=1e-5)
