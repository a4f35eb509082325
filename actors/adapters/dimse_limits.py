"""Hostile-input bounds of the DICOM listener (issue 13, item 5): what one peer can make it hold.

- ``SpillBuffer``: a C-STORE data set is received into memory up to ``spill_bytes``, then into
  a file in the spool's ``.incoming`` directory, and past ``max_dataset_bytes`` its bytes are
  read and dropped (the handler answers 0xA700). pynetdicom's own chunked receive
  (``STORE_RECV_CHUNKED_DATASET``) is process-wide, writes every data set to the system temp
  directory and has no size cap; this buffer is per association and capped.
- ``AssociationGuard``: at most ``max_associations_per_peer`` associations from one IP address
  (more are closed as they open), and none open past ``max_association_s`` whatever it sends
  (a reaper thread shuts the socket of an older one down: a peer dripping one byte a minute
  beats every idle timeout, not this deadline).
"""

from __future__ import annotations

import io
import logging
import os
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any

from pynetdicom import evt
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import DIMSEMessage

from actors.adapters.store_response import c_store_rsp_pdata
from core.limits_config import DimseLimitsConfig

__all__ = ["AssociationGuard", "SpillBuffer", "SpillingDimse", "spill_into"]

logger = logging.getLogger(__name__)


class SpillBuffer(io.BytesIO):
    """A DIMSE message's data set: memory, then a file, then dropped past the cap.

    pynetdicom only ever ``write``s data set fragments into it while receiving; a small data
    set (an MPPS N-CREATE, any C-STORE under ``spill_bytes``) stays an ordinary ``BytesIO``.
    """

    def __init__(self, directory: Path, spill_bytes: int, max_bytes: int) -> None:
        """Args:
        directory: Where a spilled data set's file is made (the spool's ``.incoming``).
        spill_bytes: Bytes kept in memory before spilling to a file.
        max_bytes: Bytes received before the rest is dropped (``oversized``).
        """
        super().__init__()
        self._dir, self._spill, self._max = directory, spill_bytes, max_bytes
        self._file: IO[bytes] | None = None
        self.size = 0
        """Bytes received, kept or not."""
        self.path: Path | None = None
        """The file holding the data set, once spilled."""
        self.oversized = False
        self.error: OSError | None = None
        """Why the file could not be written (a full disk); the rest was dropped."""

    def write(self, data: Any) -> int:
        """Take a fragment: keep it in memory, in the file, or drop it past the cap."""
        n = len(data)
        self.size += n
        if self.oversized or self.error is not None:
            return n
        if self.size > self._max:
            self.oversized = True
            self.discard()
            return n
        if self._file is None and self.size <= self._spill:
            return super().write(data)
        try:
            if self._file is None:
                self._open()
            assert self._file is not None
            self._file.write(data)
        except OSError as exc:
            self.error = exc
            self.discard()
        return n

    def _open(self) -> None:
        self._dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".received-", suffix=".part", dir=self._dir)
        self.path = Path(name)
        self._file = os.fdopen(fd, "wb", buffering=1 << 20)
        with self.getbuffer() as view:
            self._file.write(view)
        self.seek(0)
        self.truncate(0)

    def finish(self) -> Path | None:
        """The whole data set's file, flushed (``None``: it is in memory, or was dropped).

        Raises:
            OSError: The file could not be written completely.
        """
        if self._file is not None:
            self._file.close()
            self._file = None
        return self.path

    def discard(self) -> None:
        """Drop what was kept: close and remove the file, free the memory."""
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass  # the file goes anyway
            self._file = None
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            self.path = None
        self.seek(0)
        self.truncate(0)


class SpillingDimse(DIMSEServiceProvider):
    """pynetdicom's DIMSE provider whose messages receive their data set into a ``SpillBuffer``."""

    spill: tuple[Path, int, int] = (Path(tempfile.gettempdir()), 8 << 20, 4 << 30)
    """``(directory, spill_bytes, max_bytes)``: set per association by ``spill_into``."""

    def receive_primitive(self, primitive: Any) -> None:
        """As pynetdicom's, with a ``SpillBuffer`` for each new message's data set."""
        if self.message is None:
            self.message = DIMSEMessage()
            self.message.data_set = SpillBuffer(*self.spill)
        super().receive_primitive(primitive)

    def send_msg(self, primitive: Any, context_id: int) -> None:
        """As pynetdicom's; a C-STORE response is encoded in one pass
        (``actors.adapters.store_response``) unless a handler wants the ``EVT_DIMSE_SENT``
        message object pynetdicom would build for it."""
        if not self.assoc.get_handlers(evt.EVT_DIMSE_SENT):
            pdata = c_store_rsp_pdata(primitive, context_id, self.maximum_pdu_size)
            if pdata is not None:
                self.dul.send_pdu(pdata)
                return
        super().send_msg(primitive, context_id)

    def discard_partial(self) -> None:
        """The association ended mid-message: remove its partly received file."""
        data = getattr(self.message, "data_set", None)
        if isinstance(data, SpillBuffer):
            data.discard()


def spill_into(assoc: Any, directory: Path, limits: DimseLimitsConfig) -> None:
    """Make an association (as it opens) receive data sets into ``SpillBuffer``s."""
    dimse = getattr(assoc, "dimse", None)
    if type(dimse) is DIMSEServiceProvider:
        dimse.__class__ = SpillingDimse
        dimse.spill = (directory, limits.spill_bytes, limits.max_dataset_bytes)


class AssociationGuard:
    """Per-peer association caps and the total-time deadline of every association."""

    def __init__(self, per_peer: int, deadline_s: float) -> None:
        """Args:
        per_peer: Most live associations from one IP address.
        deadline_s: Most seconds an association may stay open.
        """
        self._per_peer, self._deadline = per_peer, deadline_s
        self._live: dict[Any, tuple[str, float]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._reaper: threading.Thread | None = None
        self.refused = 0
        """Associations closed as they opened: their peer held its cap."""
        self.expired = 0
        """Associations closed at their deadline."""

    def admit(self, assoc: Any, peer: str) -> bool:
        """Count a new association of ``peer`` if its cap allows; else shut its socket down."""
        with self._lock:
            self._prune()
            held = sum(1 for ip, _ in self._live.values() if ip == peer)
            if held < self._per_peer:
                self._live[assoc] = (peer, time.monotonic())
                return True
            self.refused += 1
        logger.warning("association from %s refused: %d open from that address", peer, held)
        _shut(assoc)
        return False

    def _prune(self) -> None:
        for assoc in [a for a in self._live if a.ident is not None and not a.is_alive()]:
            del self._live[assoc]

    def start(self) -> None:
        """Start the reaper thread that enforces the deadline."""
        self._reaper = threading.Thread(target=self._reap_forever, name="association-reaper", daemon=True)
        self._reaper.start()

    def stop(self) -> None:
        """Stop the reaper."""
        self._stop.set()
        if self._reaper is not None:
            self._reaper.join(5.0)

    def _reap_forever(self) -> None:
        interval = min(1.0, self._deadline / 4)
        while not self._stop.wait(interval):
            self.reap(time.monotonic())

    def reap(self, now: float) -> None:
        """Shut down the sockets of associations open longer than the deadline."""
        with self._lock:
            self._prune()
            late = [(a, ip) for a, (ip, at) in self._live.items() if now - at > self._deadline]
            for assoc, _ in late:
                del self._live[assoc]
            self.expired += len(late)
        for assoc, ip in late:
            logger.warning("association from %s open past its %.0f s deadline: closed", ip, self._deadline)
            _shut(assoc)


def _shut(assoc: Any) -> None:
    """Shut an association's socket down: its DUL reads end of stream and ends it."""
    wrapper = getattr(getattr(assoc, "dul", None), "socket", None)
    sock = getattr(wrapper, "socket", None)
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed
