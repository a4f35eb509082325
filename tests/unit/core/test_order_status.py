"""core.order_status: the RIS order status (HL7 ORC-5 / OBR-25) as completion evidence."""

from __future__ import annotations

import pytest

from core.order_status import OrderProgress, OrderStatus, latest_order_status


@pytest.mark.parametrize(
    ("value", "progress"),
    [
        ("CM", OrderProgress.COMPLETED),
        (" cm ", OrderProgress.COMPLETED),
        ("CA", OrderProgress.DISCONTINUED),
        ("DC", OrderProgress.DISCONTINUED),
        ("IP", OrderProgress.IN_PROGRESS),
        ("A", OrderProgress.IN_PROGRESS),
        ("HD", OrderProgress.IN_PROGRESS),
        ("SC", OrderProgress.SCHEDULED),
        ("ER", OrderProgress.UNKNOWN),
        ("RP", OrderProgress.UNKNOWN),
        ("", OrderProgress.UNKNOWN),
        ("ZZ", OrderProgress.UNKNOWN),
    ],
)
def test_orc5_order_status_table_0038(value, progress):
    status = OrderStatus.from_orc5("1.2", "key", value, 3.0)
    assert status.progress is progress and status.source == f"ORC-5={value.strip().upper()}"


@pytest.mark.parametrize(
    ("value", "progress"),
    [
        ("F", OrderProgress.COMPLETED),
        ("P", OrderProgress.COMPLETED),
        ("R", OrderProgress.COMPLETED),
        ("C", OrderProgress.COMPLETED),
        ("X", OrderProgress.DISCONTINUED),
        ("I", OrderProgress.IN_PROGRESS),
        ("A", OrderProgress.IN_PROGRESS),
        ("O", OrderProgress.SCHEDULED),
        ("S", OrderProgress.SCHEDULED),
        ("Y", OrderProgress.UNKNOWN),
        ("Z", OrderProgress.UNKNOWN),
    ],
)
def test_obr25_result_status_table_0123(value, progress):
    assert OrderStatus.from_obr25("1.2", "key", value, 3.0).progress is progress


def test_the_latest_known_status_of_the_study_or_its_accession_wins():
    scheduled = OrderStatus("1.2", "k", OrderProgress.SCHEDULED, 1.0)
    done = OrderStatus("", "k", OrderProgress.COMPLETED, 5.0)
    noise = OrderStatus("1.2", "k", OrderProgress.UNKNOWN, 9.0)
    other = OrderStatus("1.3", "other", OrderProgress.DISCONTINUED, 7.0)
    assert latest_order_status([scheduled, done, noise, other], "1.2", "k") is done
    assert latest_order_status([scheduled, done], "1.2") is scheduled  # no accession key to match
    assert latest_order_status([other], "1.2", "k") is None
    assert latest_order_status([done], "", "") is None
