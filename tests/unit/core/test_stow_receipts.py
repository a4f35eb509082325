"""STOW-RS responses (PS3.18 10.5.3) read as per-instance receipts (core.stow_receipts), on hand-built
response data sets: an instance is stored only if listed as referenced under 200/202."""

from __future__ import annotations

import json

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ComprehensiveSRStorage

from core.stow_receipts import (
    NOT_AUTHORIZED,
    OUT_OF_RESOURCES,
    PROCESSING_FAILURE,
    StowReceipt,
    peer_unavailable,
    read_stow_response,
    stow_receipts,
)

SR, PM1, PM2 = "2.25.1", "2.25.2", "2.25.3"
SENT = [SR, PM1, PM2]


def _item(uid: str, **reason: int) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = ComprehensiveSRStorage
    item.ReferencedSOPInstanceUID = uid
    for keyword, value in reason.items():
        setattr(item, keyword, value)
    return item


def response(referenced: list[Dataset] = (), failed: list[Dataset] = ()) -> Dataset:
    """A response data set as PS3.18 Table 10.5.3-3 lays it out, through its JSON form (the
    DICOM JSON Model, PS3.18 F.2), as a server sends it."""
    ds = Dataset()
    ds.RetrieveURL = "https://pacs.example/dicom-web/studies/2.25.9"
    ds.ReferencedSOPSequence = list(referenced)
    ds.FailedSOPSequence = list(failed)
    parsed = read_stow_response(json.dumps(ds.to_json_dict()).encode())
    assert parsed is not None
    return parsed


def test_200_with_every_instance_referenced_stores_each():
    outcomes = stow_receipts(SENT, 200, response([_item(u) for u in reversed(SENT)]))
    assert [o.sop_instance_uid for o in outcomes] == SENT  # the order sent, not the order listed
    assert all(o.stored and o.status == 0x0000 for o in outcomes)


@pytest.mark.parametrize(
    "reason",
    [0xA700, 0xA900, 0xC000, 0xC122],
    ids=["out_of_resources", "sop_class_mismatch", "cannot_understand", "c_range"],
)
def test_202_one_failed_with_its_failure_reason_the_others_stored(reason):
    outcomes = stow_receipts(SENT, 202, response([_item(SR), _item(PM2)], [_item(PM1, FailureReason=reason)]))
    by_uid = {o.sop_instance_uid: o for o in outcomes}
    assert by_uid[SR].stored and by_uid[PM2].stored
    assert not by_uid[PM1].stored and by_uid[PM1].status == reason
    assert f"0x{reason:04X}" in by_uid[PM1].detail


@pytest.mark.parametrize("reason", [0xB000, 0xB006, 0xB007])
def test_a_warning_reason_is_stored_with_that_warning(reason):
    [outcome] = stow_receipts([SR], 202, response([_item(SR, WarningReason=reason)]))
    assert outcome.stored and outcome.status == reason and "Warning Reason" in outcome.detail


def test_a_warning_outside_the_warning_range_still_reads_as_stored():
    [outcome] = stow_receipts([SR], 202, response([_item(SR, WarningReason=0x0001)]))
    assert outcome.stored and outcome.status == 0xB000 and "0x0001" in outcome.detail


def test_200_with_an_empty_body_stores_nothing():
    """Not listed as referenced: not delivered, however the status reads (a re-send is
    harmless; our objects' UIDs and bytes are the same each time)."""
    outcomes = stow_receipts(SENT, 200, read_stow_response(b""))
    assert [(o.stored, o.status) for o in outcomes] == [(False, PROCESSING_FAILURE)] * 3
    assert all("does not list it" in o.detail and "HTTP 200" in o.detail for o in outcomes)


def test_an_instance_the_response_leaves_out_is_not_stored():
    outcomes = stow_receipts(SENT, 200, response([_item(SR), _item(PM1)]))
    assert [o.stored for o in outcomes] == [True, True, False]


def test_409_stores_nothing_even_what_it_lists_as_referenced():
    """409 Conflict: "unable to store any instances" (PS3.18 Table 10.5.3-2)."""
    outcomes = stow_receipts([SR, PM1], 409, response([_item(SR)], [_item(PM1, FailureReason=0xA900)]))
    assert [(o.stored, o.status) for o in outcomes] == [(False, PROCESSING_FAILURE), (False, 0xA900)]
    assert "none was stored" in outcomes[0].detail


def test_failed_wins_over_referenced_for_an_instance_listed_in_both():
    [outcome] = stow_receipts([SR], 202, response([_item(SR)], [_item(SR, FailureReason=0xC000)]))
    assert not outcome.stored and outcome.status == 0xC000


@pytest.mark.parametrize("reason", [None, 0x0000, 0xB000])
def test_a_failed_item_without_a_failure_reason_is_a_processing_failure(reason):
    item = _item(PM1) if reason is None else _item(PM1, FailureReason=reason)
    [outcome] = stow_receipts([PM1], 409, response(failed=[item]))
    assert not outcome.stored and outcome.status == PROCESSING_FAILURE


@pytest.mark.parametrize(
    ("http", "status"),
    [(400, PROCESSING_FAILURE), (401, NOT_AUTHORIZED), (403, NOT_AUTHORIZED), (413, OUT_OF_RESOURCES)],
)
def test_a_4xx_without_a_body_fails_each_instance_naming_the_http_status(http, status):
    outcomes = stow_receipts(SENT, http, None)
    assert all(not o.stored and o.status == status and f"HTTP {http}" in o.detail for o in outcomes)


@pytest.mark.parametrize("http", [408, 429, 500, 502, 503, 504])
def test_statuses_to_wait_out_are_not_read_as_answers(http):
    assert peer_unavailable(http)
    with pytest.raises(ValueError, match=f"got HTTP {http}"):
        stow_receipts(SENT, http, None)


@pytest.mark.parametrize(
    "body",
    [b"", b"  \n", b"<NativeDicomModel/>", b"[]", b'"text"', b"{not json", b'{"00081199": {"vr": "XX"}}'],
)
def test_a_body_that_is_not_dicom_json_is_no_response(body):
    assert read_stow_response(body) is None


def test_outcomes_read_like_c_store_statuses():
    assert StowReceipt("1", 0x0000).stored and StowReceipt("1", 0xB007).stored
    assert not StowReceipt("1", 0xA700).stored and not StowReceipt("1", PROCESSING_FAILURE).stored


def test_a_malformed_item_makes_the_whole_body_no_response():
    body = {"00081199": {"vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": "not-a-list"}}]}}
    assert read_stow_response(json.dumps(body).encode()) is None
