"""Every generated corruption kind is caught by the pure validator with its reason code.

Each corrupted study is written to bytes and read back, so the validator sees raw elements as it
does after a C-STORE; then every instance is inspected and the collection (series, study)
checked, as the validator actor does.
"""

from __future__ import annotations

import pytest

from core.validation import Validator
from tests.corruptions import CORRUPTIONS, Corruption, reread


def _codes_by_instance(corruption: Corruption, seed: int = 3) -> tuple[dict[str, set[str]], list[str]]:
    validator = Validator()
    datasets = [reread(ds) if corruption.round_trips else ds for ds in corruption.build(seed)]
    codes: dict[str, set[str]] = {}
    messages: list[str] = []
    facts = []
    for ds in datasets:
        meta_uid = str(ds.file_meta.MediaStorageSOPInstanceUID)
        issues, fact = validator.inspect(ds, str(ds.file_meta.TransferSyntaxUID), meta_uid)
        codes[meta_uid] = {i.code for i in issues}
        messages += [i.message for i in issues]
        facts.append(fact)
    for issue in validator.check_collection(facts):
        codes[issue.sop_instance_uid].add(issue.code)
        messages.append(issue.message)
    return codes, messages


def test_the_catalogue_has_at_least_twenty_distinct_kinds():
    assert len({c.name for c in CORRUPTIONS}) == len(CORRUPTIONS) >= 20
    assert len({c.code for c in CORRUPTIONS}) >= 15


@pytest.mark.parametrize("corruption", CORRUPTIONS, ids=lambda c: c.name)
def test_corruption_is_flagged_with_its_reason_code(corruption):
    codes, messages = _codes_by_instance(corruption)
    flagged = [uid for uid, found in codes.items() if corruption.code in found]
    assert flagged, (corruption.code, codes)
    if corruption.code in {
        "patient_mismatch",
        "study_attribute_mismatch",
        "series_attribute_mismatch",
        "duplicate_position",
        "slice_gap",
        "series_dimensions_mismatch",
        "series_orientation_mismatch",
    }:
        assert len(flagged) == len(codes)  # the whole series / study is set aside
    assert all(m.strip() for m in messages)
    assert not [m for m in messages if "ZQ3Z" in m or "OTHER" in m]  # never a patient ID


@pytest.mark.parametrize("seed", [1, 2])
def test_uncorrupted_synthetic_studies_pass(seed):
    from tests.corruptions import ct, cxr

    validator = Validator()
    for datasets in ([cxr(seed)], ct(seed)):
        facts = []
        for ds in map(reread, datasets):
            issues, fact = validator.inspect(ds)
            assert issues == []
            facts.append(fact)
        assert validator.check_collection(facts) == []


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.999])
def test_a_file_cut_short_is_truncated(keep):
    from io import BytesIO

    from pydicom import dcmread

    from tests.corruptions import cxr, write

    buf = BytesIO()
    write(cxr(4), buf)
    data = buf.getvalue()
    ds = dcmread(BytesIO(data[: int(len(data) * keep)]))
    codes = {i.code for i in Validator().check_instance(ds)}
    assert "truncated" in codes
