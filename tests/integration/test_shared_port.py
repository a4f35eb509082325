"""Several listener actors on one port (SO_REUSEPORT): the kernel spreads associations over
them, and every study is still held once and reported once."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import ray

from demo.dcmtk import storescu
from demo.orthanc import free_port
from synthetic.synthetic_dicom import make_cxr_study, save_study
from tests.integration.conftest import ledger_of, needs_peers, wait_for_states

pytestmark = needs_peers


def test_two_listeners_share_the_port_and_each_study_is_reported_once(tmp_path, orthanc, make_pipeline):
    port = free_port()
    pipeline, cfg = make_pipeline(orthanc, listener={"instances": 2, "port": port})
    assert {"listener", "listener-1"} <= set(pipeline.actors)
    assert {ray.get(pipeline.actors[k].port.remote()) for k in ("listener", "listener-1")} == {port}
    studies = []
    for seed in range(16):
        datasets = make_cxr_study(700 + seed, patient_id=f"SP{seed:03d}", accession=f"SP{seed}")
        studies.append((str(datasets[0].StudyInstanceUID), save_study(datasets, tmp_path / f"s{seed}")))

    def send(files):
        return storescu(files, "127.0.0.1", port, cfg.listener.ae_title).returncode

    with ThreadPoolExecutor(4) as pool:  # 16 associations from 16 client sockets
        assert list(pool.map(send, [files for _, files in studies])) == [0] * 16
    received = {k: pipeline.health()[k].processed for k in ("listener", "listener-1")}
    assert sum(received.values()) == 16 and min(received.values()) > 0, received  # both took some
    ledger = ledger_of(pipeline)
    uids = [u for u, _ in studies]
    assert wait_for_states(ledger, uids, {"delivered"}, 180), ledger.status.report(0)
    for uid in uids:
        assert len(ledger.jobs.for_study(uid)) == 1
        assert [e.type for e in ledger.audit.events(uid)].count("sr_delivered") == 1
