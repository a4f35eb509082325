"""Validator actor: checks every instance of a complete study, then its series and the study.

Instances with problems are held in quarantine (kept on disk, reasons in the ledger, audited);
the rest of the study goes on. Instances an operator released go on if they show only the
issues that were accepted (``core.quarantine``). A study whose every instance is held ends
``quarantined``.

Instances are checked while their study is still receiving (``actors.prevalidation``), so a
study completed at once on PACS evidence is validated from the cached verdicts; the facts the
series and study checks need are cached with them.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace

import ray

from actors.adapters.cells import CellSpools
from actors.adapters.metrics import recorder
from actors.polling import Loop, SystemClock
from actors.prevalidation import PreValidator, VerdictCache
from actors.stage import StageRuntime, StageShell
from core.audit import AuditEvent
from core.config import RoutingConfig, ValidationConfig
from core.job import AcceptedIssues, Job
from core.ledger import HoldInQuarantine, Override
from core.pixels import DecodeMode
from core.ports import Clock
from core.quarantine import Verdict, decide
from core.routing import Router
from core.types import AuditEventType, InstanceMeta, JobState, ValidationIssue
from core.validation import InstanceFacts, ReasonCode, ValidationPolicy, Validator
from state.ledger import Ledger
from state.sealed_files import dcmread_plain

__all__ = ["ValidationWork", "ValidatorActor"]

_FACTS_KEPT = 100_000
"""Facts kept for pre-validated instances (the verdict cache keeps as many verdicts)."""


class ValidationWork:
    """Validates one job's instances and records the verdict."""

    def __init__(
        self,
        ledger: Ledger,
        validator: Validator,
        actor: str,
        cache: VerdictCache | None = None,
        clock: Clock | None = None,
        spools: CellSpools | None = None,
        model_reads: Callable[[InstanceMeta], bool] | None = None,
    ) -> None:
        """Args:
        ledger: The process's ledger.
        validator: The pure validator.
        actor: Audit-trail name of this stage.
        cache: Verdicts of instances checked while their study was receiving.
        clock: Wall clock.
        spools: On a cluster: fetches the job's instances other cells received, first.
        model_reads: Whether a model will read (and so decode) an instance: its Pixel Data is
            then checked to the frame headers only (``validation.model_decodes``).
        """
        self._spools = spools
        self._ledger = ledger
        self._validator = validator
        self._headers_only = Validator(replace(validator.policy, decode=DecodeMode.HEADERS))
        self._model_reads = model_reads
        self._actor = actor
        self._cache = cache
        self._clock = clock or SystemClock()
        self._facts: OrderedDict[tuple[str, str], InstanceFacts] = OrderedDict()
        self._facts_lock = threading.Lock()

    def check(self, inst: InstanceMeta) -> list[ValidationIssue]:
        """Read one spooled instance and return its own problems (its facts are kept)."""
        return self.inspect(inst)[0]

    def checked(self, inst: InstanceMeta) -> tuple[list[ValidationIssue], InstanceFacts | None]:
        """The instance's problems and facts: checked while its study was receiving, else now.

        Raises:
            OSError: The spooled file cannot be read.
        """
        cached = self._cache.get(inst) if self._cache is not None else None
        with self._facts_lock:
            facts = self._facts.get((inst.sop_instance_uid, inst.sha256))
        if cached is not None and facts is not None:
            return cached, facts
        return self.inspect(inst)

    def inspect(self, inst: InstanceMeta) -> tuple[list[ValidationIssue], InstanceFacts | None]:
        """Read one spooled instance; return its problems and its facts for the series checks.

        Raises:
            OSError: The spooled file cannot be read (retried by the stage, then dead).
        """
        try:
            ds = dcmread_plain(inst.path, self._ledger.keyring)
        except OSError:
            raise
        except Exception as exc:  # noqa: BLE001 - the bytes came from a peer: any parser
            # failure is a finding about them, not a failure of this stage
            message = f"data set cannot be parsed: {type(exc).__name__}: {str(exc)[:300]}"
            return [ValidationIssue(str(ReasonCode.UNREADABLE), message, inst.sop_instance_uid)], None
        # Pixels are decoded once on the way to a model (issue 14): by its replica, not here too.
        routed = self._model_reads is not None and self._model_reads(inst)
        validator = self._headers_only if routed else self._validator
        issues, facts = validator.inspect(ds, inst.transfer_syntax_uid, inst.sop_instance_uid)
        with self._facts_lock:
            self._facts[(inst.sop_instance_uid, inst.sha256)] = facts
            while len(self._facts) > _FACTS_KEPT:
                self._facts.popitem(last=False)
        return issues, facts

    def __call__(self, job: Job) -> None:
        """Validate and move the job to ``validated`` or ``quarantined``.

        Raises:
            DependencyUnavailable: Instances of the job are in another cell's spool and that
                cell is down (the job waits without spending retries).
        """
        if self._spools is not None:
            foreign = self._ledger.intake.foreign_instances(job.job_id)
            if foreign:
                self._ledger.intake.rehome(self._spools.gather(foreign, self._ledger.keyring))
        overrides = self._ledger.intake.overrides(job.job_id)  # once, not per instance
        instances = [
            i
            for i in self._ledger.intake.job_instances(job.job_id)
            if overrides.get(i.sop_instance_uid) is not Override.DISCARDED
        ]
        issues: dict[str, list[ValidationIssue]] = {}
        facts: list[InstanceFacts] = []
        for inst in instances:
            found, fact = self.checked(inst)
            issues[inst.sop_instance_uid] = list(found)
            if fact is not None:
                facts.append(fact)
        for issue in self._validator.check_collection(facts):
            issues.setdefault(issue.sop_instance_uid, []).append(issue)
        flagged = [uid for uid, found in issues.items() if found]
        verdict = decide(issues, self._ledger.quarantine.accepted_codes(flagged))
        good = len(instances) - len(verdict.held)
        state = JobState.VALIDATED if good or not instances else JobState.QUARANTINED
        reason = None if state is JobState.VALIDATED else f"all {len(verdict.held)} instance(s) failed validation"
        accepted = tuple(AcceptedIssues(uid, tuple(found)) for uid, found in verdict.accepted.items())
        record = replace(job.record, accepted=accepted) if accepted else None
        holds = [HoldInQuarantine(uid, tuple(found)) for uid, found in verdict.held.items()]
        self._ledger.jobs.transition(
            job,
            state,
            self._clock.now(),
            events=self._events(job, verdict, good),
            record=record,
            reason=reason,
            effects=holds,
        )
        for found in verdict.held.values():
            for code in sorted({i.code for i in found}):
                recorder.inc("pacsai_instances_quarantined_total", code=code)
        self._forget(instances)

    def _forget(self, instances: list[InstanceMeta]) -> None:
        """Drop what was kept of a validated job's instances: the caches hold the studies still
        receiving, not every study since the start (bench_soak: ~1.7 kB an instance, which
        grew to the 100,000-entry caps over hours of an AI outage)."""
        if self._cache is not None:
            self._cache.discard(instances)
        with self._facts_lock:
            for inst in instances:
                self._facts.pop((inst.sop_instance_uid, inst.sha256), None)

    def _events(self, job: Job, verdict: Verdict, good: int) -> list[AuditEvent]:
        events = [
            AuditEvent(
                AuditEventType.QUARANTINED,
                self._actor,
                job.study_instance_uid,
                uid,
                job.job_id,
                {"codes": sorted({i.code for i in found}), "messages": [i.message for i in found]},
            )
            for uid, found in verdict.held.items()
        ]
        events += [
            AuditEvent(
                AuditEventType.VALIDATED,
                self._actor,
                job.study_instance_uid,
                uid,
                job.job_id,
                {"accepted_codes": sorted({i.code for i in found}), "released": True},
            )
            for uid, found in verdict.accepted.items()
        ]
        summary = {"valid": good, "quarantined": len(verdict.held), "accepted": len(verdict.accepted)}
        kind = AuditEventType.VALIDATED if good else AuditEventType.QUARANTINED
        events.append(AuditEvent(kind, self._actor, job.study_instance_uid, job_id=job.job_id, detail=summary))
        return events


def model_reads(router: Router) -> Callable[[InstanceMeta], bool]:
    """Whether a routing rule sends an instance's series to a deployed family (AI switches
    aside: an instance of a switched-off modality is then checked to its frame headers only)."""

    def reads(inst: InstanceMeta) -> bool:
        rule = router.match(inst)
        return rule is not None and rule.family in router.families

    return reads


@ray.remote
class ValidatorActor(StageShell):
    """Ray shell around ``ValidationWork``, with pre-validation of receiving studies."""

    name = "validator"
    state = JobState.COMPLETE

    def __init__(
        self,
        runtime: StageRuntime,
        cfg: ValidationConfig | None = None,
        spools: CellSpools | None = None,
        routing: RoutingConfig | None = None,
        families: list[str] | None = None,
    ) -> None:
        ledger = self._open_ledger(runtime.storage, runtime.log_level)
        cache = VerdictCache()
        cfg = cfg or ValidationConfig()
        policy = ValidationPolicy.from_config(cfg)
        reads = model_reads(Router(routing, families or [])) if routing is not None and cfg.model_decodes else None
        work = ValidationWork(ledger, Validator(policy), "stage:validator", cache, self._clock, spools, reads)
        self._pre = PreValidator(ledger, work.check, cache)
        self._add_loop(Loop("pre-validator", self._pre.run_once, runtime.poll_interval_s, clock=self._clock))
        self._start(runtime, work)

    def stop(self) -> None:
        """Stop pre-validation, then the runner."""
        self._pre.cancelled.set()
        super().stop()
