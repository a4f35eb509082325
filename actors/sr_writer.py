"""SR writer actor: builds the TID 1500 SR per model result, and a Parametric Map per heatmap
(Grad-CAM of each positive finding), and puts them in the durable outbox (kinds 'sr', 'pm')."""

from __future__ import annotations

import time
from io import BytesIO
from pathlib import Path

import ray
from pydicom import dcmread
from pydicom.dataset import Dataset

from actors.adapters.fs import durable_write
from actors.adapters.ledger import SqliteLedger
from actors.adapters.paths import VarLayout
from actors.stage import StageRuntime, StageShell
from core.audit import AuditEvent
from core.config import SRConfig
from core.parametric_maps import ParametricMapBuilder
from core.sr import SRBuilder, SRIdentity
from core.types import AuditEventType, Job, JobState, Prediction

__all__ = ["SRWriteWork", "SRWriterActor"]


class SRWriteWork:
    """Writes the result objects of one inferred job."""

    def __init__(
        self,
        ledger: SqliteLedger,
        outbox: Path,
        builder: SRBuilder,
        actor: str,
        pm_builder: ParametricMapBuilder | None = None,
    ) -> None:
        self._ledger = ledger
        self._outbox = outbox
        self._builder = builder
        self._actor = actor
        self._pm_builder = pm_builder

    def _sources(self, job: Job, uids: list[str]) -> list[Dataset]:
        paths = {i.sop_instance_uid: i.path for i in self._ledger.job_instances(job.job_id)}
        return [dcmread(paths[u], stop_before_pixels=True) for u in uids if u in paths]

    def write_one(self, job: Job, family: str, task_uids: list[str], prediction: Prediction) -> dict[str, str]:
        """Build, durably write and describe the SR of one prediction."""
        sources = self._sources(job, task_uids)
        return self._write(self._builder.build(sources, prediction), "sr", family)

    def write_maps(self, job: Job, family: str, task_uids: list[str], prediction: Prediction) -> list[dict[str, str]]:
        """Build, durably write and describe the Parametric Map of every heatmap."""
        heatmaps = sorted(prediction.extra.get("heatmaps", {}))
        if not heatmaps or self._pm_builder is None:
            return []
        sources = self._sources(job, task_uids)
        return [self._write(self._pm_builder.build(sources, prediction, key), "pm", family) for key in heatmaps]

    def _write(self, ds: Dataset, kind: str, family: str) -> dict[str, str]:
        buf = BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        path = self._outbox / f"{ds.SOPInstanceUID}.dcm"
        durable_write(path, buf.getvalue())
        return {
            "sop_instance_uid": str(ds.SOPInstanceUID),
            "sop_class_uid": str(ds.SOPClassUID),
            "series_instance_uid": str(ds.SeriesInstanceUID),
            "kind": kind,
            "family": family,
            "path": str(path),
        }

    def __call__(self, job: Job) -> None:
        """Write every result and move the job to ``written``."""
        tasks = {t["family"]: list(t["sop_instance_uids"]) for t in job.data.get("tasks", [])}
        items, events = [], []
        for family, raw in sorted(job.data.get("predictions", {}).items()):
            prediction = Prediction.from_json(raw)
            uids = tasks.get(family, list(prediction.source_uids))
            for item in [self.write_one(job, family, uids, prediction), *self.write_maps(job, family, uids, prediction)]:
                items.append(item)
                events.append(
                    AuditEvent(
                        AuditEventType.SR_BUILT,
                        self._actor,
                        job.study_instance_uid,
                        item["sop_instance_uid"],
                        job.job_id,
                        {"family": family, "model": prediction.model_name, "version": prediction.model_version, "kind": item["kind"]},
                    )
                )
        self._ledger.written(job, items, time.time(), events)


@ray.remote
class SRWriterActor(StageShell):
    """Ray shell around ``SRWriteWork``."""

    name = "sr_writer"
    state = JobState.INFERRED

    def __init__(self, runtime: StageRuntime, layout: VarLayout, cfg: SRConfig) -> None:
        ledger = self._open_ledger(runtime)
        identity = SRIdentity(cfg.manufacturer, cfg.series_number, cfg.institution_name)
        work = SRWriteWork(ledger, layout.outbox, SRBuilder(identity), "stage:sr_writer", ParametricMapBuilder(identity))
        self._start(runtime, work)
