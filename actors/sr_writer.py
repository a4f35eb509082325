"""SR writer actor: builds the TID 1500 SR per model result, and a Parametric Map per heatmap
(Grad-CAM of each positive finding), and puts them in the durable outbox (kinds 'sr', 'pm').

Each SR states the comparison with prior studies (or why there was none) and, for a later
version of a study (late instances), names the SR it supersedes (Predecessor Documents).
"""

from __future__ import annotations

import time
from io import BytesIO
from pathlib import Path

import ray
from pydicom import dcmread
from pydicom.dataset import Dataset

from actors.adapters.fs import durable_write
from actors.adapters.ledger import SqliteLedger
from actors.adapters.study_records import StudyRecords
from actors.adapters.paths import VarLayout
from actors.stage import StageRuntime, StageShell
from core.audit import AuditEvent
from core.config import PriorsConfig, SRConfig
from core.context import StudyContext
from core.interval import Comparison, comparison_for
from core.parametric_maps import ParametricMapBuilder
from core.priors import InstanceRef
from core.sr import ReferencedRequest, SRBuilder, SRIdentity
from core.types import AuditEventType, Job, JobState, Prediction

__all__ = ["SRWriteWork", "SRWriterActor"]


class SRWriteWork:
    """Writes the result objects of one inferred job."""

    def __init__(
        self, ledger: SqliteLedger, outbox: Path, builder: SRBuilder, actor: str,
        priors: PriorsConfig | None = None, pm_builder: ParametricMapBuilder | None = None,
    ) -> None:
        self._ledger = ledger
        self._records = StudyRecords(ledger)
        self._outbox = outbox
        self._builder = builder
        self._actor = actor
        self._priors = priors or PriorsConfig()
        self._pm_builder = pm_builder

    def _sources(self, job: Job, uids: list[str]) -> list[Dataset]:
        paths = {i.sop_instance_uid: i.path for i in self._ledger.job_instances(job.job_id)}
        return [dcmread(paths[u], stop_before_pixels=True) for u in uids if u in paths]

    def _predecessor(self, job: Job, family: str, sop_uid: str) -> Dataset | None:
        """The latest earlier SR version of this study and family (issue #5: late instances)."""
        row = self._records.latest_result(job.study_instance_uid, family, before_version=job.version)
        if row is None or row["sop_instance_uid"] == sop_uid:
            return None
        return InstanceRef(job.study_instance_uid, row["series_uid"], row["sop_class_uid"],
                           row["sop_instance_uid"]).as_dataset()

    def _comparison(self, job: Job, family: str, prediction: Prediction) -> Comparison:
        raw = (job.data.get("prior_predictions") or {}).get(family)
        return comparison_for(
            job.data.get("priors"), prediction, Prediction.from_json(raw) if raw else None,
            self._priors.probability_change, self._priors.size_change_mm,
        )

    @staticmethod
    def request_of(job: Job) -> ReferencedRequest | None:
        """The order the job's SRs fulfil, from its HL7 context (issue #6), if it has one."""
        raw = job.data.get("context")
        if not raw:
            return None
        ctx = StudyContext.from_json(raw)
        return ReferencedRequest(ctx.indication, ctx.indication_codes, ctx.procedure, ctx.procedure_text)

    def write_one(
        self, job: Job, family: str, task_uids: list[str], prediction: Prediction,
        request: ReferencedRequest | None = None,
    ) -> dict[str, str]:
        """Build, durably write and describe the SR of one prediction."""
        sources = self._sources(job, task_uids)
        _, sop_uid = self._builder.sr_uids(job.study_instance_uid, prediction)
        predecessor = self._predecessor(job, family, sop_uid)
        sr = self._builder.build(
            sources, prediction, previous_versions=[predecessor] if predecessor is not None else (),
            comparison=self._comparison(job, family, prediction), request=request,
        )
        item = self._write(sr, "sr", family)
        item["predecessor_uid"] = str(predecessor.SOPInstanceUID) if predecessor is not None else ""
        return item

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
        items, events, results = [], [], []
        request = self.request_of(job)
        if request is not None:  # the job's copy of the context is PHI-light, but still audited
            events.append(AuditEvent(
                AuditEventType.CONTEXT_READ, self._actor, job.study_instance_uid, job_id=job.job_id,
                detail={"purpose": "sr: referenced request and reason for the study",
                        "match": job.data["context"].get("match", ""),
                        "resources": [job.data["context"].get("service_request", "")]},
            ))
        for family, raw in sorted(job.data.get("predictions", {}).items()):
            prediction = Prediction.from_json(raw)
            uids = tasks.get(family, list(prediction.source_uids))
            item = self.write_one(job, family, uids, prediction, request)
            items.append(item)
            results.append(item | {"model_name": prediction.model_name,
                                   "model_version": prediction.model_version, "prediction": raw})
            events.append(
                AuditEvent(
                    AuditEventType.SR_BUILT,
                    self._actor,
                    job.study_instance_uid,
                    item["sop_instance_uid"],
                    job.job_id,
                    {"family": family, "model": prediction.model_name, "version": prediction.model_version,
                     "kind": "sr", "predecessor": item["predecessor_uid"],
                     "priors": str((job.data.get("priors") or {}).get("status", "not_looked_up"))},
                )
            )
            for pm in self.write_maps(job, family, uids, prediction):
                items.append(pm)
                events.append(
                    AuditEvent(
                        AuditEventType.SR_BUILT,
                        self._actor,
                        job.study_instance_uid,
                        pm["sop_instance_uid"],
                        job.job_id,
                        {"family": family, "model": prediction.model_name,
                         "version": prediction.model_version, "kind": "pm"},
                    )
                )
        self._ledger.written(job, items, time.time(), events, results=results)


@ray.remote
class SRWriterActor(StageShell):
    """Ray shell around ``SRWriteWork``."""

    name = "sr_writer"
    state = JobState.INFERRED

    def __init__(
        self, runtime: StageRuntime, layout: VarLayout, cfg: SRConfig,
        priors: PriorsConfig | None = None,
    ) -> None:
        ledger = self._open_ledger(runtime)
        identity = SRIdentity(cfg.manufacturer, cfg.series_number, cfg.institution_name,
                              cfg.group_source_images_max)
        work = SRWriteWork(
            ledger, layout.outbox, SRBuilder(identity), "stage:sr_writer", priors,
            ParametricMapBuilder(identity),
        )
        self._start(runtime, work)
