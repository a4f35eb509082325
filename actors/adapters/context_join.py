"""Join a study job to its HL7 order context (issue #6), and audit the read.

Order of the join: Study Instance UID (OMI IPC-3), then accession number, then Patient ID
and the study date (within ``hl7.join_window_days``). Both sides hold keyed hashes of the
accession and the patient ID (``InstanceMeta.accession_key`` / ``patient_key``), so the
ledger never needs the identifiers themselves. A DICOM Patient ID has no assigning authority
we can trust, so the Patient ID + date step joins only when exactly one patient holds that
bare ID (``ContextReader.find``; issue #16). Every lookup - found or not - is an audit
event: the context store is PHI.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime

from pydicom.errors import InvalidDicomError

from core.audit import AuditEvent
from core.context import StudyContext, study_context
from core.envelope import Keyring
from core.job import Job
from core.types import AuditEventType, InstanceMeta
from state.context_store import ContextReader
from state.sealed_files import dcmread_plain

__all__ = ["ContextJoin"]

logger = logging.getLogger(__name__)


def study_date(instances: Sequence[InstanceMeta], keyring: Keyring | None = None) -> date | None:
    """Study Date (0008,0020) of the first instance that has a valid one."""
    for inst in instances[:3]:
        try:
            ds = dcmread_plain(inst.path, keyring, stop_before_pixels=True, specific_tags=["StudyDate"])
            value = str(ds.get("StudyDate", "") or "")
            return datetime.strptime(value[:8], "%Y%m%d").date()
        except (OSError, InvalidDicomError, ValueError):  # EnvelopeError is a ValueError
            continue
    return None


class ContextJoin:
    """Finds the context of a job in the context store."""

    def __init__(
        self,
        reader: ContextReader,
        window_days: int,
        clock: Callable[[], float] = time.time,
        keyring: Keyring | None = None,
    ) -> None:
        """Args:
        reader: Read access to the context store.
        window_days: Patient ID + date join tolerance.
        clock: Wall clock (the age reference when a study has no date).
        keyring: Opens sealed spool files (``Ledger.keyring``).
        """
        self._reader = reader
        self._window = window_days
        self._clock = clock
        self._ring = keyring

    def lookup(
        self, job: Job, instances: Sequence[InstanceMeta], actor: str, purpose: str
    ) -> tuple[StudyContext | None, AuditEvent]:
        """Return the job's context (or ``None``) and the audit event of the read."""
        day = study_date(instances, self._ring)
        found = self._reader.find(
            job.study_instance_uid,
            sorted({i.accession_key for i in instances if i.accession_key}),
            sorted({i.patient_key for i in instances if i.patient_key}),
            day,
            self._window,
        )
        context = None
        if found is not None:
            today = datetime.fromtimestamp(self._clock(), UTC).date()
            context = study_context(found.match, found.patient, found.service_request, found.encounter, day or today)
        resources = [r for r in (context.service_request, context.patient, context.encounter) if r] if context else []
        event = AuditEvent(
            AuditEventType.CONTEXT_READ,
            actor,
            job.study_instance_uid,
            job_id=job.job_id,
            detail={"purpose": purpose, "match": context.match if context else "none", "resources": resources},
        )
        logger.info("job %d: context %s", job.job_id, context.match if context else "not found")
        return context, event
