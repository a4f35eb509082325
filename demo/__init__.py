"""The end-to-end demo and the peers it, the tests and the benchmarks drive: a local Orthanc,
dcmtk, a private PostgreSQL server and a local multi-node Ray cluster.

Not part of the product: the product never imports this package (an import-linter contract
checks it); it is installed beside it only for ``pacsai bench`` (``benchmarks.harness``). Run the demo from the repository root as ``python -m demo`` (``make
demo``); see :mod:`demo.__main__`.

- ``demo``: start Orthanc and the pipeline, send synthetic studies, print what came back.
- ``orthanc``: a private Orthanc process as the PACS (own config, storage and free ports).
- ``dcmtk``: dcmtk's command-line tools (``storescu``, ``dciodvfy``) with Nagle disabled.
- ``postgres``: a private PostgreSQL server (``initdb``/``pg_ctl``, temp dir, free port).
- ``modality``: MPPS N-CREATE / N-SET and IAN N-CREATE as a modality and a PACS send them.
- ``prometheus``: a private Prometheus (temp config and TSDB, free port, 1 s scrapes) and instant
  queries.
- ``raycluster``: a real multi-node Ray cluster on this machine (one ``ray start`` per node).
"""

from __future__ import annotations

__all__ = ["dcmtk", "demo", "modality", "orthanc", "postgres", "prometheus", "raycluster"]
