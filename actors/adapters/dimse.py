"""DIMSE adapters: the durable C-STORE SCP (our listener) and the SCU that stores to the PACS.

The SCP answers success (0x0000) only after the instance is durable: bytes written, fsync,
atomic rename, directory fsync, ledger row committed (DESIGN.md, "Durability"). A handler never
raises; every failure becomes an explicit DIMSE status (PS3.4 Annex B.2.3):

- 0xA700 Refused, out of resources: our disk is below its floor or an I/O error happened; the
  sender keeps the data and retries.
- 0xC000 Cannot understand: the data set cannot be parsed; an audit event records it.
- 0xC211 for anything unexpected (pynetdicom's own default for a failing handler).
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config, evt
from pynetdicom.sop_class import Verification

from actors.adapters.fs import check_free_space, durable_write
from actors.adapters.ledger import RecordResult, SqliteLedger
from actors.adapters.tls import client_context, server_context
from core.audit import AuditEvent
from core.config import ListenerConfig, PacsConfig
from core.errors import DependencyUnavailable, OutOfResources, RejectedInput
from core.identifiers import hash_identifier
from core.types import AuditEventType, InstanceMeta

__all__ = ["DimsePacsClient", "Listener", "StoreOutcome"]

logger = logging.getLogger(__name__)

_UID = re.compile(r"^[0-9.]{1,64}$")
STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_UNEXPECTED = 0xC211


def _safe_name(uid: str) -> str:
    """A file-system-safe name for a UID (hash anything that is not a plain UID)."""
    return uid if _UID.match(uid) and ".." not in uid else "x-" + hashlib.sha1(uid.encode()).hexdigest()


class Listener:
    """The C-ECHO / C-STORE SCP. Depends on nothing but its disk and the ledger file."""

    def __init__(
        self,
        cfg: ListenerConfig,
        spool_dir: Path,
        rejected_dir: Path,
        ledger: SqliteLedger,
        quiet_period_s: float,
        clock: Callable[[], float] = time.time,
        hash_key: bytes = b"pacsai-default-identifier-key",
    ) -> None:
        """Prepare the listener; ``start()`` opens the port.

        Args:
            cfg: Listener config slice.
            spool_dir: Where received instances are kept.
            rejected_dir: Where unparseable data is kept for inspection.
            ledger: The ledger of this process.
            quiet_period_s: Study quiet period, to schedule the assembler.
            clock: Wall clock.
            hash_key: Key for hashed patient identifiers.
        """
        self._cfg = cfg
        self._spool = spool_dir
        self._rejected = rejected_dir
        self._ledger = ledger
        self._quiet = quiet_period_s
        self._clock = clock
        self._hash_key = hash_key
        self._server: Any = None
        self._actor = f"listener:{cfg.ae_title}"
        self.received = 0
        self.failed = 0
        self._hasher = ThreadPoolExecutor(max_workers=cfg.max_associations, thread_name_prefix="sha256")

    @property
    def port(self) -> int:
        """The bound port (useful when the config asked for port 0)."""
        if self._server is None:
            raise RuntimeError("listener is not started")
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Open the port and serve in background threads."""
        _config.UNRESTRICTED_STORAGE_SERVICE = True  # private and new storage SOP classes too
        _config.LOG_REQUEST_IDENTIFIERS = False  # identifiers stay out of logs (PHI)
        ae = AE(ae_title=self._cfg.ae_title)
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
        ae.maximum_pdu_size = self._cfg.max_pdu_size
        ae.network_timeout = self._cfg.network_timeout_s
        ae.acse_timeout = self._cfg.network_timeout_s
        ae.dimse_timeout = self._cfg.network_timeout_s
        ae.maximum_associations = self._cfg.max_associations
        ae.require_called_aet = self._cfg.check_called_ae_title
        ae.require_calling_aet = list(self._cfg.allowed_calling_ae_titles)
        ssl_ctx = server_context(self._cfg.tls) if self._cfg.tls else None
        self._server = ae.start_server(
            (self._cfg.host, self._cfg.port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self.handle_store)],
            ssl_context=ssl_ctx,
        )
        logger.info("listener %s on %s:%d", self._cfg.ae_title, self._cfg.host, self.port)

    def stop(self) -> None:
        """Stop accepting and close open associations."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        self._hasher.shutdown(wait=True)

    def handle_store(self, event: Any) -> int:
        """EVT_C_STORE handler: make the instance durable, then answer. Never raises."""
        try:
            status = self.ingest(
                sop_uid=str(event.request.AffectedSOPInstanceUID or ""),
                sop_class=str(event.request.AffectedSOPClassUID or ""),
                raw=event.encoded_dataset(),
                calling_ae=str(event.assoc.requestor.ae_title).strip(),
            )
        except OutOfResources as exc:
            logger.warning("C-STORE refused, out of resources: %s", exc)
            status = STATUS_OUT_OF_RESOURCES
        except RejectedInput as exc:
            logger.warning("C-STORE rejected: %s", exc.reason)
            status = STATUS_CANNOT_UNDERSTAND
        except OSError as exc:
            logger.error("C-STORE failed writing to disk: %s", exc)
            status = STATUS_OUT_OF_RESOURCES
        except Exception:  # the one broad catch at the protocol boundary: log and answer
            logger.exception("C-STORE handler failed unexpectedly")
            status = STATUS_UNEXPECTED
        if status == STATUS_SUCCESS:
            self.received += 1
        else:
            self.failed += 1
        return status

    def ingest(self, sop_uid: str, sop_class: str, raw: bytes, calling_ae: str) -> int:
        """Make one received instance durable and record it; return the DIMSE status.

        Args:
            sop_uid: Affected SOP Instance UID from the C-STORE request.
            sop_class: Affected SOP Class UID from the C-STORE request.
            raw: The instance as a DICOM file (preamble, file meta, data set as received).
            calling_ae: The sender's AE title.

        Raises:
            OutOfResources: The spool disk is below its floor.
            RejectedInput: The data set cannot be parsed (audited, bytes kept aside).
        """
        now = self._clock()
        check_free_space(self._spool, self._cfg.min_free_bytes)
        # hashlib releases the GIL on large buffers: hash while the header is parsed.
        hashing = self._hasher.submit(lambda: hashlib.sha256(raw).hexdigest())
        try:
            ds = self._parse_header(raw, sop_uid)
        except RejectedInput as exc:
            self._reject(raw, hashing.result(), sop_uid, calling_ae, now, exc.reason)
            raise
        digest = hashing.result()
        meta = self._meta(ds, sop_uid, sop_class, digest, len(raw), calling_ae, now)
        if not self._ledger.has_instance(sop_uid):
            durable_write(Path(meta.path), raw)
        result = self._ledger.record_instance(meta, now, now + self._quiet, self._actor)
        if result == RecordResult.DUPLICATE:
            logger.info("duplicate SOP Instance UID %s acknowledged, not reprocessed", sop_uid)
        return STATUS_SUCCESS

    @staticmethod
    def _parse_header(raw: bytes, sop_uid: str) -> Dataset:
        try:
            ds = dcmread(BytesIO(raw), stop_before_pixels=True)
            ds.get("StudyInstanceUID")  # force parsing up to the UIDs we need
            return ds
        except Exception as exc:  # any parser failure means "cannot understand"
            reason = f"data set cannot be parsed: {type(exc).__name__}: {str(exc)[:200]}"
            raise RejectedInput(reason, sop_uid) from exc

    def _reject(
        self, raw: bytes, digest: str, sop_uid: str, calling_ae: str, now: float, reason: str
    ) -> None:
        """Keep unparseable data aside for inspection and audit the rejection."""
        durable_write(self._rejected / f"{digest}.dcm", raw)
        event = AuditEvent(
            AuditEventType.INSTANCE_REJECTED,
            self._actor,
            sop_instance_uid=sop_uid,
            detail={"reason": reason, "calling_ae": calling_ae, "sha256": digest},
        )
        self._ledger.audit([event], now)

    def _meta(
        self,
        ds: Dataset,
        sop_uid: str,
        sop_class: str,
        digest: str,
        size: int,
        calling_ae: str,
        now: float,
    ) -> InstanceMeta:
        study = str(ds.get("StudyInstanceUID", "") or "").strip() or f"unknown-study:{sop_uid}"
        series = str(ds.get("SeriesInstanceUID", "") or "").strip() or f"unknown-series:{sop_uid}"
        path = self._spool / _safe_name(study) / f"{_safe_name(sop_uid)}.dcm"
        return InstanceMeta(
            sop_instance_uid=sop_uid,
            sop_class_uid=sop_class,
            study_instance_uid=study,
            series_instance_uid=series,
            modality=str(ds.get("Modality", "") or "").strip(),
            transfer_syntax_uid=str(ds.file_meta.get("TransferSyntaxUID", "")),
            path=str(path),
            sha256=digest,
            size=size,
            received_at=now,
            calling_ae=calling_ae,
            body_part=str(ds.get("BodyPartExamined", "") or "").strip(),
            series_description=str(ds.get("SeriesDescription", "") or "").strip(),
            patient_key=hash_identifier(str(ds.get("PatientID", "") or ""), self._hash_key),
            accession_key=hash_identifier(
                str(ds.get("AccessionNumber", "") or "").strip(), self._hash_key
            ),
        )


@dataclass(frozen=True, slots=True)
class StoreOutcome:
    """The PACS's answer for one C-STORE."""

    sop_instance_uid: str
    status: int

    @property
    def ok(self) -> bool:
        """Success or warning (PS3.4 B.2.3: 0xB000, 0xB006, 0xB007 are stored)."""
        return self.status == 0x0000 or (self.status & 0xF000) == 0xB000


class DimsePacsClient:
    """C-STORE SCU towards the PACS."""

    def __init__(self, cfg: PacsConfig) -> None:
        """Args:
        cfg: The PACS config slice.
        """
        self._cfg = cfg

    def store(self, datasets: Sequence[Dataset]) -> list[StoreOutcome]:
        """Store datasets over one association.

        Returns:
            One outcome per dataset, in order.

        Raises:
            DependencyUnavailable: The PACS cannot be reached or refused the association.
        """
        ae = AE(ae_title=self._cfg.calling_ae_title)
        for ds in datasets:
            ts = str(ds.file_meta.TransferSyntaxUID)
            contexts = {(c.abstract_syntax, tuple(c.transfer_syntax)) for c in ae.requested_contexts}
            if (str(ds.SOPClassUID), (ts,)) not in contexts:
                ae.add_requested_context(str(ds.SOPClassUID), ts)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self._cfg.timeout_s
        ae.connection_timeout = self._cfg.timeout_s
        tls = (client_context(self._cfg.tls), self._cfg.tls.server_hostname or self._cfg.host) if self._cfg.tls else None
        assoc = ae.associate(self._cfg.host, self._cfg.port, ae_title=self._cfg.ae_title, tls_args=tls)
        if not assoc.is_established:
            raise DependencyUnavailable("pacs", f"no association with {self._cfg.ae_title}@{self._cfg.host}:{self._cfg.port}")
        try:
            return [self._send(assoc, ds) for ds in datasets]
        finally:
            if assoc.is_established:
                assoc.release()

    @staticmethod
    def _send(assoc: Any, ds: Dataset) -> StoreOutcome:
        status = assoc.send_c_store(ds)
        if not status or "Status" not in status:
            raise DependencyUnavailable("pacs", "no C-STORE response (association aborted or timed out)")
        return StoreOutcome(str(ds.SOPInstanceUID), int(status.Status))
