"""Results delivered by STOW-RS (pacs.deliver_by: dicomweb) to a real Orthanc with its DICOMweb
plugin; the STOW-RS client against Orthanc and against a scripted server; Orthanc's own
DICOMweb client settings (dicomweb_servers)."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import Comprehensive3DSRStorage, ParametricMapStorage

from actors.adapters.dicomweb import DicomwebPacsClient
from core.api_config import DicomwebDestinationConfig
from core.errors import ConfigError, DependencyUnavailable
from core.results import DeliveryState
from demo.orthanc import OrthancProcess, dicomweb_plugin, free_port
from state.sealed_files import dcmread_plain
from synthetic.synthetic_dicom import make_cxr_study, save_study
from tests.integration import conftest
from tests.integration.conftest import ledger_of, needs_peers, pacs_outputs, send_files, wait_for_states

pytestmark = [
    pytest.mark.integration,
    needs_peers,
    pytest.mark.skipif(dicomweb_plugin() is None, reason="Debian orthanc-dicomweb is installed by `make test`"),
]


@pytest.fixture
def orthanc_web(tmp_path: Path) -> Iterator[OrthancProcess]:
    """A private Orthanc with its DICOMweb plugin: the PACS takes our results by STOW-RS."""
    pacs = OrthancProcess(tmp_path / "orthanc-web", dicomweb=True).start()
    yield pacs
    pacs.discard()


@pytest.fixture
def dicomweb_pipeline(make_pipeline: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``start(pacs)``: a pipeline delivering to ``pacs`` by STOW-RS only (its DIMSE PACS address
    is a closed port). The ``pacs`` section is set in the base config: ``make_pipeline``'s own
    ``pacs`` argument is the Orthanc process, so it cannot take a ``pacs=`` override."""
    base = conftest.base_config

    def start(pacs: OrthancProcess) -> tuple[Any, Any]:
        def raw_config() -> dict[str, Any]:
            raw = base()
            raw["pacs"].update(
                port=free_port(),
                deliver_by="dicomweb",
                dicomweb={"url": pacs.dicomweb_url, "allow_plaintext": True, "timeout_s": 10},
            )
            return raw

        monkeypatch.setattr(conftest, "base_config", raw_config)
        return make_pipeline()

    return start


def _study(tmp_path: Path, seed: int) -> tuple[str, list[Path]]:
    datasets = make_cxr_study(seed, frozenset({"effusion"}), patient_id=f"P{seed}", accession=f"A{seed}")
    return str(datasets[0].StudyInstanceUID), save_study(datasets, tmp_path / f"in{seed}")


def _origins(pacs: OrthancProcess, study_uid: str) -> set[str]:
    """How each stored instance reached Orthanc (``Plugins``: the DICOMweb plugin's STOW-RS;
    ``DicomProtocol``: C-STORE)."""
    return {
        httpx.get(f"{pacs.url}/instances/{meta['ID']}/metadata/Origin", timeout=10).text
        for meta in pacs.instances_of_study(study_uid)
    }


def _delivered_once(ledger: Any, study_uid: str, job_id: int) -> list[Any]:
    """Every outbox item of the job is delivered, and audited as delivered exactly once."""
    items = ledger.outbox.items(job_id)
    assert items and {i.state for i in items} == {DeliveryState.DELIVERED}
    events = Counter(e.sop_instance_uid for e in ledger.audit.events(study_uid) if e.type == "sr_delivered")
    assert events == Counter({i.item.sop_instance_uid: 1 for i in items})
    return items


def test_sr_and_parametric_maps_reach_the_pacs_by_stow_rs_audited_once(tmp_path, orthanc_web, dicomweb_pipeline):
    pipeline, cfg = dicomweb_pipeline(orthanc_web)
    study_uid, files = _study(tmp_path, 901)
    send_files(files, pipeline, cfg)
    ledger = ledger_of(pipeline)
    assert wait_for_states(ledger, [study_uid], {"delivered"}, timeout_s=120), ledger.status.report(time.time())

    [job] = ledger.jobs.for_study(study_uid)
    items = _delivered_once(ledger, study_uid, job.job_id)
    outputs = pacs_outputs(orthanc_web, study_uid)
    assert len(outputs[Comprehensive3DSRStorage]) == 1 and len(outputs[ParametricMapStorage]) >= 1
    assert {str(ds.SOPInstanceUID) for v in outputs.values() for ds in v} == {i.item.sop_instance_uid for i in items}
    for ds in (d for v in outputs.values() for d in v):  # byte for byte what we wrote, data set included
        [item] = [i.item for i in items if i.item.sop_instance_uid == str(ds.SOPInstanceUID)]
        assert ds == dcmread_plain(item.path, ledger.keyring)
    assert _origins(orthanc_web, study_uid) == {"Plugins"}  # STOW-RS, not C-STORE
    statuses = {e.detail["status"] for e in ledger.audit.events(study_uid) if e.type == "sr_delivered"}
    assert statuses == {"0x0000"}


def test_pacs_down_while_results_wait_delivers_each_once_after_it_returns(tmp_path, orthanc_web, dicomweb_pipeline):
    pipeline, cfg = dicomweb_pipeline(orthanc_web)
    orthanc_web.stop()
    study_uid, files = _study(tmp_path, 902)
    send_files(files, pipeline, cfg)
    ledger = ledger_of(pipeline)
    assert wait_for_states(ledger, [study_uid], {"written"}, timeout_s=90), ledger.status.report(time.time())
    time.sleep(2.0)  # several delivery rounds against the stopped server
    [job] = ledger.jobs.for_study(study_uid)
    assert job.state.value == "written" and "pacs unavailable" in job.reason, job.reason
    pending = ledger.outbox.items(job.job_id, DeliveryState.PENDING)
    assert [i.item.kind for i in pending].count("sr") == 1 and len(pending) >= 2  # the SR and its maps
    status = ledger.status.report(time.time())
    assert status.outbox_pending == len(pending) and status.jobs["dead"] == 0
    assert not [e for e in ledger.audit.events(study_uid) if e.type == "sr_delivered"]

    orthanc_web.start()
    assert wait_for_states(ledger, [study_uid], {"delivered"}, timeout_s=90), ledger.status.report(time.time())
    _delivered_once(ledger, study_uid, job.job_id)
    outputs = pacs_outputs(orthanc_web, study_uid)
    assert len(outputs[Comprehensive3DSRStorage]) == 1
    assert sum(len(v) for v in outputs.values()) == len(pending)


def test_client_stores_a_large_instance_and_a_resend_is_stored_again(tmp_path, orthanc_web):
    """Over 1 MB goes chunked (dicomweb-client); a re-send of the same instance (a retry after
    an answer we never read) is listed as stored again, so it cannot block delivery."""
    [big] = make_cxr_study(903, size=1024)  # 2 MB of pixels
    big.save_as(tmp_path / "big.dcm", enforce_file_format=True)
    ds = dcmread(tmp_path / "big.dcm")
    client = DicomwebPacsClient(DicomwebDestinationConfig(url=orthanc_web.dicomweb_url, allow_plaintext=True))
    for _ in range(2):
        [outcome] = client.store([ds])
        assert outcome.ok and outcome.status == 0x0000 and outcome.sop_instance_uid == str(ds.SOPInstanceUID)
    assert orthanc_web.statistics()["CountInstances"] == 1
    assert client.store([]) == []


def test_client_waits_out_a_stopped_server(tmp_path):
    client = DicomwebPacsClient(
        DicomwebDestinationConfig(url=f"http://127.0.0.1:{free_port()}/dicom-web", allow_plaintext=True, timeout_s=2)
    )
    [ds] = make_cxr_study(904)
    with pytest.raises(DependencyUnavailable, match="pacs unavailable: STOW-RS to"):
        client.store([ds])


class ScriptedStowServer:
    """A STOW-RS origin server that answers what the test scripts and keeps what it was sent."""

    def __init__(self) -> None:
        self.answer: tuple[int, dict[str, Any] | bytes | None] = (200, None)
        """Status and body: a DICOM JSON object, raw bytes, or none."""
        self.requests: list[dict[str, str]] = []
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                scripted.requests.append({"path": self.path, **{k.lower(): v for k, v in self.headers.items()}})
                status, body = scripted.answer
                data = body if isinstance(body, bytes) else json.dumps(body).encode() if body is not None else b""
                self.send_response(status)
                self.send_header("Content-Type", "application/dicom+json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/dicom-web"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def stow_server() -> Iterator[ScriptedStowServer]:
    server = ScriptedStowServer()
    yield server
    server.stop()


def _response(stored: list[str], failed: dict[str, int]) -> dict[str, Any]:
    ds = Dataset()
    ds.ReferencedSOPSequence = [_ref(uid) for uid in stored]
    ds.FailedSOPSequence = [_ref(uid, FailureReason=reason) for uid, reason in failed.items()]
    return ds.to_json_dict()


def _ref(uid: str, **attrs: Any) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.34"
    item.ReferencedSOPInstanceUID = uid
    for keyword, value in attrs.items():
        setattr(item, keyword, value)
    return item


def test_client_sends_the_token_and_reads_each_answer(stow_server, monkeypatch):
    monkeypatch.setenv("PACSAI_TEST_STOW_TOKEN", "s3cret-token")
    cfg = DicomwebDestinationConfig(url=stow_server.url, token_env="PACSAI_TEST_STOW_TOKEN", allow_plaintext=True)
    client = DicomwebPacsClient(cfg)
    datasets = make_cxr_study(905, n_images=2)
    a, b = (str(d.SOPInstanceUID) for d in datasets)

    stow_server.answer = (202, _response([a], {b: 0xA700}))  # a media type with a charset, too
    assert [(o.ok, o.status) for o in client.store(datasets)] == [(True, 0x0000), (False, 0xA700)]
    sent = stow_server.requests[-1]
    assert sent["path"] == "/dicom-web/studies" and sent["authorization"] == "Bearer s3cret-token"
    assert sent["content-type"].startswith("multipart/related") and sent["accept"] == "application/dicom+json"

    stow_server.answer = (409, _response([], {a: 0xA900, b: 0xC000}))
    assert [o.status for o in client.store(datasets)] == [0xA900, 0xC000]
    stow_server.answer = (200, None)  # empty body: nothing is confirmed, so nothing is delivered
    assert [o.ok for o in client.store(datasets)] == [False, False]
    for status in (503, 429):
        stow_server.answer = (status, None)
        with pytest.raises(DependencyUnavailable, match=f"HTTP {status}"):
            client.store(datasets)
    assert len(stow_server.requests) == 5  # dicomweb-client's own retries are off
    # A 2xx body that is not a DICOM JSON object, or nested too deep for json: nothing is
    # confirmed, nothing raised (a RecursionError went out of store() to the delivery loop).
    for body in (b"[" * 100_000, b'{"a":' * 100_000, b"[1]", b"null", b'[{"00081199": {"vr": "SQ", "Value": [7]}}]'):
        stow_server.answer = (200, body)
        assert [o.ok for o in client.store(datasets)] == [False, False], body[:12]


def test_a_missing_token_variable_fails_at_start(monkeypatch):
    monkeypatch.delenv("PACSAI_TEST_STOW_TOKEN", raising=False)
    cfg = DicomwebDestinationConfig(url="https://pacs.example/dicom-web", token_env="PACSAI_TEST_STOW_TOKEN")
    with pytest.raises(ConfigError, match="PACSAI_TEST_STOW_TOKEN: not set"):
        DicomwebPacsClient(cfg)


def test_orthanc_takes_dicomweb_servers_and_sends_to_them(tmp_path, orthanc_web):
    """``dicomweb_servers`` becomes the plugin's ``Servers``; ``stow_to`` sends by STOW-RS (here
    to the other Orthanc) and waits for the answer."""
    sender = OrthancProcess(
        tmp_path / "sender",
        dicomweb=True,
        dicomweb_servers={
            "pacs": orthanc_web.dicomweb_url,
            "closed": {"Url": f"http://127.0.0.1:{free_port()}/dicom-web", "HttpHeaders": {"X-Site": "t"}},
        },
    ).start()
    try:
        assert sorted(httpx.get(f"{sender.dicomweb_url}/servers", timeout=10).json()) == ["closed", "pacs"]
        [ds] = make_cxr_study(906)
        path = tmp_path / "one.dcm"
        ds.save_as(path, enforce_file_format=True)
        stored = httpx.post(f"{sender.url}/instances", content=path.read_bytes(), timeout=30).json()
        answer = sender.stow_to("pacs", [stored["ParentStudy"]])
        assert answer.status_code == 200, answer.text
        assert [
            str(m["MainDicomTags"]["SOPInstanceUID"]) for m in orthanc_web.instances_of_study(ds.StudyInstanceUID)
        ] == [str(ds.SOPInstanceUID)]
        assert sender.stow_to("closed", [stored["ID"]]).status_code >= 400
    finally:
        sender.discard()


def test_dicomweb_servers_need_the_plugin(tmp_path):
    with pytest.raises(ValueError, match="dicomweb_servers"):
        OrthancProcess(tmp_path / "x", dicomweb_servers={"a": "http://127.0.0.1:1/dicom-web"})
