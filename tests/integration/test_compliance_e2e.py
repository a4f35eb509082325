"""Issue #4 through the Ray pipeline: real listener, stage actors, model deployment, Orthanc.

- A representative set of generated corruptions, sent as their bytes are, ends quarantined
  with the expected reason codes (a broken codestream of an instance a model reads is found by
  the model's replica, the one decoder on that path, and quarantined by the inference stage);
  a few corpus files of other syntaxes end skipped or
  quarantined as in ``test_corpus``.
- Chest radiographs compressed with RLE, JPEG-LS and JPEG 2000 travel in their own syntax,
  decode in the model replica and come back as SRs; an instance an operator released after
  quarantine is processed too, and every SR carries the source's patient and study attributes
  exactly (non-ASCII names included).
"""

from __future__ import annotations

import time
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from actors.cli import main
from core.sr import differing_attributes
from core.validation import attribute_text
from tests.corruptions import CORRUPTIONS, cxr, put, write
from tests.integration.bridge import query, send_raw
from tests.integration.conftest import ledger_of, needs_peers, wait_for_states

pytestmark = [pytest.mark.integration, needs_peers]

REPRESENTATIVE = (
    "truncated_pixel_data",
    "wrong_rows",
    "zero_length_pixel_data",
    "missing_sop_instance_uid",
    "invalid_uid_characters",
    "wrong_vr_rows_as_float",
    "bits_stored_above_allocated",
    "sop_instance_uid_contradicts_meta",
    "truncated_jpeg_ls_stream",
    "jpeg2000_rows_contradict_codestream",
    "unknown_transfer_syntax",
    "mixed_patients_in_study",
    "duplicate_slice_positions",
    "missing_slice_gap",
)


def test_corruptions_end_quarantined_with_their_reason_codes(tmp_path, make_pipeline):
    pipeline, cfg = make_pipeline()
    port = pipeline.listener_port()
    chosen = {c.name: c for c in CORRUPTIONS if c.name in REPRESENTATIVE}
    assert set(chosen) == set(REPRESENTATIVE)
    studies: dict[str, str] = {}
    for seed, (name, corruption) in enumerate(sorted(chosen.items()), start=100):
        paths = []
        datasets = corruption.build(seed)
        for i, ds in enumerate(datasets):
            paths.append(tmp_path / f"{name}-{i}.dcm")
            write(ds, paths[-1])
        assert send_raw(paths, port) == [0] * len(paths), name  # stored as sent, flagged later
        studies[name] = attribute_text(datasets[0], "StudyInstanceUID")
    lossy = Path(get_testdata_file("JPEG-lossy.dcm"))
    assert send_raw([lossy], port) == [0]
    ledger = ledger_of(pipeline)
    uids = [u for u in studies.values() if u] + [str(dcmread(lossy, stop_before_pixels=True).StudyInstanceUID)]
    assert wait_for_states(ledger, uids, {"quarantined", "skipped", "routed", "delivered"}, timeout_s=90)
    # A radiograph a model reads is decoded by the model's replica only (issue 14): its broken
    # codestream is quarantined by the inference stage, with the validator's reason code.
    decoded_by_model = [studies["truncated_jpeg_ls_stream"], uids[-1]]
    assert wait_for_states(ledger, decoded_by_model, {"quarantined"}, timeout_s=90)
    held = {e.sop_instance_uid: e for e in ledger.quarantine.entries(limit=1000)}
    for name, study in studies.items():
        codes = (
            {c for e in held.values() if e.study_uid == study for c in e.codes}
            if study
            else {c for e in held.values() for c in e.codes if c == chosen[name].code}
        )
        assert chosen[name].code in codes, (name, codes)
        if study:
            assert ledger.jobs.for_study(study)[-1].state.value == "quarantined", name
    lossy_uid = str(dcmread(lossy, stop_before_pixels=True).SOPInstanceUID)
    assert "pixel_data_undecodable" in held[lossy_uid].codes
    assert ledger.status.report(time.time()).quarantine.held == len(held)
    assert ledger.audit.verify() is None


def _radiograph(tmp_path: Path, seed: int, syntax: str | None, **broken: object) -> tuple[str, Path]:
    ds = cxr(seed, size=128)
    put(ds, "SpecificCharacterSet", "ISO_IR 192")
    put(ds, "PatientName", "Müller^Zoë=ミュラー^ゾエ")
    put(ds, "PatientID", f"Ü-{seed}")
    put(ds, "AccessionNumber", f"Å{seed}")
    if syntax:
        ds.compress(syntax)
    for keyword, value in broken.items():
        put(ds, keyword, value)
    path = tmp_path / f"cxr-{seed}.dcm"
    write(ds, path)
    return str(ds.StudyInstanceUID), path


def test_compressed_and_released_radiographs_come_back_as_srs_with_exact_attributes(
    tmp_path, orthanc, make_pipeline, capsys
):
    pipeline, cfg = make_pipeline(orthanc)
    sent = [_radiograph(tmp_path, 200 + i, ts) for i, ts in enumerate((RLELossless, JPEGLSLossless, JPEG2000Lossless))]
    released_study, released_path = _radiograph(tmp_path, 210, None, HighBit=15)
    from demo.dcmtk import storescu

    for _, path in [*sent, (released_study, released_path)]:  # one file per association: its own syntax
        res = storescu([path], "127.0.0.1", pipeline.listener_port(), cfg.listener.ae_title, propose_own_syntax=True)
        assert res.returncode == 0, res.stderr[-300:]
    ledger = ledger_of(pipeline)
    assert wait_for_states(ledger, [released_study], {"quarantined"}, timeout_s=60)
    config = tmp_path / "pacsai.yaml"
    config.write_text(f"storage: {{var_dir: {cfg.storage.var_dir}}}\n")
    assert (
        main(
            [
                "quarantine",
                "release",
                released_study,
                "--reason",
                "HighBit checked with the vendor",
                "--user",
                "physicist",
                "--config",
                str(config),
            ]
        )
        == 0
    )
    studies = [s for s, _ in sent] + [released_study]
    assert wait_for_states(ledger, studies, {"delivered"}, timeout_s=150), ledger.status.report(time.time())
    for study, path in [*sent, (released_study, released_path)]:
        syntax = str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        [row] = query(ledger, "SELECT transfer_syntax FROM instances WHERE study_uid = ?", (study,))
        assert row["transfer_syntax"] == syntax  # stored as sent, not transcoded
        [sr_meta] = orthanc.instances_of_study(study, modality="SR")
        sr = dcmread(BytesIO(orthanc.file(sr_meta["ID"])))
        assert differing_attributes(dcmread(path), sr) == []
    job = ledger.jobs.for_study(released_study)[-1]
    assert job.record.accepted[0].issues[0].code == "pixel_attributes_inconsistent"
