from __future__ import annotations

from core.assembly import group_by_series
from core.types import InstanceMeta


def inst(uid, series, t):
    return InstanceMeta(uid, "1.2", "st", series, "CT", "1.2.840.10008.1.2", "/p", "h", 1, t)


def test_series_grouping_keeps_arrival_order():
    groups = group_by_series([inst("b", "s1", 2.0), inst("a", "s1", 1.0), inst("c", "s2", 1.5)])
    assert [i.sop_instance_uid for i in groups["s1"]] == ["a", "b"]
    assert list(groups) == ["s1", "s2"]
