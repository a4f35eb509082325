"""The metric catalogue and the recorder: labels are closed vocabularies, recording never raises."""

from __future__ import annotations

import logging
import pickle

import pytest

from actors.adapters import metrics as metrics_adapter
from actors.adapters.metrics import Recorder, recorder
from core.metrics import METRICS, STAGE_OF_STATE, MetricKind
from core.types import JobState


def test_every_working_state_has_the_stage_that_takes_it() -> None:
    from actors.assembler import AssemblerActor
    from actors.delivery import DeliveryActor
    from actors.inference import InferenceActor
    from actors.prior_linker import PriorLinkerActor
    from actors.router import RouterActor
    from actors.sr_writer import SRWriterActor
    from actors.validator import ValidatorActor

    actors = (
        AssemblerActor,
        ValidatorActor,
        RouterActor,
        PriorLinkerActor,
        InferenceActor,
        SRWriterActor,
        DeliveryActor,
    )
    taken = {a.__ray_metadata__.modified_class.state.value: a.__ray_metadata__.modified_class.name for a in actors}
    assert taken == STAGE_OF_STATE
    assert set(STAGE_OF_STATE) == {s.value for s in JobState if not s.is_terminal}


def test_catalogue_names_kinds_and_buckets() -> None:
    for name, spec in METRICS.items():
        assert name == spec.name and name.startswith("pacsai_")
        assert name.endswith("_total") == (spec.kind is MetricKind.COUNTER)
        assert bool(spec.buckets) == (spec.kind is MetricKind.HISTOGRAM)
        assert list(spec.buckets) == sorted(spec.buckets)
        assert not {"study_uid", "patient", "accession", "sop_instance_uid"} & set(spec.labels)


class _Fake:
    def __init__(self) -> None:
        self.calls: list[tuple[float, dict | None]] = []

    def inc(self, value: float, tags: dict | None = None) -> None:
        self.calls.append((value, tags))


def test_a_switched_off_recorder_records_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _Fake()
    monkeypatch.setattr(metrics_adapter, "_make", lambda name: fake)
    rec = Recorder(enabled=False)
    rec.inc("pacsai_stage_jobs_total", stage="router", outcome="ok")
    assert fake.calls == []
    rec.switch(True)
    rec.inc("pacsai_stage_jobs_total", stage="router", outcome="ok")
    assert fake.calls == [(1.0, {"stage": "router", "outcome": "ok"})]


def test_the_environment_switches_recording_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(metrics_adapter.ENV, "0")
    assert Recorder().enabled is False
    monkeypatch.setenv(metrics_adapter.ENV, "1")
    assert Recorder().enabled is True


def test_a_metric_that_cannot_be_made_is_dropped_once_and_never_raises(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(name: str) -> None:
        raise RuntimeError("Ray is not running here")

    monkeypatch.setattr(metrics_adapter, "_make", broken)
    rec = Recorder(enabled=True)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            rec.observe("pacsai_stage_latency_seconds", 0.1, stage="router")
    assert [r.getMessage() for r in caplog.records] == ["metric pacsai_stage_latency_seconds cannot be recorded here"]


def test_the_recorder_travels_to_an_actor_as_a_reference() -> None:
    # Ray pickles actor methods by value with their globals; a lock inside would not pickle.
    assert pickle.loads(pickle.dumps(recorder)) is recorder
