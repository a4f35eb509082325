"""Validator actor: checks every instance of a complete study; failures go to quarantine.

Instances are checked while their study is still receiving (``actors.prevalidation``), so a
study completed at once on PACS evidence is validated from the cached verdicts.
"""

from __future__ import annotations

import json
import time

import ray
from pydicom import dcmread

from actors.adapters.ledger import SqliteLedger
from actors.adapters.study_records import StudyRecords
from actors.prevalidation import PreValidator, VerdictCache
from actors.stage import StageRuntime, StageShell
from core.audit import AuditEvent
from core.types import AuditEventType, InstanceMeta, Job, JobState, ValidationIssue
from core.validation import ReasonCode, Validator

__all__ = ["ValidationWork", "ValidatorActor"]


class ValidationWork:
    """Validates one job's instances and records the verdict."""

    def __init__(
        self, ledger: SqliteLedger, validator: Validator, actor: str,
        cache: VerdictCache | None = None,
    ) -> None:
        self._ledger = ledger
        self._validator = validator
        self._actor = actor
        self._cache = cache

    def checked(self, inst: InstanceMeta) -> list[ValidationIssue]:
        """The instance's problems: checked while its study was receiving, else now."""
        cached = self._cache.get(inst) if self._cache is not None else None
        return cached if cached is not None else self.check(inst)

    def check(self, inst: InstanceMeta) -> list[ValidationIssue]:
        """Read one spooled instance and return its problems."""
        try:
            ds = dcmread(inst.path)
        except Exception as exc:  # unreadable from disk is a finding, not a crash
            return [
                ValidationIssue(
                    str(ReasonCode.UNREADABLE), f"{type(exc).__name__}: {exc}", inst.sop_instance_uid
                )
            ]
        issues = self._validator.check_instance(ds, inst.transfer_syntax_uid)
        found = str(ds.get("SOPInstanceUID", "") or "")
        if found and found != inst.sop_instance_uid:
            issues.append(
                ValidationIssue(
                    str(ReasonCode.INVALID_VALUE),
                    f"SOPInstanceUID: data set has {found!r}; the C-STORE request named "
                    f"{inst.sop_instance_uid!r}",
                    inst.sop_instance_uid,
                )
            )
        return issues

    def __call__(self, job: Job) -> None:
        """Validate and move the job to ``validated`` or ``quarantined``."""
        overrides = self._ledger.instance_overrides(job.job_id)  # once, not per instance
        instances = [
            i for i in self._ledger.job_instances(job.job_id)
            if overrides.get(i.sop_instance_uid) != "discarded"
        ]
        bad: dict[str, list[ValidationIssue]] = {}
        for inst in instances:
            issues = self.checked(inst)
            if issues:
                bad[inst.sop_instance_uid] = issues
        events = [
            AuditEvent(
                AuditEventType.QUARANTINED,
                self._actor,
                job.study_instance_uid,
                uid,
                job.job_id,
                {"codes": sorted({i.code for i in issues}), "messages": [i.message for i in issues]},
            )
            for uid, issues in bad.items()
        ]
        good = len(instances) - len(bad)
        new_state = JobState.VALIDATED if good else JobState.QUARANTINED
        events.append(
            AuditEvent(
                AuditEventType.VALIDATED if good else AuditEventType.QUARANTINED,
                self._actor,
                job.study_instance_uid,
                job_id=job.job_id,
                detail={"valid": good, "quarantined": len(bad)},
            )
        )
        reasons = {
            uid: json.dumps([{"code": i.code, "message": i.message} for i in issues])
            for uid, issues in bad.items()
        }
        self._ledger.set_aside(
            job,
            new_state,
            time.time(),
            override="quarantined",
            reasons=reasons,
            events=events,
            reason=None if good else f"all {len(bad)} instance(s) failed validation",
        )


@ray.remote
class ValidatorActor(StageShell):
    """Ray shell around ``ValidationWork``."""

    name = "validator"
    state = JobState.COMPLETE

    def __init__(self, runtime: StageRuntime) -> None:
        ledger = self._open_ledger(runtime)
        cache = VerdictCache()
        work = ValidationWork(ledger, Validator(), "stage:validator", cache)
        self._start(runtime, work)
        self._pre = PreValidator(StudyRecords(ledger), work.check, cache, runtime.poll_interval_s)
        self._pre.start()

    def stop(self) -> None:
        """Stop pre-validation, then the runner."""
        self._pre.stop()
        super().stop()
