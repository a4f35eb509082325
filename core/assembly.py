"""Study assembly: which instances form a series and a study, and when a study is complete.

``StudyAssembler`` is the bare quiet-period rule: a study is complete once no instance arrived
for ``quiet_period_s``. The assembler stage decides with ``core.completeness`` (issue #5), which
completes on the PACS's instance counts where a sender is configured for it and keeps this
rule, per sender, where the PACS cannot tell.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from core.config import AssemblyConfig
from core.types import InstanceMeta

__all__ = ["StudyAssembler", "group_by_series"]


def group_by_series(instances: Iterable[InstanceMeta]) -> dict[str, list[InstanceMeta]]:
    """Group instances by Series Instance UID, each series in arrival order."""
    series: dict[str, list[InstanceMeta]] = defaultdict(list)
    for inst in sorted(instances, key=lambda i: (i.received_at, i.sop_instance_uid)):
        series[inst.series_instance_uid].append(inst)
    return dict(series)


@dataclass(frozen=True, slots=True)
class StudyAssembler:
    """Decides when a study that is receiving instances is complete."""

    quiet_period_s: float

    @classmethod
    def from_config(cls, cfg: AssemblyConfig) -> StudyAssembler:
        """Build from the config slice."""
        return cls(cfg.quiet_period_s)

    def complete_at(self, last_instance_at: float) -> float:
        """The time at which the study is complete if nothing else arrives."""
        return last_instance_at + self.quiet_period_s

    def is_complete(self, last_instance_at: float, now: float) -> bool:
        """Whether the quiet period has passed since the last instance.

        >>> StudyAssembler(2.0).is_complete(last_instance_at=10.0, now=11.9)
        False
        >>> StudyAssembler(2.0).is_complete(last_instance_at=10.0, now=12.0)
        True
        """
        return now >= self.complete_at(last_instance_at)
