"""SR writer actor: builds the TID 1500 SR per model result, and a Parametric Map per heatmap
(Grad-CAM of each positive finding), and puts them in the durable outbox (kinds 'sr', 'pm').

Each SR states the comparison with prior studies (or why there was none) and, for a later
version of a study (late instances), names the SR it supersedes (Predecessor Documents).
"""

from __future__ import annotations

from datetime import datetime, timezone
from io import BytesIO
from pathlib import Path

import ray
from pydicom import dcmread
from pydicom.dataset import Dataset

from actors.polling import SystemClock
from actors.stage import StageRuntime, StageShell
from core.audit import AuditEvent
from core.config import PriorsConfig, SRConfig
from core.interval import Comparison, comparison_for
from core.job import Job
from core.ledger import QueueOutbox, RecordSrVersions
from core.parametric_maps import ParametricMapBuilder, decode_levels
from core.ports import Clock
from core.priors import InstanceRef
from core.records import Prediction
from core.results import OutboxItem, OutputKind, SrVersion
from core.sr import ReferencedRequest, SRBuilder, SRIdentity
from core.types import AuditEventType, JobState
from state.files import durable_write
from state.layout import VarLayout
from state.ledger import Ledger

__all__ = ["SRWriteWork", "SRWriterActor"]


def _written_at(job: Job) -> datetime:
    """The results' content time: when the job's models answered (so a retried or replayed
    write gives byte-identical objects)."""
    at = job.record.inference.inferred_at if job.record.inference else job.updated_at
    return datetime.fromtimestamp(at, timezone.utc)


class SRWriteWork:
    """Writes the result objects of one inferred job."""

    def __init__(
        self, ledger: Ledger, outbox: Path, builder: SRBuilder, actor: str,
        priors: PriorsConfig | None = None, pm_builder: ParametricMapBuilder | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._ledger = ledger
        self._outbox = outbox
        self._builder = builder
        self._actor = actor
        self._priors = priors or PriorsConfig()
        self._pm_builder = pm_builder
        self._clock = clock or SystemClock()

    def _sources(self, job: Job, uids: list[str]) -> list[Dataset]:
        paths = {i.sop_instance_uid: i.path for i in self._ledger.intake.job_instances(job.job_id)}
        return [dcmread(paths[u], stop_before_pixels=True) for u in uids if u in paths]

    def _predecessor(self, job: Job, family: str, sop_uid: str) -> Dataset | None:
        """The latest earlier SR version of this study and family (issue #5: late instances)."""
        last = self._ledger.results.latest(job.study_instance_uid, family, before_version=job.version)
        if last is None or last.sop_instance_uid == sop_uid:
            return None
        return InstanceRef(job.study_instance_uid, last.series_instance_uid, last.sop_class_uid,
                           last.sop_instance_uid).as_dataset()

    def _comparison(self, job: Job, prediction: Prediction) -> Comparison:
        inference = job.record.inference
        prior = inference.prior_prediction(prediction.family) if inference else None
        return comparison_for(job.record.priors, prediction, prior,
                              self._priors.probability_change, self._priors.size_change_mm)

    @staticmethod
    def request_of(job: Job) -> ReferencedRequest | None:
        """The order the job's SRs fulfil, from its HL7 context (issue #6), if it has one."""
        ctx = job.record.context
        if ctx is None:
            return None
        return ReferencedRequest(ctx.indication, ctx.indication_codes, ctx.procedure, ctx.procedure_text)

    def write_one(
        self, job: Job, task_uids: list[str], prediction: Prediction,
        request: ReferencedRequest | None = None,
    ) -> tuple[OutboxItem, str]:
        """Build and durably write the SR of one prediction; return it and its predecessor."""
        sources = self._sources(job, task_uids)
        _, sop_uid = self._builder.sr_uids(job.study_instance_uid, prediction)
        predecessor = self._predecessor(job, prediction.family, sop_uid)
        sr = self._builder.build(
            sources, prediction, previous_versions=[predecessor] if predecessor is not None else (),
            comparison=self._comparison(job, prediction), request=request,
            created_at=_written_at(job),
        )
        item = self._write(sr, OutputKind.SR, prediction.family)
        return item, str(predecessor.SOPInstanceUID) if predecessor is not None else ""

    def write_maps(self, job: Job, task_uids: list[str], prediction: Prediction) -> list[OutboxItem]:
        """Build and durably write the Parametric Map of every stored heatmap."""
        if not prediction.heatmaps or self._pm_builder is None:
            return []
        sources = self._sources(job, task_uids)
        items = []
        for heatmap in sorted(prediction.heatmaps, key=lambda h: h.finding):
            heat = decode_levels(self._ledger.blobs.get(heatmap.blob), heatmap.shape)
            pm = self._pm_builder.build(sources, prediction, heatmap, heat, _written_at(job))
            items.append(self._write(pm, OutputKind.PM, prediction.family))
        return items

    def _write(self, ds: Dataset, kind: OutputKind, family: str) -> OutboxItem:
        buf = BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        path = self._outbox / f"{ds.SOPInstanceUID}.dcm"
        durable_write(path, buf.getvalue())
        return OutboxItem(str(ds.SOPInstanceUID), str(ds.SOPClassUID), str(ds.SeriesInstanceUID),
                          kind, family, str(path))

    def __call__(self, job: Job) -> None:
        """Write every result and move the job to ``written``."""
        route, inference = job.record.route, job.record.inference
        items: list[OutboxItem] = []
        versions: list[SrVersion] = []
        events = self._context_read(job)
        request = self.request_of(job)
        for prediction in sorted(inference.predictions if inference else (), key=lambda p: p.family):
            task = route.task(prediction.family) if route is not None else None
            uids = list(task.sop_instance_uids) if task else list(prediction.source_uids)
            sr, predecessor = self.write_one(job, uids, prediction, request)
            items.append(sr)
            versions.append(SrVersion(
                sr.sop_instance_uid, sr.sop_class_uid, sr.series_instance_uid,
                job.study_instance_uid, job.job_id, job.version, prediction.family,
                prediction.model_name, prediction.model_version, predecessor, prediction))
            priors = job.record.priors
            events.append(self._built(job, sr, prediction, {
                "predecessor": predecessor,
                "priors": str(priors.status) if priors else "not_looked_up"}))
            for pm in self.write_maps(job, uids, prediction):
                items.append(pm)
                events.append(self._built(job, pm, prediction, {}))
        self._ledger.jobs.transition(
            job, JobState.WRITTEN, self._clock.now(), events=events,
            effects=[QueueOutbox(tuple(items)), RecordSrVersions(tuple(versions))],
        )

    def _context_read(self, job: Job) -> list[AuditEvent]:
        """The job's copy of the context is PHI-light, but reading it is still audited."""
        ctx = job.record.context
        if ctx is None:
            return []
        return [AuditEvent(
            AuditEventType.CONTEXT_READ, self._actor, job.study_instance_uid, job_id=job.job_id,
            detail={"purpose": "sr: referenced request and reason for the study",
                    "match": ctx.match, "resources": [ctx.service_request]},
        )]

    def _built(self, job: Job, item: OutboxItem, prediction: Prediction,
               extra: dict[str, str]) -> AuditEvent:
        return AuditEvent(
            AuditEventType.SR_BUILT, self._actor, job.study_instance_uid, item.sop_instance_uid,
            job.job_id, {"family": prediction.family, "model": prediction.model_name,
                         "version": prediction.model_version, "kind": item.kind.value, **extra},
        )


@ray.remote
class SRWriterActor(StageShell):
    """Ray shell around ``SRWriteWork``."""

    name = "sr_writer"
    state = JobState.INFERRED

    def __init__(
        self, runtime: StageRuntime, layout: VarLayout, cfg: SRConfig,
        priors: PriorsConfig | None = None,
    ) -> None:
        ledger = self._open_ledger(runtime.storage, runtime.log_level)
        identity = SRIdentity(cfg.manufacturer, cfg.series_number, cfg.institution_name,
                              cfg.group_source_images_max)
        work = SRWriteWork(
            ledger, layout.outbox, SRBuilder(identity), "stage:sr_writer", priors,
            ParametricMapBuilder(identity), self._clock,
        )
        self._start(runtime, work)
