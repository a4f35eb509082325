"""The listener's associations wait for work instead of polling for it.

pynetdicom (3.0.x) runs two threads per association, each a polling loop: the DUL reactor
sleeps ``_run_loop_delay`` (1 ms) whenever a pass found nothing to do, and the acceptor's
association reactor sleeps 1 ms before every pass. An idle association wakes ~2,000 times a
second, and each wake takes the GIL from whatever thread is making an instance durable; a busy
one waits up to 1 ms at each hand-over (the request's last PDU to the handler, the handler's
response to the socket). py-spy under ``bench_ingest.py`` put the loops themselves (the select
of ``AssociationSocket.ready``, the queue peeks, the sleeps) at ~15 % of the listener's
GIL-holding samples.

Here those two sleeps (and only those: each loop's own delay, in its own thread) become waits
that end as soon as there is something to do:

- the DUL thread ``select``s on the association's socket and an ``eventfd`` that every put
  into its ``to_provider_queue`` / ``event_queue`` signals (a response to send, a local abort);
  a TLS socket with decrypted bytes already buffered does not wait at all;
- the association thread waits on an ``Event`` set by every put into the DIMSE message queue
  and the DUL's ``to_user_queue`` (a complete request, a peer's release or abort), and by the
  connection closing.

Both waits are bounded (``IDLE_S``): what the loops check without a queue to signal it (the
network idle timer, the ARTIM timer, ``kill`` from another thread) is seen within that time,
as pynetdicom's own checks are only as prompt as its loops. The loops themselves are
pynetdicom's, unchanged: the ``time`` module their modules use is replaced by
``_ReactorTime``, which defers to ``time`` everywhere except in the one ``sleep`` call of
each loop, in a thread this module set up (every other association in the process, an SCU's
included, sleeps as before).

Measured, ``bench_ingest.py --senders 1 --n 300 --rounds 3``, interleaved with the tree before:
our listener's C-STORE p50 7.4-7.6 -> 6.0-6.6 ms, its CPU per instance 6.4-6.6 -> 5.7-6.0 ms,
``ratio`` 0.67-0.75 -> 0.80-0.84. With four senders no change outside the noise: there the
listener is bound by the GIL-held work of its instances, not by hand-overs.
"""

from __future__ import annotations

import os
import queue
import select
import ssl
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from pynetdicom import association as _association_module
from pynetdicom import dul as _dul_module

__all__ = ["IDLE_S", "REACTOR_DELAY_S", "connection_closed", "install", "wait_for_work"]

IDLE_S = 0.02
"""Longest wait of an idle loop: how late a timer or a ``kill`` from another thread is seen."""

REACTOR_DELAY_S = 0.001
"""The association reactor's per-pass ``time.sleep`` (pynetdicom 3.0.x ``Association._run_reactor``)."""

_DUL_IDLE = "_pacsai_dul_idle"
_ASSOC_IDLE = "_pacsai_assoc_idle"


class _ReactorTime:
    """Stands for the ``time`` module inside ``pynetdicom.association`` / ``pynetdicom.dul``:
    ``sleep`` in a thread carrying ``attr`` (set by ``wait_for_work``) calls that thread's wait
    instead; everything else is ``time``'s."""

    def __init__(self, attr: str) -> None:
        self._attr = attr

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        idle: Callable[[float], bool] | None = getattr(threading.current_thread(), self._attr, None)
        if idle is None or not idle(seconds):
            time.sleep(seconds)


_install_lock = threading.Lock()


def install() -> None:
    """Put ``_ReactorTime`` into pynetdicom's association and DUL modules (once per process)."""
    with _install_lock:
        if not isinstance(_dul_module.time, _ReactorTime):
            _dul_module.time = _ReactorTime(_DUL_IDLE)  # type: ignore[assignment]
        if not isinstance(_association_module.time, _ReactorTime):
            _association_module.time = _ReactorTime(_ASSOC_IDLE)  # type: ignore[assignment]


class _WakingQueue(queue.Queue):  # type: ignore[type-arg]
    """A ``queue.Queue`` that calls ``wake`` after every put; it starts with what ``replacing``
    holds (no thread uses that one yet)."""

    def __init__(self, wake: Callable[[], None], replacing: queue.Queue) -> None:  # type: ignore[type-arg]
        super().__init__()
        self._wake = wake
        self.queue.extend(replacing.queue)

    def _put(self, item: Any) -> None:
        super()._put(item)
        self._wake()


class _Doorbell:
    """An ``eventfd`` the DUL thread ``select``s on beside its socket; ``ring`` from any thread.
    Closed as the connection closes (``connection_closed``; the DUL's loop sleeps as
    pynetdicom's until it is stopped), else when the DUL is collected: a ring after that does
    nothing (never a write to a reused descriptor number)."""

    def __init__(self) -> None:
        self._fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._lock = threading.Lock()

    def fileno(self) -> int:
        return self._fd

    def ring(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.eventfd_write(self._fd, 1)

    def answer(self) -> None:
        """Reset it (after a wait)."""
        with self._lock:
            if self._fd >= 0:
                try:
                    os.eventfd_read(self._fd)
                except BlockingIOError:  # nobody rang
                    pass

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    @property
    def closed(self) -> bool:
        return self._fd < 0


def wait_for_work(assoc: Any) -> bool:
    """Make an acceptor association's two loops wait for work (call at ``EVT_CONN_OPEN``,
    before its threads start). Returns whether it did: not when the association's queues are
    not pynetdicom's plain ones (someone else has set them up). What they hold (the acceptor's
    "connection open" event) moves to their replacements."""
    dul, dimse = getattr(assoc, "dul", None), getattr(assoc, "dimse", None)
    if dul is None or dimse is None or dul.is_alive():
        return False
    queues = (dimse.msg_queue, dul.to_user_queue, dul.to_provider_queue, dul.event_queue)
    if any(type(q) is not queue.Queue for q in queues):
        return False
    install()
    work, bell = threading.Event(), _Doorbell()
    weakref.finalize(dul, bell.close)
    dimse.msg_queue = _WakingQueue(work.set, dimse.msg_queue)
    dul.to_user_queue = _WakingQueue(work.set, dul.to_user_queue)
    dul.to_provider_queue = _WakingQueue(bell.ring, dul.to_provider_queue)
    dul.event_queue = _WakingQueue(bell.ring, dul.event_queue)
    assoc._pacsai_work, assoc._pacsai_bell = work, bell
    setattr(dul, _DUL_IDLE, lambda seconds: _dul_idle(dul, bell, seconds))
    setattr(assoc, _ASSOC_IDLE, lambda seconds: _association_idle(assoc, work, seconds))
    return True


def connection_closed(assoc: Any) -> None:
    """``EVT_CONN_CLOSE``: wake the association's reactor (it ends once it sees the DUL gone)
    and close the DUL's doorbell."""
    work, bell = getattr(assoc, "_pacsai_work", None), getattr(assoc, "_pacsai_bell", None)
    if bell is not None:
        bell.close()
    if work is not None:
        work.set()


def _dul_idle(dul: Any, bell: _Doorbell, seconds: float) -> bool:
    """The DUL reactor's idle sleep (in its thread): until the socket is readable or a queue
    was put to. ``False``: not this wait (pynetdicom's own sleep follows)."""
    if seconds != dul._run_loop_delay or bell.closed:
        return False
    sock = getattr(dul.socket, "socket", None)
    if sock is None or sock.fileno() < 0:
        return False
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True  # decrypted bytes are buffered already: select cannot see them
    if dul.to_provider_queue.qsize() or dul.event_queue.qsize():
        return True
    try:
        select.select([sock, bell], [], [], IDLE_S)
    except (OSError, ValueError):  # the socket closed meanwhile
        return False
    bell.answer()
    return True


def _association_idle(assoc: Any, work: threading.Event, seconds: float) -> bool:
    """The association reactor's per-pass sleep: until a message, a release or an abort is
    queued for it, or the connection closed."""
    if seconds != REACTOR_DELAY_S:
        return False
    work.clear()  # before looking: a put from now on sets it again
    if assoc._kill or assoc.dimse.msg_queue.qsize() or not assoc.dul.is_alive():
        return True  # (a release or an abort queued before the clear is seen at the next wake)
    work.wait(IDLE_S)
    return True
