"""Query/Retrieve SCU towards the PACS: C-FIND, C-MOVE and C-GET, Study Root (PS3.4 C.6.2).

Implements the ``core.ports.PacsQuery`` port (studies, series, instance counts) plus retrieval
of one series. Each call opens its own association (pynetdicom ``AE`` objects are cheap and not
shared between threads). A PACS that cannot be reached, refuses the association or answers a
failure status raises ``DependencyUnavailable``, so callers wait or go on without it.

C-MOVE sends the series to our own listener (``move_destination``: its AE title, which the PACS
must know); C-MOVE is complete when the final response arrives, and by then our listener has
made every instance durable. C-GET brings the instances back on this association: each goes
to ``on_store`` (the listener's C-STORE handler, so the same durability contract applies).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    RLELossless,
)
from pynetdicom import AE, _config, build_role, evt, sop_class
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind as FIND,
)
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelGet as GET,
)
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelMove as MOVE,
)

from actors.adapters.tls import client_context
from core.completeness import PacsCounts
from core.config import PacsConfig
from core.errors import DependencyUnavailable
from core.priors import InstanceRef, PatientIdentity, SeriesRecord, StudyQuery, StudyRecord

# pynetdicom logs C-FIND / C-MOVE / C-GET identifiers (patient names and IDs) at INFO, for
# every SCU and SCP in the process: logs carry UIDs and keyed hashes only.
_config.LOG_REQUEST_IDENTIFIERS = False
_config.LOG_RESPONSE_IDENTIFIERS = False

__all__ = ["DimseQueryRetrieve", "RetrieveOutcome", "SCU_HANDLERS", "responses_to_the_caller", "tcp_nodelay"]

logger = logging.getLogger(__name__)

_PENDING = (0xFF00, 0xFF01)
_GET_STORAGE = (
    "DigitalXRayImageStorageForPresentation",
    "DigitalXRayImageStorageForProcessing",
    "ComputedRadiographyImageStorage",
    "CTImageStorage",
    "EnhancedCTImageStorage",
    "MRImageStorage",
    "EnhancedMRImageStorage",
    "UltrasoundImageStorage",
    "UltrasoundMultiFrameImageStorage",
    "DigitalMammographyXRayImageStorageForPresentation",
    "NuclearMedicineImageStorage",
    "PositronEmissionTomographyImageStorage",
    "XRayAngiographicImageStorage",
    "XRayRadiofluoroscopicImageStorage",
    "SecondaryCaptureImageStorage",
    "Comprehensive3DSRStorage",
    "ComprehensiveSRStorage",
    "EnhancedSRStorage",
    "BasicTextSRStorage",
    "SegmentationStorage",
    "ParametricMapStorage",
)
"""Storage SOP classes we accept on a C-GET association (at most 127 contexts fit)."""
_GET_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    JPEGLosslessSV1,
    JPEG2000Lossless,
    RLELossless,
]


@dataclass(frozen=True, slots=True)
class RetrieveOutcome:
    """The final C-MOVE / C-GET response (PS3.4 C.4.2.1.4 / C.4.3.1.4)."""

    status: int
    completed: int
    failed: int
    warning: int

    @property
    def ok(self) -> bool:
        """Every sub-operation succeeded (status Success, nothing failed)."""
        return self.status == 0x0000 and self.failed == 0


def tcp_nodelay(event: Any) -> None:
    """EVT_CONN_OPEN handler: disable Nagle on an SCU socket.

    pynetdicom sends a DIMSE command and its data set as separate PDUs; with Nagle on, the
    second waits for the peer's delayed ACK (~40 ms per C-FIND against Orthanc / dcmtk, measured
    here: 50 ms per C-FIND with Nagle, 4 ms without; ``shared/reference/baselines.md``).
    """
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def responses_to_the_caller(event: Any) -> None:
    """EVT_CONN_OPEN handler of an SCU association: its responses go only to the caller that
    waits for them, never to the association's reactor.

    pynetdicom's reactor thread takes DIMSE messages off the association's queue (non-blocking)
    to serve requests from the peer. The ``send_*`` methods pause it at a checkpoint first, but a
    reactor that passed the checkpoint just before (descheduled on a busy machine) still takes
    the next message: a C-FIND or C-STORE *response*, dropped with "Received unexpected C-FIND
    service message", while the caller waits for it until the DIMSE timeout (a count query lost
    so, and the quiet period completed a study that ``pacs_counts`` should have: a fresh-clone
    CI run; pynetdicom issues 435 and 875). Our SCU associations serve no requests (C-GET's
    C-STORE sub-operations come to the caller's loop too), so the reactor's non-blocking read
    finds nothing; the caller's blocking reads are unchanged. Bound before the reactor starts.
    """
    dimse = event.assoc.dimse
    take = dimse.get_msg

    def get_msg(block: bool = False) -> Any:
        return take(block) if block else (None, None)

    dimse.get_msg = get_msg


SCU_HANDLERS: list[tuple[Any, Callable[[Any], None]]] = [
    (evt.EVT_CONN_OPEN, tcp_nodelay),
    (evt.EVT_CONN_OPEN, responses_to_the_caller),
]
"""The event handlers every association we request binds."""


def _int(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


class DimseQueryRetrieve:
    """C-FIND / C-MOVE / C-GET SCU for one PACS."""

    def __init__(
        self,
        cfg: PacsConfig,
        timeout_s: float | None = None,
        retrieve_timeout_s: float = 120.0,
        move_destination: str = "",
        on_store: Callable[[Any], int] | None = None,
    ) -> None:
        """Args:
        cfg: The PACS config slice (AE titles, address, TLS).
        timeout_s: Connect and C-FIND timeout (default: ``cfg.timeout_s``).
        retrieve_timeout_s: DIMSE timeout of C-MOVE / C-GET responses.
        move_destination: Our listener's AE title, for C-MOVE.
        on_store: C-STORE handler for C-GET sub-operations (returns a DIMSE status).
        """
        self._cfg = cfg
        self._timeout = timeout_s or cfg.timeout_s
        self._retrieve_timeout = retrieve_timeout_s
        self._move_destination = move_destination
        self._on_store = on_store

    # ---------------------------------------------------------------- C-FIND
    def find_studies(self, query: StudyQuery) -> list[StudyRecord]:
        """STUDY-level C-FIND for one patient's studies (``core.ports.PacsQuery``).

        Raises:
            DependencyUnavailable: The PACS cannot be reached, refuses, or answers a failure.
        """
        q = _identifier(
            "STUDY",
            StudyInstanceUID="",
            StudyDate=f"{query.date_from}-{query.date_to}",
            StudyTime="",
            AccessionNumber="",
            StudyDescription="",
            ModalitiesInStudy="\\".join(query.modalities),
            NumberOfStudyRelatedInstances="",
            PatientID=query.patient_id,
            IssuerOfPatientID=query.issuer,
            PatientName="",
            PatientBirthDate="",
        )
        return [_study(a) for a in self._find([q])[0] if a.get("StudyInstanceUID")]

    def find_series(self, study_uid: str) -> list[SeriesRecord]:
        """SERIES-level C-FIND of one study (``core.ports.PacsQuery``).

        Raises:
            DependencyUnavailable: The PACS cannot be reached, refuses, or answers a failure.
        """
        return [_series(a, study_uid) for a in self._find([_series_query(study_uid)])[0] if a.get("SeriesInstanceUID")]

    def find_instances(self, study_uid: str, series_uid: str) -> list[InstanceRef]:
        """IMAGE-level C-FIND: the instances of one series.

        Raises:
            DependencyUnavailable: The PACS cannot be reached, refuses, or answers a failure.
        """
        q = _identifier(
            "IMAGE",
            StudyInstanceUID=study_uid,
            SeriesInstanceUID=series_uid,
            SOPInstanceUID="",
            SOPClassUID="",
            InstanceNumber="",
        )
        return [
            InstanceRef(study_uid, series_uid, str(a.get("SOPClassUID", "")), str(a.SOPInstanceUID))
            for a in self._find([q])[0]
            if a.get("SOPInstanceUID")
        ]

    def study_counts(self, study_uid: str) -> PacsCounts:
        """Number of Study and Series Related Instances of one study, over one association.

        Raises:
            DependencyUnavailable: The PACS cannot be reached, refuses, or answers a failure.
        """
        study_q = _identifier("STUDY", StudyInstanceUID=study_uid, NumberOfStudyRelatedInstances="")
        studies, series = self._find([study_q, _series_query(study_uid)])
        if not studies and not series:
            return PacsCounts(known=False)
        count = _int(studies[0].get("NumberOfStudyRelatedInstances")) if studies else None
        per_series = {
            str(a.SeriesInstanceUID): _int(a.get("NumberOfSeriesRelatedInstances"))
            for a in series
            if a.get("SeriesInstanceUID")
        }
        return PacsCounts(known=True, study_count=count, series=per_series)

    def _find(self, queries: list[Dataset]) -> list[list[Dataset]]:
        """Send C-FINDs over one association; return the matches of each."""
        assoc = self._associate([FIND], self._timeout)
        try:
            return [self._find_one(assoc, q) for q in queries]
        finally:
            _close(assoc)

    @staticmethod
    def _find_one(assoc: Any, query: Dataset) -> list[Dataset]:
        matches = []
        for status, identifier in assoc.send_c_find(query, FIND):
            code = int(status.Status) if status and "Status" in status else None
            if code is None:
                raise DependencyUnavailable("pacs", "C-FIND: no response (association aborted or timed out)")
            if code in _PENDING:
                if identifier is not None:
                    matches.append(identifier)
            elif code != 0x0000:
                raise DependencyUnavailable("pacs", f"C-FIND answered 0x{code:04X}; expected 0x0000")
        return matches

    # ------------------------------------------------------------- retrieval
    def retrieve_series(self, study_uid: str, series_uid: str, method: str) -> RetrieveOutcome:
        """Retrieve one series by ``"c-move"`` (to our listener) or ``"c-get"``.

        Raises:
            DependencyUnavailable: The PACS cannot be reached or the retrieval broke off.
            ValueError: ``method`` is neither, or C-GET was asked without ``on_store``.
        """
        q = _identifier("SERIES", StudyInstanceUID=study_uid, SeriesInstanceUID=series_uid)
        if method == "c-move":
            return self._move(q)
        if method == "c-get":
            return self._get(q)
        raise ValueError(f"retrieve method: got {method!r}; expected 'c-move' or 'c-get'")

    def _move(self, q: Dataset) -> RetrieveOutcome:
        if not self._move_destination:
            raise ValueError("C-MOVE needs move_destination (our listener's AE title)")
        assoc = self._associate([MOVE], self._retrieve_timeout)
        try:
            return _final(assoc.send_c_move(q, self._move_destination, MOVE), "C-MOVE")
        finally:
            _close(assoc)

    def _get(self, q: Dataset) -> RetrieveOutcome:
        if self._on_store is None:
            raise ValueError("C-GET needs on_store (a C-STORE handler)")
        classes = [getattr(sop_class, name) for name in _GET_STORAGE]
        roles = [build_role(uid, scp_role=True) for uid in classes]
        assoc = self._associate([GET], self._retrieve_timeout, storage=classes, roles=roles)
        try:
            return _final(assoc.send_c_get(q, GET), "C-GET")
        finally:
            _close(assoc)

    # ----------------------------------------------------------- association
    def _associate(
        self,
        models: Sequence[str],
        timeout_s: float,
        storage: Sequence[str] = (),
        roles: Sequence[Any] = (),
    ) -> Any:
        ae = AE(ae_title=self._cfg.calling_ae_title)
        for uid in models:
            ae.add_requested_context(uid)
        for uid in storage:
            ae.add_requested_context(uid, _GET_SYNTAXES)
        ae.acse_timeout = ae.connection_timeout = self._timeout
        ae.dimse_timeout = ae.network_timeout = timeout_s
        tls = None
        if self._cfg.tls:
            tls = (client_context(self._cfg.tls), self._cfg.tls.server_hostname or self._cfg.host)
        handlers: list[Any] = list(SCU_HANDLERS)
        if storage and self._on_store:
            handlers.append((evt.EVT_C_STORE, self._on_store))
        assoc = ae.associate(
            self._cfg.host,
            self._cfg.port,
            ae_title=self._cfg.ae_title,
            tls_args=tls,
            ext_neg=list(roles) or None,
            evt_handlers=handlers,
        )
        if not assoc.is_established:
            raise DependencyUnavailable(
                "pacs", f"no association with {self._cfg.ae_title}@{self._cfg.host}:{self._cfg.port}"
            )
        return assoc


def _identifier(level: str, **keys: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def _series_query(study_uid: str) -> Dataset:
    return _identifier(
        "SERIES",
        StudyInstanceUID=study_uid,
        SeriesInstanceUID="",
        Modality="",
        BodyPartExamined="",
        SeriesDescription="",
        SeriesNumber="",
        NumberOfSeriesRelatedInstances="",
    )


def _study(a: Dataset) -> StudyRecord:
    modalities = a.get("ModalitiesInStudy", "") or ""
    if isinstance(modalities, str):
        modalities = [m for m in modalities.split("\\") if m]
    return StudyRecord(
        study_uid=str(a.StudyInstanceUID),
        identity=PatientIdentity.from_dataset(a),
        study_date=str(a.get("StudyDate", "") or ""),
        study_time=str(a.get("StudyTime", "") or ""),
        accession=str(a.get("AccessionNumber", "") or ""),
        description=str(a.get("StudyDescription", "") or ""),
        modalities=tuple(str(m) for m in modalities),
        n_instances=_int(a.get("NumberOfStudyRelatedInstances")),
    )


def _series(a: Dataset, study_uid: str) -> SeriesRecord:
    return SeriesRecord(
        study_uid=str(a.get("StudyInstanceUID", "") or study_uid),
        series_uid=str(a.SeriesInstanceUID),
        modality=str(a.get("Modality", "") or ""),
        body_part=str(a.get("BodyPartExamined", "") or ""),
        description=str(a.get("SeriesDescription", "") or ""),
        n_instances=_int(a.get("NumberOfSeriesRelatedInstances")),
    )


def _final(responses: Any, what: str) -> RetrieveOutcome:
    """Drain C-MOVE / C-GET responses and return the final one."""
    last: Dataset | None = None
    for status, _ in responses:
        if not status or "Status" not in status:
            raise DependencyUnavailable("pacs", f"{what}: no response (association aborted or timed out)")
        last = status
    if last is None:
        raise DependencyUnavailable("pacs", f"{what}: no final response")
    return RetrieveOutcome(
        status=int(last.Status),
        completed=_int(last.get("NumberOfCompletedSuboperations")) or 0,
        failed=_int(last.get("NumberOfFailedSuboperations")) or 0,
        warning=_int(last.get("NumberOfWarningSuboperations")) or 0,
    )


def _close(assoc: Any) -> None:
    if assoc.is_established:
        assoc.release()
