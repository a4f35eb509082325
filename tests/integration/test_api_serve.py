"""The API for real: Ray Serve's HTTPS proxy in front of the FastAPI ingress, a real pipeline
behind it, dicomweb-client and Orthanc's DICOMweb plugin as the peers.

- dicomweb-client stores a study by STOW-RS over TLS; the pipeline runs it; QIDO-RS finds our
  SR and Parametric Map and WADO-RS returns them (and their metadata).
- Orthanc sends a study to us by STOW-RS (its DicomWeb ``Servers`` config, bearer token, our
  CA) and gets our results back.
- The door is locked: health checks answer anyone, nothing else without a token; TLS below 1.2
  is refused; a 2 GB declared body is answered 413 at once and the service keeps serving.
"""

from __future__ import annotations

import socket
import ssl
import time
from pathlib import Path

import httpx
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.uid import generate_uid

from api.auth import issue_token
from demo.orthanc import OrthancProcess, dicomweb_plugin
from synthetic.synthetic_dicom import make_cxr_study, save_study
from tests.integration.conftest import api_config, ledger_of, needs_peers, wait_for_states
from tests.integration.test_results_to_pacs import _submit

pytestmark = [
    pytest.mark.integration,
    needs_peers,
    pytest.mark.skipif(dicomweb_plugin() is None, reason="Debian orthanc-dicomweb is installed by `make test`"),
]

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR


def _client(base: str, token: str, ca: str) -> DICOMwebClient:
    session = requests.Session()
    session.verify = ca
    session.trust_env = False  # else REQUESTS_CA_BUNDLE from the environment overrides verify
    return DICOMwebClient(f"{base}/dicomweb", session=session, headers={"Authorization": f"Bearer {token}"})


def _wait(predicate, timeout_s: float = 120.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.5)
    return bool(predicate())


def _requests(ledger, study: str) -> list:
    return [e for e in ledger.audit.events(study) if str(e.type) == "api_request"]


@pytest.fixture
def pacs_with_dicomweb(tmp_path: Path, api_section):
    """Orthanc as the PACS, its DICOMweb plugin loaded, our API configured as a DICOMweb server
    it may send to (the token is set once the pipeline issued one; see ``stow_from_orthanc``)."""
    holder: dict[str, OrthancProcess] = {}

    def start(token: str) -> OrthancProcess:
        base = f"https://127.0.0.1:{api_section['port']}/dicomweb/"
        pacs = OrthancProcess(
            tmp_path / "source-orthanc",
            dicomweb=True,
            dicomweb_servers={"bridge": {"Url": base, "HttpHeaders": {"Authorization": f"Bearer {token}"}}},
            options={"HttpsCACertificates": api_section["ca_for_clients"], "HttpsVerifyPeers": True},
        ).start()
        holder["pacs"] = pacs
        return pacs

    yield start
    if "pacs" in holder:
        holder["pacs"].discard()


def test_stow_qido_wado_over_https_through_serve(tmp_path, make_pipeline, orthanc, api_section):
    pipeline, cfg = make_pipeline(orthanc, api=api_config(api_section))
    ledger = ledger_of(pipeline)
    base, ca = pipeline.api_url(), api_section["ca_for_clients"]
    assert base.startswith("https://")
    token, _ = issue_token(ledger.tokens, "viewer", ["ingest", "read"], None, "test", time.time())

    with httpx.Client(verify=ca, timeout=30) as http:
        assert http.get(f"{base}/healthz").json() == {"status": "ok"}
        assert http.get(f"{base}/readyz").status_code == 200
        denied = http.get(f"{base}/api/v1/status")
        assert denied.status_code == 401 and denied.headers["content-type"] == "application/problem+json"
        assert "Bearer" in denied.headers["www-authenticate"]
        assert http.get(f"{base}/openapi.json").json()["openapi"].startswith("3.1")

    datasets = make_cxr_study(seed=31, n_images=1, patient_id="ZQ31Z", accession="A31")
    study = str(datasets[0].StudyInstanceUID)
    client = _client(base, token, ca)
    answer = client.store_instances(datasets)
    assert [str(i.ReferencedSOPInstanceUID) for i in answer.ReferencedSOPSequence] == [
        str(d.SOPInstanceUID) for d in datasets
    ]
    assert wait_for_states(ledger, [study], {"delivered"}, timeout_s=120), ledger.status.report(time.time())

    [found] = client.search_for_studies(search_filters={"StudyInstanceUID": study})
    assert found["0020000D"]["Value"] == [study]
    assert set(found["00080061"]["Value"]) >= {"SR"}  # ModalitiesInStudy: our objects
    assert client.search_for_studies(search_filters={"PatientID": "ZQ31*"})  # wildcard
    assert not client.search_for_studies(search_filters={"PatientID": "NOBODY"})
    ours = ledger.outbox.published(study_uid=study)
    assert ours and SR_CLASS in {r.sop_class_uid for r in ours}
    series = client.search_for_series(study)
    assert sorted(s["0020000E"]["Value"][0] for s in series) == sorted({r.series_uid for r in ours})
    objects = client.retrieve_study(study)
    assert sorted(str(o.SOPInstanceUID) for o in objects) == sorted(r.sop_instance_uid for r in ours)
    assert all(str(o.StudyInstanceUID) == study for o in objects)
    metadata = client.retrieve_study_metadata(study)
    assert len(metadata) == len(objects) and all("7FE00010" not in m for m in metadata)
    [sr] = [o for o in objects if str(o.SOPClassUID) == SR_CLASS]
    one = client.retrieve_instance(study, str(sr.SeriesInstanceUID), str(sr.SOPInstanceUID))
    assert one.SOPInstanceUID == sr.SOPInstanceUID

    # A reader's verified SR is one of ours too: found and read beside the AI's, in its own series.
    submission = _submit(ledger, str(sr.SOPInstanceUID), "rita")
    delivered = lambda: ledger.clinical.verified_submission(submission).state.value == "delivered"  # noqa: E731
    assert _wait(delivered, 60)
    verified_uid = ledger.clinical.verified_submission(submission).verified_uid
    assert verified_uid in {i["00080018"]["Value"][0] for i in client.search_for_instances(study)}
    [verified] = [o for o in client.retrieve_study(study) if str(o.SOPInstanceUID) == verified_uid]
    assert verified.VerificationFlag == "VERIFIED" and verified.SOPClassUID == sr.SOPClassUID
    assert verified.SeriesInstanceUID != sr.SeriesInstanceUID
    assert str(verified.SeriesInstanceUID) in {s["0020000E"]["Value"][0] for s in client.search_for_series(study)}
    again = client.retrieve_instance(study, str(verified.SeriesInstanceUID), verified_uid)
    assert again.SOPInstanceUID == verified_uid
    meta = client.retrieve_instance_metadata(study, str(verified.SeriesInstanceUID), verified_uid)
    assert meta["0040A493"]["Value"] == ["VERIFIED"]  # Verification Flag
    assert _wait(lambda: len(_requests(ledger, study)) >= 3, 10)  # reads are audited in batches
    events = _requests(ledger, study)
    assert {e.actor for e in events} == {"token:viewer"}  # who, never the token
    assert {e.detail["method"] for e in events} == {"GET"} and all(e.detail["status"] == 200 for e in events)
    assert all(token not in str(e.detail) for e in events)


def test_orthanc_sends_a_study_to_us_by_stow_rs(tmp_path, make_pipeline, orthanc, api_section, pacs_with_dicomweb):
    pipeline, cfg = make_pipeline(orthanc, api=api_config(api_section))
    ledger = ledger_of(pipeline)
    token, _ = issue_token(ledger.tokens, "orthanc", ["ingest"], None, "test", time.time())
    source = pacs_with_dicomweb(token)
    assert "bridge" in httpx.get(f"{source.url}/dicom-web/servers").json()
    datasets = make_cxr_study(seed=32, n_images=2, patient_id="ZQ32Z", accession="A32")
    files = save_study(datasets, tmp_path / "in")
    ids = [httpx.post(f"{source.url}/instances", content=f.read_bytes()).json()["ParentStudy"] for f in files]
    answer = source.stow_to("bridge", [ids[0]])
    assert answer is not None
    study = str(datasets[0].StudyInstanceUID)
    assert wait_for_states(ledger, [study], {"delivered"}, timeout_s=120), ledger.status.report(time.time())
    assert sorted(ledger.intake.states(study)) == sorted(str(d.SOPInstanceUID) for d in datasets)
    received = [e for e in ledger.audit.events(study) if str(e.type) == "instance_received"]
    assert {e.actor for e in received} == {"stow-rs:token:orthanc"}
    assert orthanc.instances_of_study(study, modality="SR")  # our results reached the PACS


def test_the_door_is_locked_and_keeps_serving(tmp_path, make_pipeline, api_section):
    pipeline, cfg = make_pipeline(api=api_config(api_section))
    ledger = ledger_of(pipeline)
    base, ca = pipeline.api_url(), api_section["ca_for_clients"]
    reader, _ = issue_token(ledger.tokens, "reader", ["read"], None, "test", time.time())
    port = api_section["port"]

    old = ssl.create_default_context(cafile=ca)
    old.minimum_version = ssl.TLSVersion.TLSv1
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises((ssl.SSLError, OSError)):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with old.wrap_socket(raw, server_hostname="127.0.0.1"):
                pass
    modern = ssl.create_default_context(cafile=ca)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with modern.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
            boundary = generate_uid().replace(".", "")
            tls.sendall(
                (
                    "POST /dicomweb/studies HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    f"Authorization: Bearer {issue_token(ledger.tokens, 'pacs', ['ingest'], None, 'test', time.time())[0]}\r\n"
                    f'Content-Type: multipart/related; type="application/dicom"; boundary={boundary}\r\n'
                    f"Content-Length: {2 << 30}\r\n\r\n--{boundary}\r\n"
                ).encode()
            )
            tls.settimeout(30)
            head = tls.recv(4096).decode("latin-1")
            assert head.startswith("HTTP/1.1 413"), head[:200]

    admin, _ = issue_token(ledger.tokens, "it-admin", ["admin"], None, "test", time.time())
    with httpx.Client(verify=ca, timeout=120) as http:  # models deployed from inside a replica
        listed = http.get(f"{base}/api/v1/models", headers={"Authorization": f"Bearer {reader}"})
        assert listed.status_code == 200 and "model-chest_xray" in listed.text, listed.text
        redeployed = http.put(f"{base}/api/v1/models/chest_xray", headers={"Authorization": f"Bearer {admin}"})
        assert redeployed.status_code == 200 and "model-chest_xray" in redeployed.text, redeployed.text

    with httpx.Client(verify=ca, timeout=30) as http:
        auth = {"Authorization": f"Bearer {reader}"}
        assert http.get(f"{base}/api/v1/status", headers=auth).status_code == 200
        stow = http.post(f"{base}/dicomweb/studies", headers=auth, content=b"x")
        assert stow.status_code == 403 and stow.json()["type"].endswith("forbidden")
        assert http.get(f"{base}/api/v1/status", headers={"Authorization": "Bearer pab_0_x"}).status_code == 401
        assert http.get(f"{base}/healthz").status_code == 200  # still serving
