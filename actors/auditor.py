"""Auditor actor: chains and signs new audit events (PostgreSQL), keeps checking that the
trail's signed hash chain is intact and exports its head after each intact check and on stop
(``AuditLog.export_head``: a file out of the ledger, syslog), sends every entry to the audit
record repository as a DICOM audit message over syslog/TLS (``storage.audit.collector``,
``actors.adapters.audit_syslog``), answers queries, and publishes the ledger's gauges (jobs per state, each
stage's queue and oldest wait, outbox backlog, held quarantine, model replicas: ``core.metrics``),
once per site, and watches the readers' agreement with each model version (``actors.agreement``).
Events themselves are appended by each stage in the same
transaction as the state change they describe, so the trail can never disagree with the
ledger."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import ray

from actors.adapters.audit_syslog import AuditExporter, cursor_path
from actors.adapters.metrics import recorder
from actors.agreement import AgreementWatch
from actors.polling import Loop
from actors.stage import ActorShell
from core.audit import AuditEntry
from core.config import ClinicalConfig, StorageConfig, app_name
from core.metrics import STAGE_OF_STATE

__all__ = ["AuditorActor"]

logger = logging.getLogger(__name__)

CHAIN_S = 0.5
"""How often events appended unchained (PostgreSQL) are linked into the chain."""


def model_replicas() -> dict[str, int]:
    """Running replicas per model family, from Serve's status (empty while Serve is not up).

    The replicas of every version of a family deployed side by side (``model-<family>`` and
    ``model-<family>--<version>``) count for the family: the label stays a closed vocabulary.
    """
    from ray import serve

    prefix = app_name("")
    try:
        applications = serve.status().applications
    except Exception:  # Serve not started (yet): no replicas to report
        return {}
    replicas: dict[str, int] = {}
    for name, app in applications.items():
        if name.startswith(prefix):
            family = name[len(prefix) :].partition("--")[0]
            running = sum(d.replica_states.get("RUNNING", 0) for d in app.deployments.values())
            replicas[family] = replicas.get(family, 0) + running
    return replicas


@ray.remote
class AuditorActor(ActorShell):
    """Verifies the audit chain periodically; serves audit queries."""

    name = "auditor"

    def __init__(
        self,
        storage: StorageConfig,
        period_s: float = 30.0,
        log_level: str = "INFO",
        metrics_period_s: float | None = None,
        clinical: ClinicalConfig | None = None,
    ) -> None:
        """Args:
        storage: The site's storage (its ledger).
        period_s: How often the whole chain is verified.
        log_level: This process's log level.
        metrics_period_s: How often the ledger's gauges are published (``core.metrics``);
            ``None``: not at all. One auditor per site publishes them, so they are counted once.
        clinical: The readers' settings: the agreement floor and how often it is checked
            (``actors.agreement``); ``None``: no agreement monitoring.
        """
        self._open_ledger(storage, log_level)
        self._last: dict[str, Any] = {"intact": None, "checked_at": None}
        self._held_codes: set[str] = set()
        self._add_loop(Loop("audit-chain", self._ledger.audit.chain, CHAIN_S, clock=self._clock))
        self._add_loop(Loop("audit-verify", self._round, period_s, clock=self._clock))
        if metrics_period_s is not None:
            self._add_loop(Loop("metrics", self._publish, metrics_period_s, eager=True, clock=self._clock))
        if clinical is not None:
            watch = AgreementWatch(self._ledger, clinical, self._clock)
            self._add_loop(Loop("agreement", watch.round, clinical.agreement_period_s, clock=self._clock))
        self._exporter = self._start_export(storage)
        self._start_heartbeat()

    def _start_export(self, storage: StorageConfig) -> AuditExporter | None:
        """Send the trail to the audit record repository (``storage.audit.collector``) in a
        loop of its own: a collector that is down or slow holds up nothing else."""
        cfg = storage.audit.collector
        if cfg is None or not cfg.enabled:
            return None
        cursor = cursor_path(Path(storage.var_dir) / "audit", cfg)
        exporter = AuditExporter(cfg, self._ledger.audit, cursor)
        self._add_loop(Loop("audit-export", exporter.round, cfg.period_s, eager=True, clock=self._clock))
        return exporter

    def _publish(self) -> int:
        """Publish the ledger's gauges and the model replicas (``core.metrics``)."""
        g = self._ledger.status.gauges(self._clock.now())
        for state, n in g.jobs.items():
            recorder.set("pacsai_jobs", n, state=state)
        for state, n in g.waiting.items():
            stage = STAGE_OF_STATE.get(state, state)
            recorder.set("pacsai_queue_depth", n, stage=stage)
            recorder.set("pacsai_oldest_waiting_seconds", g.oldest_waiting_s[state], stage=stage)
        recorder.set("pacsai_outbox_backlog", g.outbox_pending)
        for code, n in g.quarantine_held.items():
            recorder.set("pacsai_quarantine_held", n, code=code)
        for code in self._held_codes - set(g.quarantine_held):
            recorder.set("pacsai_quarantine_held", 0, code=code)
        self._held_codes = set(g.quarantine_held)
        for family, n in model_replicas().items():
            recorder.set("pacsai_model_replicas", n, family=family)
        return 0

    def _round(self) -> int:
        self.verify(full=False)
        return 1

    def verify(self, full: bool = True) -> dict[str, Any]:
        """Check the chain now; return ``{"intact": bool, "break": ..., "checked_at": t}``.

        ``full=False`` (the periodic round) checks signatures only of entries added since the
        last check, the older ones by hash. An intact chain's head is exported; a broken one's
        is not (that would vouch for the tampered tail).
        """
        report = self._ledger.audit.check(full=full)
        broken = report.broken
        self._last = {
            "intact": broken is None,
            "break": None if broken is None else {"seq": broken.seq, "reason": broken.reason},
            "checked_at": self._clock.now(),
        }
        if broken is not None:
            logger.error("audit chain broken at seq %d: %s", broken.seq, broken.reason)
        else:
            self._ledger.audit.export_head(self._clock.now(), upto=report.last_seq)
        return self._last

    def stop(self) -> None:
        """Stop the loops, then chain, check and export the head a last time."""
        super().stop()
        try:
            self.verify(full=False)
        except Exception:  # the ledger may be gone already: the last periodic head stands
            logger.exception("audit head not exported at stop")
        if self._exporter is not None:
            self._exporter.close()

    def events(self, study_uid: str | None = None, limit: int = 1000) -> list[AuditEntry]:
        """Stored audit events, optionally of one study."""
        return self._ledger.audit.events(study_uid, limit)

    def _counters(self) -> tuple[int, int, int, str]:
        broken = self._last.get("intact") is False
        outage = self._exporter.outage if self._exporter is not None else ""
        return 0, int(broken), 0, "audit chain broken" if broken else outage
