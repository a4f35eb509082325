from __future__ import annotations

from core.assembly import StudyAssembler, group_by_series
from core.config import AssemblyConfig
from core.types import InstanceMeta
from tests.fakes import FakeClock


def inst(uid, series, t):
    return InstanceMeta(uid, "1.2", "st", series, "CT", "1.2.840.10008.1.2", "/p", "h", 1, t)


def test_quiet_period_with_a_fake_clock():
    clock = FakeClock()
    a = StudyAssembler.from_config(AssemblyConfig(quiet_period_s=2.0))
    last = clock.now()
    clock.advance(1.9)
    assert not a.is_complete(last, clock.now())
    clock.advance(0.1)
    assert a.is_complete(last, clock.now())


def test_series_grouping_keeps_arrival_order():
    groups = group_by_series([inst("b", "s1", 2.0), inst("a", "s1", 1.0), inst("c", "s2", 1.5)])
    assert [i.sop_instance_uid for i in groups["s1"]] == ["a", "b"]
    assert list(groups) == ["s1", "s2"]
