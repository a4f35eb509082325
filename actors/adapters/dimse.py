"""DIMSE adapters: the durable C-STORE SCP (our listener) and the SCU that stores to the PACS.

The listener is also the MPPS SCP (N-CREATE / N-SET) and the IAN SCP (N-CREATE): completion
evidence, handled by ``actors.adapters.procedure_steps``.

The SCP answers success (0x0000) only after the instance is durable: bytes written, fsync,
atomic rename, directory fsync, ledger row committed (DESIGN.md, "Durability"). A handler never
raises; every failure becomes an explicit DIMSE status (PS3.4 Annex B.2.3):

- 0xA700 Refused, out of resources: our disk is below its floor, an I/O error happened, or the
  ledger cannot commit (PostgreSQL down); the sender keeps the data and retries. A file already
  moved into the spool when the ledger failed is left there: a lost connection may have hidden
  a commit that happened, and a re-send writes the same path again (or is a duplicate).
- 0xC000 Cannot understand: the data set cannot be parsed; an audit event records it.
- 0xC211 for anything unexpected (pynetdicom's own default for a failing handler).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config, evt
from pynetdicom._handlers import (
    standard_dimse_recv_handler,
    standard_dimse_sent_handler,
    standard_pdu_recv_handler,
    standard_pdu_sent_handler,
)
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import Verification, uid_to_service_class
from pynetdicom.transport import AssociationSocket, ThreadedAssociationServer

from actors.adapters.association_gate import AssociationGate
from actors.adapters.clock import SystemClock
from actors.adapters.dimse_limits import AssociationGuard, SpillBuffer, SpillingDimse, spill_into
from actors.adapters.dimse_wakeups import connection_closed, wait_for_work
from actors.adapters.metrics import recorder
from actors.adapters.port_sharing import PortSharing
from actors.adapters.procedure_steps import EVIDENCE_SOP_CLASSES, EvidenceScp
from actors.adapters.query_retrieve import SCU_HANDLERS
from actors.adapters.startup_gc import freeze_startup
from actors.adapters.tls import client_context, server_context
from core.config import AssemblyConfig, ListenerConfig, PacsConfig
from core.errors import DependencyUnavailable, OutOfResources, RejectedInput
from core.pixels import NATIVE_SYNTAXES, decode_plugins
from core.ports import Clock
from core.validation import NON_PATIENT_SOP_CLASSES
from state.ledger import Ledger
from state.spool import SpoolIntake, read_preamble_and_meta

__all__ = [
    "DimsePacsClient",
    "Listener",
    "StoreOutcome",
    "prefer_decodable_syntaxes",
    "read_preamble_and_meta",
    "storage_sop_classes",
]

logger = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_UNEXPECTED = 0xC211


class _Server(ThreadedAssociationServer):
    """pynetdicom's threaded association server with a deep accept queue.

    ``socketserver``'s default backlog is 5: under a burst of connections (a thousand at once)
    the kernel drops the SYNs past it and the peers retry after 1, 3, 7... seconds, so the
    refusals of the per-peer cap come late and honest peers wait behind the flood.
    """

    request_queue_size = 1024


class _SharedPortServer(_Server):
    """An association server whose socket shares its port with the other listener processes of
    this node (``SO_REUSEPORT``): the kernel spreads new associations over them, and with
    ``sharing`` (``actors.adapters.port_sharing``) a connection accepted while a sibling is less
    busy is passed to it."""

    sharing: PortSharing | None = None

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve an accepted connection here, or pass it to a less busy sibling."""
        sharing = self.sharing
        if sharing is not None and type(request) is socket.socket and sharing.place(request):
            request.close()  # the sibling holds its own descriptor of the connection
            return
        super().process_request(request, client_address)

    def serve_passed(self, request: socket.socket, client_address: Any) -> None:
        """Serve a connection a sibling passed to us (never passed on again)."""
        super().process_request(request, client_address)


def _serve(ae: AE, address: tuple[str, int], handlers: list[Any], ssl_ctx: Any, *, shared: bool) -> Any:
    """``AE.start_server(block=False)``, optionally with a ``SO_REUSEPORT`` socket: pynetdicom's
    own ``make_server`` with our server class, served on a daemon thread as it does."""
    server_class = _SharedPortServer if shared else _Server
    server = ae.make_server(address, evt_handlers=handlers, ssl_context=ssl_ctx, server_class=server_class)
    threading.Thread(target=server.serve_forever, name="AcceptorServer", daemon=True).start()
    ae._servers.append(server)  # as start_server does: AE.shutdown and server.shutdown find it
    return server


_READ_MAX = 1 << 20
"""Most bytes one ``recv`` asks for: what a PDU length announces is not allocated before it
arrives (a peer may announce 4 GiB and send 10 bytes)."""


class PduTooLong(ConnectionAbortedError):
    """A peer announced a PDU longer than we accept: the association is closed (Evt17)."""


_STANDARD_LOGGING = (
    (evt.EVT_PDU_RECV, standard_pdu_recv_handler),
    (evt.EVT_PDU_SENT, standard_pdu_sent_handler),
    (evt.EVT_DIMSE_RECV, standard_dimse_recv_handler),
    (evt.EVT_DIMSE_SENT, standard_dimse_sent_handler),
)


def _unbind_standard_logging(assoc: Any) -> None:
    """Unbind pynetdicom's standard logging handlers from one of our associations.

    pynetdicom binds them to every association (``_config.LOG_HANDLER_LEVEL``, process-wide):
    per PDU an ``Event``, per PDU sent the AE-wide lock; per C-STORE request a copy of the
    whole data set (``getvalue()``, only to say whether there is one) and a dozen formatted
    lines for its DEBUG log; per response the message dump: ~45 µs of the GIL per instance,
    and nothing we log: our own log names UIDs only, and the audit trail records what arrived.
    """
    for event, handler in _STANDARD_LOGGING:
        assoc.unbind(event, handler)


class _BulkReadSocket(AssociationSocket):
    """pynetdicom's association socket, reading each PDU with as few ``recv`` calls as the
    kernel's buffer allows.

    ``AssociationSocket.recv`` reads 4 KiB per call into a growing bytearray: a 512x512 CT
    slice (four 128 KiB PDUs from dcmtk) took some 130 Python-level reads, a seventh of the
    listener's CPU samples (py-spy under bench_ingest). Same contract: the bytes asked for, or
    fewer if the peer closed the connection; a timeout or an ``OSError`` is raised as before;
    memory grows only with the bytes that arrived. A PDU announcing more than ``pdu_cap``
    bytes is not read at all: the read fails and the DUL closes the association.
    """

    pdu_cap = 1 << 32
    """Most bytes one read may ask for (set per association from ``max_pdu_size``)."""

    def recv(self, nr_bytes: int) -> bytearray:
        """Read ``nr_bytes`` from the socket (fewer only if the connection was closed).

        Raises:
            PduTooLong: ``nr_bytes`` is more than ``pdu_cap``.
        """
        sock = self.socket
        assert sock is not None
        if nr_bytes > self.pdu_cap:
            raise PduTooLong(f"PDU of {nr_bytes} bytes announced; at most {self.pdu_cap} accepted (max_pdu_size)")
        buffer = bytearray()
        while len(buffer) < nr_bytes:
            chunk = sock.recv(min(nr_bytes - len(buffer), _READ_MAX))
            if not chunk:  # closed by the peer: what was read so far
                break
            buffer += chunk
        return buffer


class Listener:
    """The C-ECHO / C-STORE SCP. Depends on nothing but its disk and the ledger file."""

    def __init__(
        self,
        cfg: ListenerConfig,
        spool_dir: Path,
        rejected_dir: Path,
        ledger: Ledger,
        quiet_period_s: float,
        clock: Clock | None = None,
        hash_key: bytes = b"pacsai-default-identifier-key",
        assembly: AssemblyConfig | None = None,
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
            assembly: Per-sender completion rules; when given, a sender's own quiet period
                schedules the assembler instead of ``quiet_period_s``.
        """
        self._cfg = cfg
        self._clock = clock or SystemClock()
        self._server: Any = None
        self._actor = f"listener:{cfg.ae_title}"
        self.received = 0
        self.failed = 0
        self.last_received_at = 0.0
        self.intake = SpoolIntake(
            spool_dir,
            rejected_dir,
            ledger,
            quiet_period_s,
            self._clock,
            hash_key,
            actor=self._actor,
            min_free_bytes=cfg.min_free_bytes,
            workers=cfg.max_associations,
            assembly=assembly,
            group_max=cfg.group_commit_max,
            max_inflated_bytes=cfg.limits.max_inflated_bytes,
            rejected_quota=(cfg.limits.rejected_max_bytes, cfg.limits.rejected_max_files),
        )
        self.guard = AssociationGuard(cfg.limits.max_associations_per_peer, cfg.limits.max_association_s)
        self.evidence = EvidenceScp(ledger, self._actor, self._clock)
        self.gate = AssociationGate(cfg, ledger, self._actor, self._clock)
        self.sharing: PortSharing | None = None
        """The hand-over of connections between the listener processes of the port
        (``instances`` > 1, plain DICOM: ``actors.adapters.port_sharing``)."""

    @property
    def port(self) -> int:
        """The bound port (useful when the config asked for port 0)."""
        if self._server is None:
            raise RuntimeError("listener is not started")
        return int(self._server.server_address[1])

    def start(self, shared: bool = False) -> None:
        """Open the port and serve in background threads; ``shared``: with ``SO_REUSEPORT``
        even as the only listener (``pacsai up``'s early listener hands the port over to us)."""
        _config.UNRESTRICTED_STORAGE_SERVICE = True  # private and new storage SOP classes too
        _config.LOG_REQUEST_IDENTIFIERS = False  # identifiers stay out of logs (PHI)
        ae = AE(ae_title=self._cfg.ae_title)
        for uid in _negotiated_storage_classes():
            ae.add_supported_context(uid, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
        for uid in EVIDENCE_SOP_CLASSES:  # MPPS and IAN: completion evidence
            ae.add_supported_context(uid, ALL_TRANSFER_SYNTAXES)
        ae.maximum_pdu_size = self._cfg.max_pdu_size
        ae.network_timeout = self._cfg.network_timeout_s
        ae.acse_timeout = self._cfg.network_timeout_s
        ae.dimse_timeout = self._cfg.network_timeout_s
        ae.maximum_associations = self._cfg.max_associations
        ae.require_called_aet = self._cfg.check_called_ae_title
        ae.require_calling_aet = list(self._cfg.allowed_calling_ae_titles)
        ssl_ctx = server_context(self._cfg.tls) if self._cfg.tls else None
        handlers = [
            (evt.EVT_C_STORE, self.handle_store),
            (evt.EVT_N_CREATE, self.evidence.handle_n_create),
            (evt.EVT_N_SET, self.evidence.handle_n_set),
            (evt.EVT_CONN_OPEN, self._bound_reads),
            (evt.EVT_CONN_CLOSE, self._closed),
            (evt.EVT_ACSE_RECV, prefer_decodable_syntaxes),
            (evt.EVT_REQUESTED, self.gate.on_requested),  # issue 13: AE title bound to cert subject
            (evt.EVT_REJECTED, self.gate.on_rejected),
        ]
        address = (self._cfg.host, self._cfg.port)
        # instances > 1: several listener processes share the port
        self._server = _serve(ae, address, handlers, ssl_ctx, shared=shared or self._cfg.instances > 1)
        if self._cfg.instances > 1 and ssl_ctx is None:  # even the siblings' loads out
            # beside the spool, not in it: nothing there is PHI (pacsai keys rotate re-seals the spool)
            rendezvous = self.intake.spool_dir.parent / "listeners"
            self.sharing = PortSharing(rendezvous, self.port, self._server.serve_passed)
            self._server.sharing = self.sharing
        self.guard.start()
        freeze_startup()  # one full collection of it took 57-74 ms under load
        logger.info("listener %s on %s:%d", self._cfg.ae_title, self._cfg.host, self.port)

    def _bound_reads(self, event: Any) -> None:
        """EVT_CONN_OPEN: give the accepted socket the network timeout, and bulk reads.

        pynetdicom's DUL reads a whole PDU with blocking ``recv`` calls on the accepted socket,
        which has no timeout: a peer that stops in the middle of a PDU (or announces more bytes
        than it sends) would hold the association and a thread forever. With a timeout the read
        fails, the DUL sees the connection as closed (Evt17) and ends the association.
        The association's socket wrapper becomes a ``_BulkReadSocket`` (the same object, one
        method faster: nothing else of the association changes).
        """
        wrapper = getattr(event.assoc.dul, "socket", None)
        sock = getattr(wrapper, "socket", None)
        if sock is not None:
            sock.settimeout(self._cfg.network_timeout_s)
        if type(wrapper) is AssociationSocket:
            wrapper.__class__ = _BulkReadSocket
            wrapper.pdu_cap = _pdu_cap(self._cfg.max_pdu_size)
        if self.guard.admit(event.assoc, str(event.address[0])):  # issue 13: per-peer cap, deadline
            spill_into(event.assoc, self.intake.spool_dir / ".incoming", self._cfg.limits)
            wait_for_work(event.assoc)
            _unbind_standard_logging(event.assoc)

    @property
    def serving(self) -> bool:
        """Whether the server thread is accepting associations (``serve_forever`` runs)."""
        server = self._server
        if server is None:
            return False
        stopped = getattr(server, "_BaseServer__is_shut_down", None)  # socketserver's flag
        return server.socket.fileno() != -1 and not (stopped is not None and stopped.is_set())

    def _closed(self, event: Any) -> None:
        """EVT_CONN_CLOSE: drop a partly received data set; uncount the association; end its
        waits for work."""
        _discard_partial(event)
        connection_closed(event.assoc)
        if self.sharing is not None:
            self.sharing.closed()

    def _leave_port(self) -> None:
        """Take no more connections from siblings (before the listening socket closes)."""
        if self.sharing is not None:
            if self._server is not None:
                self._server.sharing = None  # what it accepts from now on stays here
            self.sharing.close()
            self.sharing = None

    def stop(self) -> None:
        """Stop accepting and close open associations."""
        self._leave_port()
        self.guard.stop()
        if self._server is not None:
            try:
                self._server.shutdown()
            except ValueError:  # pynetdicom's own list no longer holds it (the AE shut its servers
                pass  # down first); its socket is closed by then (ThreadedAssociationServer.shutdown)
            self._server = None
        self.intake.close()

    def drain(self, timeout_s: float) -> int:
        """Stop accepting, let the open associations finish (up to ``timeout_s``), then stop.

        For a hand-over of a shared port: the other listeners take the new associations. A
        connection the kernel had queued on this socket but not yet handed to us is reset
        when it closes; its sender retries (nothing was acknowledged on it).

        Returns:
            How many associations were still open at the deadline (aborted by ``stop``).
        """
        server = self._server
        if server is None:
            return 0
        self._leave_port()
        server.shutdown()  # the listening socket closes; running associations go on
        deadline = time.monotonic() + timeout_s
        while (left := server.active_associations) and time.monotonic() < deadline:
            time.sleep(0.05)
        for assoc in left:
            assoc.abort()
        self._server = None
        self.stop()
        return len(left)

    def handle_store(self, event: Any) -> int:
        """EVT_C_STORE handler: make the instance durable, then answer. Never raises."""
        received = event.request.DataSet
        try:
            self.intake.ingest(
                sop_uid=str(event.request.AffectedSOPInstanceUID or ""),
                sop_class=str(event.request.AffectedSOPClassUID or ""),
                dataset=_received(received, self._cfg.limits.max_dataset_bytes),
                transfer_syntax=str(event.context.transfer_syntax),
                calling_ae=str(event.assoc.requestor.ae_title).strip(),
            )
            status = STATUS_SUCCESS
        except OutOfResources as exc:
            logger.warning("C-STORE refused, out of resources: %s", exc)
            status = STATUS_OUT_OF_RESOURCES
        except RejectedInput as exc:
            logger.warning("C-STORE rejected: %s", exc.reason)
            status = STATUS_CANNOT_UNDERSTAND
        except OSError as exc:
            logger.error("C-STORE failed writing to disk: %s", exc)
            status = STATUS_OUT_OF_RESOURCES
        except DependencyUnavailable as exc:  # the ledger cannot commit: never success
            logger.warning("C-STORE refused, the ledger is unavailable: %s", exc)
            status = STATUS_OUT_OF_RESOURCES
        except Exception:  # the one broad catch at the protocol boundary: log and answer
            logger.exception("C-STORE handler failed unexpectedly")
            status = STATUS_UNEXPECTED
        finally:
            if isinstance(received, SpillBuffer):
                received.discard()  # the spool holds its own copy now
        if status == STATUS_SUCCESS:
            self.received += 1
            self.last_received_at = self._clock.now()
            recorder.inc("pacsai_instances_received_total", transport="dimse")
        else:
            self.failed += 1
            recorder.inc("pacsai_errors_total", where="listener", kind=f"c-store 0x{status:04X}")
        return status

    def ingest_file(self, raw: bytes, calling_ae: str) -> int:
        """Ingest a whole DICOM Part 10 file (e.g. from a test) as if C-STOREd; the status.

        Raises:
            OutOfResources: The spool disk is below its floor or full.
            RejectedInput: The file meta or the data set cannot be parsed.
        """
        self.intake.ingest_file(raw, calling_ae)
        return STATUS_SUCCESS


def _pdu_cap(max_pdu_size: int) -> int:
    """Most bytes a received PDU may announce: our maximum PDU (a P-DATA-TF's PDV list) plus
    room for an A-ASSOCIATE-RQ with many contexts; no cap for ``max_pdu_size`` 0."""
    return max(max_pdu_size + 64, 1 << 20) if max_pdu_size else 1 << 32


def _received(data: Any, cap: int) -> bytes | Path:
    """A C-STORE data set as the intake takes it: the bytes, or the file it was received to.

    Raises:
        OutOfResources: It was longer than ``cap`` (its excess was dropped unread), or its
            file could not be written.
    """
    if not isinstance(data, SpillBuffer):
        return bytes(data.getvalue())
    if data.oversized:
        raise OutOfResources(f"data set of {data.size} bytes is longer than max_dataset_bytes ({cap})")
    if data.error is not None:
        raise OutOfResources(f"data set could not be received to disk: {data.error}")
    path = data.finish()
    return data.getvalue() if path is None else path


def _discard_partial(event: Any) -> None:
    """EVT_CONN_CLOSE: remove the file of a data set whose association ended mid-transfer."""
    dimse = getattr(event.assoc, "dimse", None)
    if isinstance(dimse, SpillingDimse):
        dimse.discard_partial()


def _syntax_rank(uid: str) -> int:
    if uid in NATIVE_SYNTAXES or decode_plugins(uid):
        return 0  # we can read and decode it
    return 1 if uid in ALL_TRANSFER_SYNTAXES else 2  # known but not decodable here / unknown


def prefer_decodable_syntaxes(event: Any) -> None:
    """EVT_ACSE_RECV: put the transfer syntaxes we can decode first in each proposed context.

    ``UNRESTRICTED_STORAGE_SERVICE`` (needed to store private SOP classes) makes pynetdicom
    accept every storage context with the requestor's *first* transfer syntax, whatever it is,
    and ignore our supported contexts. A requestor that offers, in one context, a syntax we
    cannot decode before one we can would otherwise send data we must quarantine. The order
    among syntaxes of one rank stays the requestor's. A context offering only syntaxes we
    cannot decode is still accepted: the data is stored and the validator quarantines it
    (standards.md 5.1: store, then flag "undecodable for inference").
    """
    primitive = getattr(event, "primitive", None)
    contexts = getattr(primitive, "presentation_context_definition_list", None)
    if getattr(primitive, "result", 1) is not None or not contexts:
        return  # not an A-ASSOCIATE request
    for cx in contexts:
        ranked = sorted(cx.transfer_syntax, key=lambda uid: _syntax_rank(str(uid)))
        if ranked != list(cx.transfer_syntax):
            cx.transfer_syntax = ranked


def _negotiated_storage_classes() -> list[str]:
    """The storage SOP classes that need a supported context of ours: those pynetdicom's
    unrestricted storage service does not accept on its own (the Non-Patient Object Storage
    classes, which it negotiates as other services).

    Every other storage class is accepted without one (``UNRESTRICTED_STORAGE_SERVICE``: "any
    that have been added will be ignored"), and each association deep-copies the AE's
    supported contexts: 179 classes with every transfer syntax took ~50 ms of the GIL per
    association, 9 take a twentieth of it.
    """
    return [uid for uid in storage_sop_classes() if uid_to_service_class(uid) is not StorageServiceClass]


def storage_sop_classes() -> list[str]:
    """Every storage SOP class we accept: pynetdicom's Storage Service classes and the
    Non-Patient Object Storage classes (PS3.4 Annex GG: hanging protocols, color palettes,
    implant templates...), which pynetdicom lists apart. Private and unknown classes are
    accepted through ``UNRESTRICTED_STORAGE_SERVICE``."""
    uids = [str(cx.abstract_syntax) for cx in AllStoragePresentationContexts]
    return uids + [u for u in sorted(NON_PATIENT_SOP_CLASSES) if u not in uids]


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
        tls = (
            (client_context(self._cfg.tls), self._cfg.tls.server_hostname or self._cfg.host) if self._cfg.tls else None
        )
        assoc = ae.associate(
            self._cfg.host,
            self._cfg.port,
            ae_title=self._cfg.ae_title,
            tls_args=tls,
            evt_handlers=list(SCU_HANDLERS),
        )
        if not assoc.is_established:
            raise DependencyUnavailable(
                "pacs", f"no association with {self._cfg.ae_title}@{self._cfg.host}:{self._cfg.port}"
            )
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
