"""Study assembly: which instances form a series.

When a study is complete is decided by ``core.completeness`` (the PACS's instance counts where a
sender is configured for them, else the quiet-period rule per sender).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from core.types import InstanceMeta

__all__ = ["group_by_series"]


def group_by_series(instances: Iterable[InstanceMeta]) -> dict[str, list[InstanceMeta]]:
    """Group instances by Series Instance UID, each series in arrival order."""
    series: dict[str, list[InstanceMeta]] = defaultdict(list)
    for inst in sorted(instances, key=lambda i: (i.received_at, i.sop_instance_uid)):
        series[inst.series_instance_uid].append(inst)
    return dict(series)
