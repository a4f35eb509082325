"""The review page in a real browser (issue 12): Debian's ``chromium`` driven by Playwright
against the API served by Ray Serve over TLS, a real pipeline behind it and Orthanc as the PACS.

- Two readers, two roles of a policy file the test writes: the chief radiologist sees the study
  (and is pushed its critical finding as a live banner); the technologist (image-quality flags
  only) signs in on the same page and sees a different, empty worklist.
- The chief opens the study, the Grad-CAM heatmap image loads (fetched with the bearer header,
  shown by blob URL under a strict CSP), agrees with the selected finding by its keyboard
  shortcut, types a final diagnosis and submits with Enter: the verified SR (Verification Flag
  VERIFIED, the reader as Verifying Observer, the AI SR as its predecessor) reaches Orthanc.
- The success measures panel draws this review's month as inline SVG plots.
- The page fits 1366x768 without horizontal scrolling; no CSP violation or script error.

Screenshots go to the test's tmp dir and to ``var/test-artefacts/review/`` (git-ignored).
Chromium is a Debian package the Makefile installs (``make system-packages``): missing, the test
fails rather than skips. ``playwright install`` is never needed (``executable_path``).
"""

from __future__ import annotations

import shutil
import time
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
import yaml
from playwright.sync_api import Page, sync_playwright
from pydicom import dcmread
from pydicom.uid import Comprehensive3DSRStorage

from actors.pipeline import wait_until
from api.auth import issue_token
from api.page import CONTENT_SECURITY_POLICY
from core.config import StorageConfig
from core.results import OutputKind
from core.types import AuditEventType
from synthetic.synthetic_dicom import make_cxr_study, save_study
from tests.integration.api_harness import make_harness
from tests.integration.conftest import ROOT, api_config, ledger_of, needs_peers, send_files, wait_for_states

pytestmark = [pytest.mark.integration, needs_peers]

CHROMIUM = Path("/usr/bin/chromium")
"""Debian's browser (package ``chromium``; the Makefile's ``system-packages`` installs it)."""
ARTEFACTS = ROOT / "var" / "test-artefacts" / "review"
VIEWPORT = {"width": 1366, "height": 768}

POLICY = {
    "roles": {
        "chief_radiologist": {"description": "Everything every model reports"},
        "technologist": {"description": "Image-quality flags only", "quality_flags_only": True, "push": False},
    },
    "users": {"dr-chief": ["chief_radiologist"], "tech-1": ["technologist"]},
}


def test_the_page_is_served_without_credentials_under_a_strict_policy(tmp_path):
    harness = make_harness(tmp_path, StorageConfig(var_dir=str(tmp_path / "var")))
    try:
        client = harness.client
        assert client.get("/review", follow_redirects=False).headers["location"] == "/review/"
        for path, media in (
            ("/review/", "text/html"),
            ("/review/app.js", "text/javascript"),
            ("/review/app.css", "text/css"),
        ):
            answer = client.get(path)
            assert answer.status_code == 200 and answer.headers["content-type"].startswith(media), path
            assert answer.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
            assert answer.headers["x-content-type-options"] == "nosniff"
        html = client.get("/review/").text
        assert "<script>" not in html and "<style" not in html and " on" + "click=" not in html  # CSP: files only
        for name in ("page.py", "..%2Fpage.py", "index.htm", ".env"):
            assert client.get(f"/review/{name}").status_code == 404, name
        assert not [p for p in client.get("/openapi.json").json()["paths"] if p.startswith("/review")]
        assert client.get("/api/v1/clinical/worklist").status_code == 401  # the data is not public
    finally:
        harness.close()


def _shot(page: Page, tmp_path: Path, name: str) -> None:
    """A screenshot in the test's tmp dir, copied to the artefacts folder."""
    path = tmp_path / "screens" / f"{name}.png"
    path.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(path), full_page=True)
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, ARTEFACTS / path.name)


def _fits(page: Page) -> None:
    """No horizontal scrolling at 1366 px."""
    widths = page.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
    assert widths[0] <= widths[1] == VIEWPORT["width"], widths


def _sign_in(page: Page, token: str) -> None:
    if page.locator("#sign-out").is_visible():
        page.click("#sign-out")
        assert page.locator("#worklist button").count() == 0  # nothing of the last reader's view stays
    page.fill("#token", token)
    page.press("#token", "Enter")
    page.wait_for_selector("#app-view:not([hidden])")
    page.wait_for_selector("#worklist-count:not(:empty)")


def _verified_srs(orthanc: Any, study_uid: str) -> list[Any]:
    found = []
    for meta in orthanc.instances_of_study(study_uid, modality="SR"):
        ds = dcmread(BytesIO(orthanc.file(meta["ID"])))
        if ds.SOPClassUID == Comprehensive3DSRStorage and ds.get("VerificationFlag") == "VERIFIED":
            found.append(ds)
    return found


def test_two_readers_two_worklists_and_a_review_comes_back_verified(tmp_path, make_pipeline, orthanc, api_section):
    assert CHROMIUM.exists(), "Debian's chromium is missing: `make system-packages` installs it"
    policy = tmp_path / "roles.yaml"
    policy.write_text(yaml.safe_dump(POLICY))
    pipeline, cfg = make_pipeline(
        orthanc, api=api_config(api_section), clinical={"policy_file": str(policy), "policy_reload_s": 1.0}
    )
    ledger = ledger_of(pipeline)
    chief, _ = issue_token(ledger.tokens, "dr-chief", ["read", "review"], None, "test", time.time())
    tech, _ = issue_token(ledger.tokens, "tech-1", ["read"], None, "test", time.time())
    datasets = make_cxr_study(seed=1201, findings=frozenset({"pneumothorax"}), patient_id="RVW1201", accession="R1201")
    study_uid = str(datasets[0].StudyInstanceUID)
    problems: list[str] = []

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        context = browser.new_context(viewport=VIEWPORT, ignore_https_errors=True)  # the throwaway test CA
        page = context.new_page()
        page.set_default_timeout(20_000)
        page.on("pageerror", lambda error: problems.append(f"script error: {error}"))
        page.on("console", lambda m: problems.append(m.text) if "Content Security Policy" in m.text else None)
        page.goto(f"{pipeline.api_url()}/review/")

        # The chief is signed in when the study arrives: its critical finding is pushed live.
        _sign_in(page, chief)
        assert page.text_content("#who").startswith("dr-chief")
        page.wait_for_selector('#live[data-state="on"]')  # subscribed: the push cannot be missed
        send_files(save_study(datasets, tmp_path / "in"), pipeline, cfg)
        assert wait_for_states(ledger, [study_uid], {"delivered"}, timeout_s=60), ledger.status.report(time.time())
        [ai_sr] = [r.sop_instance_uid for r in ledger.outbox.published(study_uid=study_uid) if r.kind == OutputKind.SR]
        banner = page.wait_for_selector(f'#alerts .banner[data-sr="{ai_sr}"]')
        assert "pneumothorax" in banner.text_content().lower()
        item = page.wait_for_selector(f'#worklist button[data-sr="{ai_sr}"]')
        _fits(page)
        _shot(page, tmp_path, "1-chief-worklist")

        # The technologist: same page, another role, another worklist.
        _sign_in(page, tech)
        assert "technologist" in page.text_content("#who")
        assert page.locator("#worklist button").count() == 0
        assert page.locator("#show-success").count() == 1
        _shot(page, tmp_path, "2-technologist-worklist")

        # The chief reviews: heatmap, `a` on the selected finding, final diagnosis, Enter.
        _sign_in(page, chief)
        page.click(f'#worklist button[data-sr="{ai_sr}"]')
        page.wait_for_selector("#image[src^='blob:'][data-overlay='1']")
        assert page.locator("#image").evaluate("img => img.complete && img.naturalWidth > 0")
        finding = page.get_attribute("#findings tr.selected", "data-finding")
        assert finding
        page.keyboard.press("a")
        assert page.get_attribute(f'#findings tr[data-finding="{finding}"] button.agree', "aria-pressed") == "true"
        page.fill("#reader-name", "Chief^Dana")
        page.fill("#final-diagnosis", "Right pneumothorax, confirmed")
        page.press("#final-diagnosis", "Enter")
        page.wait_for_selector("#review-status[data-submitted]")
        assert "submitted" in page.text_content("#review-status").lower()
        _fits(page)
        _shot(page, tmp_path, "3-chief-reviewed")

        # The success measures, computed from this very review, drawn as inline SVG.
        page.click("#show-success")
        agreement = page.wait_for_selector('#success-plots .plot[data-measure="agreement_rate"] svg')
        assert "chest_xray" in page.text_content("#success-plots h3")
        assert agreement.get_attribute("aria-label").startswith("Agreement: ")
        _fits(page)
        _shot(page, tmp_path, "4-success-measures")
        assert item is not None and problems == []
        browser.close()

    assert wait_until(lambda: _verified_srs(orthanc, study_uid), 30, 0.5), "no verified SR reached the PACS"
    [verified] = _verified_srs(orthanc, study_uid)
    assert str(verified.VerifyingObserverSequence[0].VerifyingObserverName) == "Chief^Dana"
    [predecessor] = verified.PredecessorDocumentsSequence
    assert predecessor.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == ai_sr
    events = ledger.audit.events(study_uid)
    reviewed = [e for e in events if e.type == AuditEventType.FINDING_REVIEWED]
    assert [(e.detail["assessment"], e.actor) for e in reviewed] == [("agree", "token:dr-chief")]
    assert {AuditEventType.RESULT_VIEWED, AuditEventType.VERIFIED_SR_DELIVERED} <= {e.type for e in events}
    assert ledger.clinical.heatmap_viewed(ai_sr, "dr-chief")
