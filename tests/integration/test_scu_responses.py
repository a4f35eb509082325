"""Each response to an association we request reaches the call that waits for it, also when
pynetdicom's reactor thread is descheduled just past the checkpoint that is meant to pause it.

A fresh-clone CI run lost a count query that way: the assembler's reactor took Orthanc's C-FIND
response off the association's queue ("Received unexpected C-FIND service message"), the query
waited out its DIMSE timeout, and the quiet period completed a study that ``pacs_counts`` should
have (``actors.adapters.query_retrieve.responses_to_the_caller``). Here the race is made certain:
the reactor lingers past its checkpoint as a descheduled thread would, and the caller looks for
each response a little late, so the reactor's read comes first whenever it may read at all.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE
from pynetdicom.association import Association

from actors.adapters.dimse import DimsePacsClient
from actors.adapters.query_retrieve import DimseQueryRetrieve
from core.config import PacsConfig
from demo.dcmtk import storescu
from demo.orthanc import OrthancProcess
from synthetic.synthetic_dicom import make_cxr_study, save_study
from tests.integration.conftest import needs_peers

pytestmark = [pytest.mark.integration, needs_peers]

LINGER_S = 0.03
"""How long the reactor stays past its checkpoint, still counted as paused."""
LATE_S = 0.06
"""How long the caller takes before each read of a response."""


class _LingeringCheckpoint(threading.Event):
    def __init__(self, reactor: Association) -> None:
        super().__init__()
        self._reactor = reactor
        self.set()

    def wait(self, timeout: float | None = None) -> bool:
        passed = super().wait(timeout)
        if threading.current_thread() is self._reactor:
            time.sleep(LINGER_S)  # descheduled between the checkpoint and its next read
        return passed


def _racing(assoc: Association) -> None:
    assoc._reactor_checkpoint = _LingeringCheckpoint(assoc)  # the reactor reads it on every pass
    take = assoc.dimse.get_msg

    def get_msg(block: bool = False) -> Any:
        if block:
            time.sleep(LATE_S)
        return take(block)

    assoc.dimse.get_msg = get_msg


@pytest.fixture
def pacs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    orthanc = OrthancProcess(tmp_path / "pacs", modalities={"pacsai": ("PACSAI", "127.0.0.1", 1)}).start()
    associate = AE.associate

    def racing_associate(self: AE, *args: Any, **kwargs: Any) -> Association:
        assoc = associate(self, *args, **kwargs)
        if assoc.is_established:
            _racing(assoc)
        return assoc

    monkeypatch.setattr(AE, "associate", racing_associate)
    yield orthanc
    orthanc.discard()


def test_count_queries_and_stores_get_their_responses_when_the_reactor_races_the_caller(pacs, tmp_path):
    study = make_cxr_study(seed=41, n_images=3, accession="ACC41")
    assert storescu(save_study(study, tmp_path / "seed"), "127.0.0.1", pacs.dicom_port, pacs.aet, "MOD").returncode == 0
    cfg = PacsConfig(ae_title=pacs.aet, host="127.0.0.1", port=pacs.dicom_port)
    uid = str(study[0].StudyInstanceUID)
    qr = DimseQueryRetrieve(cfg, 2.0)
    for _ in range(5):  # two C-FINDs an association, each with a pending and a final response
        counts = qr.study_counts(uid)
        assert counts.known and counts.study_count == 3
        assert dict(counts.series) == {str(study[0].SeriesInstanceUID): 3}
    more = make_cxr_study(seed=42, n_images=3, accession="ACC42")
    outcomes = DimsePacsClient(cfg).store(more)
    assert [(o.sop_instance_uid, o.status) for o in outcomes] == [(str(d.SOPInstanceUID), 0) for d in more]
    assert qr.study_counts(str(more[0].StudyInstanceUID)).study_count == 3
