"""Where durable state lives under ``storage.var_dir``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["VarLayout"]


@dataclass(frozen=True, slots=True)
class VarLayout:
    """The layout of the var directory (spool, blobs, ledger, outbox, rejected data, models)."""

    root: Path

    @classmethod
    def at(cls, var_dir: str | Path) -> VarLayout:
        """Return the layout rooted at ``var_dir`` (made absolute, so actors agree on it)."""
        return cls(Path(var_dir).expanduser().resolve())

    @property
    def spool(self) -> Path:
        """Received instances, byte-identical to what was sent."""
        return self.root / "spool"

    @property
    def rejected(self) -> Path:
        """Data that could not be parsed, kept for inspection."""
        return self.root / "rejected"

    @property
    def outbox(self) -> Path:
        """Result objects waiting for (or after) delivery to the PACS."""
        return self.root / "outbox"

    @property
    def blobs(self) -> Path:
        """Content-addressed payloads too large for a ledger row (heatmaps, long records)."""
        return self.root / "blobs"

    @property
    def ledger(self) -> Path:
        """The SQLite ledger."""
        return self.root / "ledger.sqlite"

    @property
    def context(self) -> Path:
        """The HL7 bridge's context store: raw HL7 messages and FHIR resources (PHI)."""
        return self.root / "context.sqlite"

    @property
    def ehr_outbox(self) -> Path:
        """FHIR DiagnosticReports waiting for (or after) delivery to the EHR (PHI)."""
        return self.root / "ehr_outbox.sqlite"

    @property
    def models(self) -> Path:
        """Demo weights written by ``pacsai models train-demo``."""
        return self.root / "models"

    @property
    def logs(self) -> Path:
        """Log files of ``pacsai up``."""
        return self.root / "logs"

    @property
    def traces_file(self) -> Path:
        """OpenTelemetry spans (JSON lines) when ``tracing.exporter`` is ``file`` without a path."""
        return self.root / "traces" / "spans.jsonl"
