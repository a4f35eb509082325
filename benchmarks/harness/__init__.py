"""The benchmark harness behind ``pacsai bench`` and the shared code of ``benchmarks/bench_*.py``.

- :mod:`~benchmarks.harness.record`: the JSON line, device, commit, percentiles, CDF;
- :mod:`~benchmarks.harness.load`: study mix and the load generator (C-STORE, STOW-RS, storescu);
- :mod:`~benchmarks.harness.baselines`: the bare fsync SCP and the listener alone;
- :mod:`~benchmarks.harness.stack`: Orthanc and the pipeline on this machine;
- :mod:`~benchmarks.harness.spans`: per-stage spans from the audit trail, Parquet;
- :mod:`~benchmarks.harness.sampler`: queue depth and replicas once a second;
- :mod:`~benchmarks.harness.report`: ``summary.json`` and ``report.png``;
- :mod:`~benchmarks.harness.cli`: the ``bench`` sub-command.

Submodules are imported where used (the package import stays light: no Ray, no pynetdicom).
"""

from __future__ import annotations

__all__ = ["baselines", "cli", "load", "record", "report", "sampler", "spans", "stack"]
