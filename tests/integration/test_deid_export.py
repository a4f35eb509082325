"""``pacsai export deid`` end to end (issue 13, item 6): spool and ledger in, checked copies out.

The var dir is filled the cheap way, through the durable intake itself (``SpoolIntake``, as
a C-STORE would: sealed at rest with the demo data key, recorded in the ledger), without Ray
or a listener. The real ``pacsai`` command then exports one study; every copy must pass
``dciodvfy`` and hold no identifying value of its source; the Parquet manifest lists every
instance under pseudonyms, the burned-in ones as excluded with their reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import SecondaryCaptureImageStorage

from actors._cli_export import parse_query
from core.config import AppConfig
from core.deid_keys import DeidKeys, project_key
from demo.dcmtk import dciodvfy
from state.layout import VarLayout
from state.ledger import open_ledger
from state.ledger.export import ExportReads
from state.spool import SpoolIntake
from synthetic.synthetic_dicom import make_ct_series
from tests.deid_leaks import identifying_values, leaks
from tests.fakes import FakeClock

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools is installed by `make test`"),
]

KEY = "integration-test-export-key-0123456789abcdef"
PACSAI = Path(sys.executable).with_name("pacsai")


def _study() -> list[Dataset]:
    """Four CT slices with identifying values everywhere; the third says its pixels carry text,
    the fourth is a screen capture."""
    series = make_ct_series(
        11, 4, rows=32, cols=32, patient_id="MRN-DEID-7731", patient_name="DOE^JANE^Q", accession="ACC-DEID-5521"
    )
    for ds in series:
        ds.PatientBirthDate, ds.InstitutionName = "19610412", "Saint Example Hospital"
        ds.ReferringPhysicianName, ds.OperatorsName = "HOUSE^GREGORY", "CHASE^ROBERT"
        ds.StudyDescription = "CT CHEST DOE follow-up"
        ds.OtherPatientIDsSequence = Sequence([Dataset()])
        ds.OtherPatientIDsSequence[0].PatientID = "ALT-ID-99120"
        ds.add_new(0x00110010, "LO", "ACME PRIVATE")
        ds.add_new(0x00111001, "LO", "PRIVATE-NOTE-4471")
    series[2].BurnedInAnnotation = "YES"
    series[3].SOPClassUID = series[3].file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    return series


def _fill(var_dir: Path, cfg: AppConfig, datasets: list[Dataset], tmp: Path) -> None:
    """Ingest the study as the DICOM listener would (spool file, ledger row, audit)."""
    layout = VarLayout.at(var_dir)
    ledger = open_ledger(cfg.storage, layout)
    intake = SpoolIntake(
        layout.spool, layout.rejected, ledger, 0.0, FakeClock(), b"k" * 32, actor="test", min_free_bytes=0
    )
    try:
        for ds in datasets:
            path = tmp / f"{ds.SOPInstanceUID}.dcm"
            ds.save_as(path, enforce_file_format=True)
            intake.ingest_file(path.read_bytes(), "DEIDTEST")
        reads = ExportReads(ledger.db)  # --query: modality and received dates (FakeClock: 1970-01-12)
        assert len(reads.instances(parse_query("modality=CT since=1970-01-12 until=1970-01-13"))) == len(datasets)
        assert reads.instances(parse_query("modality=MR")) == reads.instances(parse_query("since=1970-01-13")) == []
    finally:
        intake.close()
        ledger.close()


def test_export_deid_writes_checked_copies_and_a_manifest_of_pseudonyms(tmp_path: Path) -> None:
    raw = {
        "storage": {"var_dir": str(tmp_path / "var")},
        "export": {"key_env": "PACSAI_TEST_EXPORT_KEY", "project": "lung"},
    }
    config = tmp_path / "export.yaml"
    config.write_text(yaml.safe_dump(raw))
    sources = _study()
    _fill(tmp_path / "var", AppConfig.model_validate(raw), sources, tmp_path)
    out = tmp_path / "out"
    env = {**os.environ, "PACSAI_TEST_EXPORT_KEY": KEY}
    argv = [str(PACSAI), "export", "deid", "--config", str(config), "--study", sources[0].StudyInstanceUID, "--verify"]
    run = subprocess.run([*argv, "--out", str(out)], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "exported 2 instance(s), excluded 2" in run.stdout
    assert "dciodvfy: 2 file(s) checked, 0 error(s)" in run.stdout

    files = sorted(out.rglob("*.dcm"))
    assert len(files) == 2
    for path in files:
        assert dciodvfy(path)[0] == [], path
    values = identifying_values(sources)
    assert {"DOE^JANE^Q", "MRN-DEID-7731", "ALT-ID-99120", "PRIVATE-NOTE-4471", "1961-04-12"} <= values
    outputs = [p.read_bytes() for p in [*files, out / "manifest.parquet"]]
    assert leaks(values, outputs) == []
    assert leaks(values, [run.stdout.encode(), run.stderr.encode()]) == []

    keys = DeidKeys(project_key(KEY.encode(), "lung"))
    manifest = pq.read_table(out / "manifest.parquet").to_pylist()
    assert len(manifest) == 4 and {r["study_uid"] for r in manifest} == {keys.uid(sources[0].StudyInstanceUID)}
    assert {r["patient_pseudonym"] for r in manifest} == {keys.pseudonym("patient", "MRN-DEID-7731")}
    excluded = {r["sop_uid"]: r["reason"] for r in manifest if r["excluded"]}
    assert excluded == {
        keys.uid(sources[2].SOPInstanceUID): "burned-in annotation: Burned In Annotation is YES",
        keys.uid(sources[3].SOPInstanceUID): "burned-in annotation: screen capture class Secondary Capture Image",
    }
    copy = dcmread(files[0])
    assert copy.PatientID == manifest[0]["patient_pseudonym"] and copy.StudyDate == manifest[0]["study_date"]
    assert copy.StudyDescription == "CT CHEST follow-up" and copy.PatientIdentityRemoved == "YES"
    assert {f.stem for f in files} == {r["sop_uid"] for r in manifest if not r["excluded"]}

    again = subprocess.run([*argv, "--out", str(out)], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert again.returncode == 2 and "expected a new or empty directory" in again.stderr

    ledger = open_ledger(AppConfig.model_validate(raw).storage)
    try:  # the export is audited: who, which project, how many; never the pseudonyms
        [event] = [e for e in ledger.audit.events(sources[0].StudyInstanceUID) if e.type == "research_exported"]
    finally:
        ledger.close()
    assert event.actor.startswith("user:") and event.detail == {"project": "lung", "instances": 4, "excluded": 2}
