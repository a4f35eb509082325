"""SR writer actor: builds the TID 1500 SR per model result, and a Parametric Map per heatmap
(Grad-CAM of each positive finding), and puts them in the durable outbox (kinds 'sr', 'pm').
With ``clinical.key_images`` (issue 12) it also writes, per positive finding with a heatmap or a
region, a Secondary Capture key image of its frame with both burned in, and one Key Object
Selection per result pointing at them (kinds 'key_image', 'kos'): same family as the SR, so they
go out with it and are withdrawn with it (``actors.delivery``).

Each SR states the comparison with prior studies that are truly earlier (or why there was
none). SR versions (issue 18, ``core.versions.plan_write``): a job version whose family a newer
version of the study already wrote is not written; otherwise the SR names, as Predecessor
Documents, the version in flight or the last delivered (delivery checks it again and may
rebuild). A study completed known to be partial gets the incomplete-series quality flag.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import ray
from pydicom.dataset import Dataset

from actors.polling import SystemClock
from actors.stage import StageRuntime, StageShell
from core.audit import AuditEvent
from core.config import ClinicalConfig, PriorsConfig, SRConfig
from core.interval import Comparison, comparison_for
from core.job import Job
from core.key_images import KeyImageFinding, KeyImagePlan, key_image, key_object_selection, plan_key_images
from core.ledger import QueueOutbox, RecordSrVersions
from core.parametric_maps import ParametricMapBuilder, decode_levels, plane_on_source
from core.ports import Clock
from core.priors import InstanceRef
from core.records import PlaneGrid, Prediction
from core.results import OutboxItem, OutputKind, SrVersion
from core.sr import ReferencedRequest, SRBuilder, SRIdentity
from core.types import AuditEventType, JobState
from core.versions import Incompleteness, plan_write
from state.layout import VarLayout
from state.ledger import Ledger
from state.sealed_files import dcmread_plain, write_sealed_final

__all__ = ["SRWriteWork", "SRWriterActor"]


def _written_at(job: Job) -> datetime:
    """The results' content time: when the job's models answered (so a retried or replayed
    write gives byte-identical objects)."""
    at = job.record.inference.inferred_at if job.record.inference else job.updated_at
    return datetime.fromtimestamp(at, UTC)


class SRWriteWork:
    """Writes the result objects of one inferred job: one SR version per model family."""

    def __init__(
        self,
        ledger: Ledger,
        outbox: Path,
        builder: SRBuilder,
        actor: str,
        priors: PriorsConfig | None = None,
        pm_builder: ParametricMapBuilder | None = None,
        clock: Clock | None = None,
        key_images: SRIdentity | None = None,
    ) -> None:
        """Args:
        ledger: This process's ledger.
        outbox: Where the result files are written (sealed).
        builder: Builds the SRs.
        actor: Audit name.
        priors: Interval-change thresholds.
        pm_builder: Builds the Parametric Maps (``None``: none written).
        clock: Wall clock.
        key_images: Equipment identity of the key images (series ``series_number + 2``, their
            KOS ``+ 3``); ``None``: none written (``clinical.key_images`` off).
        """
        self._ledger = ledger
        self._outbox = outbox
        self._builder = builder
        self._actor = actor
        self._priors = priors or PriorsConfig()
        self._pm_builder = pm_builder
        self._clock = clock or SystemClock()
        self._key_images = key_images

    def _sources(self, job: Job, uids: list[str]) -> list[Dataset]:
        paths = {i.sop_instance_uid: i.path for i in self._ledger.intake.job_instances(job.job_id)}
        return [dcmread_plain(paths[u], self._ledger.keyring, stop_before_pixels=True) for u in uids if u in paths]

    def _predecessor(self, study_uid: str, sop_uid: str) -> list[Dataset]:
        """The Predecessor Documents reference of an SR version (empty: none)."""
        last = self._ledger.results.version(sop_uid) if sop_uid else None
        if last is None:
            return []
        return [
            InstanceRef(study_uid, last.series_instance_uid, last.sop_class_uid, last.sop_instance_uid).as_dataset()
        ]

    def _comparison(self, job: Job, prediction: Prediction, current: Dataset) -> Comparison:
        inference = job.record.inference
        prior = inference.prior_prediction(prediction.family) if inference else None
        return comparison_for(
            job.record.priors,
            prediction,
            prior,
            self._priors.probability_change,
            self._priors.size_change_mm,
            current_study_date=str(current.get("StudyDate", "") or ""),
            current_study_time=str(current.get("StudyTime", "") or ""),
        )

    @staticmethod
    def request_of(job: Job) -> ReferencedRequest | None:
        """The order the job's SRs fulfil, from its HL7 context (issue #6), if it has one."""
        ctx = job.record.context
        if ctx is None:
            return None
        return ReferencedRequest(ctx.indication, ctx.indication_codes, ctx.procedure, ctx.procedure_text)

    @staticmethod
    def task_uids(job: Job, prediction: Prediction) -> list[str]:
        """The instances the family's task covered (else those the model read)."""
        route = job.record.route
        task = route.task(prediction.family) if route is not None else None
        return list(task.sop_instance_uids) if task else list(prediction.source_uids)

    def write_one(
        self,
        job: Job,
        prediction: Prediction,
        predecessor_uid: str = "",
        incomplete: Incompleteness | None = None,
    ) -> OutboxItem:
        """Build and durably write the SR of one prediction (its SOP Instance UID does not
        depend on the predecessor or the flags, so a rebuild replaces the same object).

        Args:
            job: The job.
            prediction: The model's result.
            predecessor_uid: The SR version it supersedes ("": none).
            incomplete: Known incompleteness beyond the job's completion: both are marked.
        """
        sources = self._sources(job, self.task_uids(job, prediction))
        marked = _marked(prediction, _incompleteness(job, incomplete), sources)
        sr = self._builder.build(
            sources,
            marked,
            previous_versions=self._predecessor(job.study_instance_uid, predecessor_uid),
            comparison=self._comparison(job, prediction, sources[0]),
            request=self.request_of(job),
            created_at=_written_at(job),
        )
        return self._write(sr, OutputKind.SR, prediction.family)

    def write_maps(self, job: Job, prediction: Prediction) -> list[OutboxItem]:
        """Build and durably write the Parametric Map of every stored heatmap."""
        if not prediction.heatmaps or self._pm_builder is None:
            return []
        sources = self._sources(job, self.task_uids(job, prediction))
        items = []
        for heatmap in sorted(prediction.heatmaps, key=lambda h: h.finding):
            heat = decode_levels(self._ledger.blobs.get(heatmap.blob), heatmap.shape)
            pm = self._pm_builder.build(sources, prediction, heatmap, heat, _written_at(job))
            items.append(self._write(pm, OutputKind.PM, prediction.family))
        return items

    def write_key_images(self, job: Job, prediction: Prediction) -> list[OutboxItem]:
        """Build and durably write a key image per positive finding with a heatmap or a region,
        and one KOS pointing at them (none when ``clinical.key_images`` is off or nothing is
        positive). Deterministic UIDs and content time: a rewrite replaces the same objects."""
        plans = plan_key_images(prediction) if self._key_images is not None else []
        if not plans or self._key_images is None:
            return []
        identity = self._key_images
        paths = {i.sop_instance_uid: i.path for i in self._ledger.intake.job_instances(job.job_id)}
        when = _written_at(job)
        model = f"{prediction.model_name} {prediction.model_version}"
        images: list[Dataset] = []
        for plan in plans:
            path = paths.get(plan.frame.sop_instance_uid)
            if path is None:
                continue  # the frame's instance is not the job's (cannot happen for its own results)
            source = dcmread_plain(path, self._ledger.keyring)
            finding = KeyImageFinding(
                plan.finding.key,
                plan.finding.term.meaning,
                plan.finding.probability,
                model,
                plan.frame.frame_number,
                self._heat_on_frame(plan),
                plan.outline,
                tuple(prediction.source_uids),
            )
            images.append(key_image(source, finding, identity.manufacturer, identity.series_number + 2, when))
        if not images:
            return []
        kos = key_object_selection(images, model, identity.manufacturer, identity.series_number + 3, when)
        items = [self._write(ds, OutputKind.KEY_IMAGE, prediction.family) for ds in images]
        return [*items, self._write(kos, OutputKind.KOS, prediction.family)]

    def _heat_on_frame(self, plan: KeyImagePlan) -> np.ndarray | None:
        """The plan's heatmap resampled onto its frame's pixel grid (``None``: no heatmap)."""
        heatmap = plan.heatmap
        if heatmap is None or not isinstance(heatmap.grid, PlaneGrid):
            return None
        heat = decode_levels(self._ledger.blobs.get(heatmap.blob), heatmap.shape)
        return plane_on_source(heatmap.grid, heat.reshape(heat.shape[-2:]))

    def _write(self, ds: Dataset, kind: OutputKind, family: str) -> OutboxItem:
        buf = BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        path = self._outbox / f"{ds.SOPInstanceUID}.dcm"
        write_sealed_final(path, buf.getbuffer(), self._ledger.keyring)
        return OutboxItem(
            str(ds.SOPInstanceUID), str(ds.SOPClassUID), str(ds.SeriesInstanceUID), kind, family, str(path)
        )

    def __call__(self, job: Job) -> None:
        """Write one SR version per family unless a newer version of the study was written
        (``core.versions.plan_write``); move the job to ``written`` (``skipped`` when every
        family was superseded before it was written)."""
        inference = job.record.inference
        items: list[OutboxItem] = []
        versions: list[SrVersion] = []
        events = self._context_read(job)
        for prediction in sorted(inference.predictions if inference else (), key=lambda p: p.family):
            plan = plan_write(
                [v.plan_view() for v in self._ledger.results.versions(job.study_instance_uid, prediction.family)],
                job.version,
            )
            if not plan.write:
                events.append(self._superseded(job, prediction.family, plan.superseded_by))
                continue
            sr = self.write_one(job, prediction, plan.predecessor_uid)
            items.append(sr)
            versions.append(self._version(job, sr, prediction, plan.predecessor_uid))
            priors = job.record.priors
            events.append(
                self._built(
                    job,
                    sr,
                    prediction,
                    {
                        "predecessor": plan.predecessor_uid,
                        "partial": versions[-1].incomplete,
                        "priors": str(priors.status) if priors else "not_looked_up",
                    },
                )
            )
            for extra in [*self.write_maps(job, prediction), *self.write_key_images(job, prediction)]:
                items.append(extra)
                events.append(self._built(job, extra, prediction, {}))
        now = self._clock.now()
        if not items and inference is not None and inference.predictions:
            self._ledger.jobs.transition(
                job, JobState.SKIPPED, now, events=events, reason="superseded: a newer version of the study was written"
            )
            return
        self._ledger.jobs.transition(
            job,
            JobState.WRITTEN,
            now,
            events=events,
            effects=[QueueOutbox(tuple(items)), RecordSrVersions(tuple(versions))],
        )

    @staticmethod
    def _version(job: Job, sr: OutboxItem, prediction: Prediction, predecessor_uid: str) -> SrVersion:
        incomplete = job.record.completion is not None and job.record.completion.partial
        return SrVersion(
            sr.sop_instance_uid,
            sr.sop_class_uid,
            sr.series_instance_uid,
            job.study_instance_uid,
            job.job_id,
            job.version,
            prediction.family,
            prediction.model_name,
            prediction.model_version,
            predecessor_uid,
            prediction,
            incomplete=incomplete,
        )

    def _superseded(self, job: Job, family: str, by: int | None) -> AuditEvent:
        return AuditEvent(
            AuditEventType.SR_VERSION_SUPERSEDED,
            self._actor,
            job.study_instance_uid,
            job_id=job.job_id,
            detail={"family": family, "version": job.version, "superseded_by": by, "reason": "not written"},
        )

    def _context_read(self, job: Job) -> list[AuditEvent]:
        """The job's copy of the context is PHI-light, but reading it is still audited."""
        ctx = job.record.context
        if ctx is None:
            return []
        return [
            AuditEvent(
                AuditEventType.CONTEXT_READ,
                self._actor,
                job.study_instance_uid,
                job_id=job.job_id,
                detail={
                    "purpose": "sr: referenced request and reason for the study",
                    "match": ctx.match,
                    "resources": [ctx.service_request],
                },
            )
        ]

    def _built(self, job: Job, item: OutboxItem, prediction: Prediction, extra: dict[str, Any]) -> AuditEvent:
        return AuditEvent(
            AuditEventType.SR_BUILT,
            self._actor,
            job.study_instance_uid,
            item.sop_instance_uid,
            job.job_id,
            {
                "family": prediction.family,
                "model": prediction.model_name,
                "version": prediction.model_version,
                "kind": item.kind.value,
                **extra,
            },
        )


def _incompleteness(job: Job, extra: Incompleteness | None) -> list[Incompleteness]:
    """What is known to be missing: the job's completion said so, and/or delivery found out."""
    done = job.record.completion
    return [i for i in (done.incomplete if done else None, extra) if i is not None]


def _marked(prediction: Prediction, missing: list[Incompleteness], sources: list[Dataset]) -> Prediction:
    """The prediction with an incomplete-series quality flag per known incompleteness."""
    if not missing:
        return prediction
    series = list(dict.fromkeys(str(ds.SeriesInstanceUID) for ds in sources))
    flags = tuple(f for m in missing for f in m.quality_flags(series))
    return replace(prediction, quality_flags=prediction.quality_flags + flags)


@ray.remote
class SRWriterActor(StageShell):
    """Ray shell around ``SRWriteWork``."""

    name = "sr_writer"
    state = JobState.INFERRED

    def __init__(
        self,
        runtime: StageRuntime,
        layout: VarLayout,
        cfg: SRConfig,
        priors: PriorsConfig | None = None,
        clinical: ClinicalConfig | None = None,
    ) -> None:
        ledger = self._open_ledger(runtime.storage, runtime.log_level)
        identity = SRIdentity(cfg.manufacturer, cfg.series_number, cfg.institution_name, cfg.group_source_images_max)
        work = SRWriteWork(
            ledger,
            layout.outbox,
            SRBuilder(identity),
            "stage:sr_writer",
            priors,
            ParametricMapBuilder(identity),
            self._clock,
            key_images=identity if clinical is not None and clinical.key_images else None,
        )
        self._start(runtime, work)
