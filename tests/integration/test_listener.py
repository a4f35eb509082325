"""The listener against real peers (dcmtk storescu / echoscu, a pynetdicom SCU), without Ray."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification

from actors.adapters import dimse_limits, dimse_wakeups, store_response
from actors.adapters.dimse import Listener
from core.config import ListenerConfig, StorageConfig
from demo.dcmtk import storescu
from state.ledger import open_ledger
from state.sealed_files import read_plain
from synthetic.synthetic_dicom import make_ct_series, save_study
from tests.corruptions import unparseable_part10

pytestmark = pytest.mark.skipif(shutil.which("storescu") is None, reason="dcmtk is not installed")


@pytest.fixture
def listener(tmp_path):
    def start(**overrides):
        cfg = ListenerConfig(port=0, min_free_bytes=overrides.pop("min_free_bytes", 0), **overrides)
        ledger = open_ledger(StorageConfig(var_dir=str(tmp_path)))
        lst = Listener(cfg, tmp_path / "spool", tmp_path / "rejected", ledger, quiet_period_s=60.0)
        lst.start()
        started.append((lst, ledger))
        return lst, ledger

    started: list = []
    yield start
    for lst, ledger in started:
        lst.stop()
        ledger.close()


def _dataset_bytes(raw: bytes) -> bytes:
    """The data set part of a DICOM file (after preamble and file meta)."""
    ds = dcmread(BytesIO(raw), stop_before_pixels=True)
    meta_len = 132 + 12 + int(ds.file_meta.FileMetaInformationGroupLength)
    return raw[meta_len:]


def _send(path: Path, port: int) -> int:
    ds = dcmread(path)
    ae = AE(ae_title="SCU")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACSAI")
    assert assoc.is_established
    try:
        return int(assoc.send_c_store(path).Status)
    finally:
        assoc.release()


def test_echo_and_store_are_durable_and_byte_identical(listener):
    lst, ledger = listener()
    env = dict(os.environ, TCP_NODELAY="1")
    echo = subprocess.run(["echoscu", "-aec", "PACSAI", "127.0.0.1", str(lst.port)], env=env, capture_output=True)
    assert echo.returncode == 0
    src = Path(get_testdata_file("CT_small.dcm"))
    res = storescu([src], "127.0.0.1", lst.port, "PACSAI", propose_own_syntax=True)
    assert res.returncode == 0, res.stderr
    ds = dcmread(src)
    assert ledger.intake.has_instance(ds.SOPInstanceUID)
    [spooled] = (lst.intake.spool_dir / ds.StudyInstanceUID).glob("*.dcm")
    # storescu sends the file's data set as stored, except that dcmtk drops the trailing
    # (FFFC,FFFC) Data Set Trailing Padding this test file ends with.
    sent = _dataset_bytes(src.read_bytes())
    sent = sent[: sent.rfind(b"\xfc\xff\xfc\xff")] if b"\xfc\xff\xfc\xff" in sent[-200:] else sent
    assert _dataset_bytes(read_plain(spooled, ledger.keyring)) == sent  # sealed at rest: opened first
    assert not list(lst.intake.spool_dir.rglob("*.part"))  # no temp file left behind


def test_resent_instance_is_acknowledged_once(listener):
    lst, ledger = listener()
    src = Path(get_testdata_file("CT_small.dcm"))
    for _ in range(3):
        assert storescu([src], "127.0.0.1", lst.port, "PACSAI").returncode == 0
    assert ledger.status.report(time.time()).jobs["receiving"] == 1
    types = [e.type for e in ledger.audit.events()]
    assert types.count("instance_received") == 1 and types.count("instance_duplicate") == 2


def test_concurrent_associations_are_group_committed_and_each_instance_is_durable(listener, tmp_path):
    """Four senders at once: every instance is answered success only once it is spooled and
    recorded; the intake's group commits hold them all (``commits <= items``)."""
    lst, ledger = listener()
    datasets = make_ct_series(seed=5, n_slices=16, rows=32, cols=32)
    files = save_study(datasets, tmp_path / "src")
    with ThreadPoolExecutor(4) as pool:
        runs = list(pool.map(lambda k: storescu(files[k::4], "127.0.0.1", lst.port, "PACSAI"), range(4)))
    assert [r.returncode for r in runs] == [0, 0, 0, 0], [r.stderr[-300:] for r in runs]
    study = str(datasets[0].StudyInstanceUID)
    uids = {str(d.SOPInstanceUID) for d in datasets}
    assert set(ledger.intake.states(study)) == uids
    assert {p.stem for p in (lst.intake.spool_dir / study).glob("*.dcm")} == uids
    assert not list(lst.intake.spool_dir.rglob("*.part"))
    assert [e.type for e in ledger.audit.events(study)].count("instance_received") == 16
    groups = lst.intake.groups
    assert groups.items == 16 and 1 <= groups.commits <= 16
    assert ledger.status.report(time.time()).jobs["receiving"] == 1


def test_what_the_listener_holds_once_started_is_out_of_the_collectors_reach(listener, monkeypatch):
    """Issue 14: the listener process's modules and set-up (~115k objects) no longer sit in
    the collector's oldest generation: a full collection of them took 57-74 ms under
    bench_ingest, a stall of every association; after ``gc.freeze`` at start, 8-12 ms. Once
    per process: a second listener freezes nothing more."""
    import gc

    from actors.adapters import startup_gc

    monkeypatch.setattr(startup_gc, "_done", [])  # as in a fresh process
    gc.unfreeze()  # what other tests in this process froze
    assert gc.get_freeze_count() == 0
    lst, _ = listener()
    frozen = gc.get_freeze_count()
    assert frozen > 10_000
    assert _send(Path(get_testdata_file("CT_small.dcm")), lst.port) == 0  # and it serves
    listener()
    assert gc.get_freeze_count() <= frozen  # (frozen objects freed since are not counted)


def test_disk_below_floor_answers_out_of_resources(listener):
    lst, ledger = listener(min_free_bytes=1 << 62)
    src = Path(get_testdata_file("CT_small.dcm"))
    assert _send(src, lst.port) == 0xA700
    assert storescu([src], "127.0.0.1", lst.port, "PACSAI").returncode != 0
    assert not ledger.intake.has_instance(dcmread(src).SOPInstanceUID)


def test_unparseable_data_set_fails_is_audited_and_the_listener_keeps_serving(listener, tmp_path, monkeypatch):
    from pynetdicom import _config

    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)  # send the file's bytes raw
    lst, ledger = listener()
    bad = unparseable_part10(tmp_path / "bad.dcm")

    ae = AE(ae_title="FUZZ")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", lst.port, ae_title="PACSAI")
    assert assoc.is_established
    status = assoc.send_c_store(bad)
    assoc.release()
    assert status.Status == 0xC000
    rejected = [e for e in ledger.audit.events() if e.type == "instance_rejected"]
    assert rejected and "cannot be parsed" in rejected[0].detail["reason"]
    assert list((tmp_path / "rejected").glob("*.dcm"))  # kept for inspection
    src = Path(get_testdata_file("CT_small.dcm"))
    assert storescu([src], "127.0.0.1", lst.port, "PACSAI").returncode == 0  # still serving


def test_wrong_called_ae_title_is_refused(listener):
    lst, _ = listener()
    res = storescu([Path(get_testdata_file("CT_small.dcm"))], "127.0.0.1", lst.port, "NOT_US")
    assert res.returncode != 0


def test_listener_processes_of_one_port_even_their_associations_out(tmp_path):
    """Two listeners sharing a port (``instances`` 2, as two processes do). The first holds
    four associations before the second starts; of the next four, whichever the kernel hands
    each to, the busier passes it to the idler (``actors.adapters.port_sharing``): 4:4 held
    (without it, 4:4 only if the kernel sent all four to the second, 1 in 16). Every instance
    sent over them is answered, durable and recorded once."""
    from demo.orthanc import free_port

    port = free_port()
    ledger = open_ledger(StorageConfig(var_dir=str(tmp_path)))
    cfg = ListenerConfig(port=port, min_free_bytes=0, instances=2)
    pair = [Listener(cfg, tmp_path / "spool", tmp_path / "rejected", ledger, quiet_period_s=60.0) for _ in range(2)]
    datasets = make_ct_series(seed=6, n_slices=16, rows=32, cols=32)
    files = save_study(datasets, tmp_path / "src")
    ae = AE(ae_title="SCU")
    ae.add_requested_context(datasets[0].SOPClassUID, datasets[0].file_meta.TransferSyntaxUID)
    assocs = []
    try:
        for lst in pair:
            lst.start()
            for _ in range(4):  # held open together: the split is of live associations
                assocs.append(ae.associate("127.0.0.1", port, ae_title="PACSAI"))
                assert assocs[-1].is_established
        for k, path in enumerate(files):
            assert assocs[k % 8].send_c_store(path).Status == 0x0000
        assert [lst.received for lst in pair] == [8, 8]
        assert [lst.sharing.passed if lst.sharing else -1 for lst in pair] == [pair[1].sharing.taken, 0]
    finally:
        for assoc in assocs:
            assoc.release()
        for lst in pair:
            lst.stop()
    study = str(datasets[0].StudyInstanceUID)
    assert set(ledger.intake.states(study)) == {str(d.SOPInstanceUID) for d in datasets}
    assert [e.type for e in ledger.audit.events(study)].count("instance_received") == 16
    ledger.close()


def _acceptor_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("AcceptorThread")]


def _until(done, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_an_idle_association_waits_for_work_instead_of_polling(listener, monkeypatch):
    """Issue 14: pynetdicom's two loops per association slept 1 ms a pass, ~2,000 wakes a second
    each taking the GIL from the instances being made durable. Our listener's loops wait for
    work (``actors.adapters.dimse_wakeups``): idle, each wakes about once per ``IDLE_S``; the
    association still answers at once (its C-STORE response encoded in one pass, without
    pynetdicom's logging handlers), and ends with its connection."""
    waits = {"dul": 0, "association": 0}

    def counted(name: str, wait):
        def counting(*args):
            waits[name] += 1
            return wait(*args)

        return counting

    monkeypatch.setattr(dimse_wakeups, "_dul_idle", counted("dul", dimse_wakeups._dul_idle))
    monkeypatch.setattr(dimse_wakeups, "_association_idle", counted("association", dimse_wakeups._association_idle))
    answered: list[tuple[str, bool]] = []  # (response, encoded in one pass: actors.adapters.store_response)

    def one_pass(primitive, context_id, max_pdu):
        pdata = store_response.c_store_rsp_pdata(primitive, context_id, max_pdu)
        answered.append((type(primitive).__name__, pdata is not None))
        return pdata

    monkeypatch.setattr(dimse_limits, "c_store_rsp_pdata", one_pass)
    lst, ledger = listener()
    src = Path(get_testdata_file("CT_small.dcm"))
    ds = dcmread(src)
    ae = AE(ae_title="SCU")
    ae.add_requested_context(Verification)
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", lst.port, ae_title="PACSAI")
    assert assoc.is_established
    try:
        assert assoc.send_c_echo().Status == 0
        before = dict(waits)
        time.sleep(1.0)
        idle = {k: waits[k] - before[k] for k in waits}
        most = 2 / dimse_wakeups.IDLE_S  # pynetdicom's own loops: ~1,000 each in that second
        assert all(1 <= n <= most for n in idle.values()), idle
        assert assoc.send_c_store(src).Status == 0
        assert ledger.intake.has_instance(ds.SOPInstanceUID)
        assert answered == [("C_ECHO", False), ("C_STORE", True)]
        [ours] = lst._server.active_associations  # pynetdicom's logging handlers are not bound to it
        assert not ours.get_handlers(evt.EVT_DIMSE_RECV) and not ours.get_handlers(evt.EVT_PDU_SENT)
    finally:
        assoc.release()
    assert _until(lambda: not _acceptor_threads())


def test_released_aborted_dropped_and_timed_out_associations_all_end_and_leave_no_descriptor(listener):
    """Every way an association ends still ends the listener's threads for it, and the eventfd
    each one waited on is closed with its connection (before the close at EVT_CONN_CLOSE, a
    third of aborted associations left theirs open until the collector ran)."""
    lst, _ = listener(network_timeout_s=0.5)
    ae = AE(ae_title="SCU")
    ae.add_requested_context(Verification)

    def associate():
        assoc = ae.associate("127.0.0.1", lst.port, ae_title="PACSAI")
        assert assoc.is_established and assoc.send_c_echo().Status == 0
        return assoc

    associate().release()
    assert _until(lambda: not _acceptor_threads())
    descriptors = len(os.listdir("/proc/self/fd"))
    for k in range(20):
        assoc = associate()
        assoc.release() if k % 2 else assoc.abort()
    with socket.create_connection(("127.0.0.1", lst.port)):
        pass  # dropped before it associated
    idle = associate()  # the listener's network timeout (0.5 s) ends it
    assert _until(lambda: not idle.is_alive())
    assert idle.is_aborted or idle.is_released
    assert _until(lambda: not _acceptor_threads())
    assert len(os.listdir("/proc/self/fd")) <= descriptors + 2
