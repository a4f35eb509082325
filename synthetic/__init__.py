"""Synthetic phantoms and synthetic DICOM with known findings: test, demo and training data.

Not part of the installed product: the product never imports this package (an import-linter
contract checks it), and this package never imports Ray, pynetdicom, ``actors`` or ``serve``.
It runs from the repository root (tests, benchmarks, ``python -m training``, ``python -m demo``).
Submodules are imported explicitly; none of them imports torch.

- ``phantoms``, ``limb_phantoms``, ``head_phantoms``, ``brain_phantoms``, ``aorta_phantoms``:
  synthetic images and volumes with known lesions (numpy only).
- ``synthetic_dicom``, ``synthetic_series``, ``synthetic_studies``: valid DICOM (radiographs,
  CT/MR series, enhanced multi-frame) built from phantoms, with their ground truth.
- ``bundles``: the files of MONAI bundles and exported networks with known findings (metadata,
  inference config, spec YAML, sha256 sidecar); callers that may import torch make the networks.
- ``procedure_steps``: what a modality and a PACS say about such a study (MPPS N-CREATE /
  N-SET, IAN), and a series split as a scanner sends several reconstructions.
"""

from __future__ import annotations

__all__ = [
    "aorta_phantoms",
    "brain_phantoms",
    "bundles",
    "head_phantoms",
    "limb_phantoms",
    "phantoms",
    "procedure_steps",
    "synthetic_dicom",
    "synthetic_series",
    "synthetic_studies",
]
