"""Networks, DICOM-to-tensor preprocessing, predictors, weight registry and demo training.

Nothing here imports Ray or pynetdicom (an import-linter contract checks it): ``serve/`` wraps
these classes in Ray Serve deployments. Submodules are imported explicitly, so that importing
``models.phantoms`` or ``models.synthetic_dicom`` does not pull in torch.

- ``phantoms``, ``limb_phantoms``, ``head_phantoms``, ``brain_phantoms``, ``aorta_phantoms``:
  synthetic images and volumes with known lesions (numpy only).
- ``synthetic_dicom``, ``synthetic_series``, ``synthetic_studies``: valid DICOM (radiographs,
  CT/MR series, enhanced multi-frame) built from phantoms, with their ground truth.
- ``preprocessing``: DICOM radiograph to a normalised ``(1, H, W)`` float32 array.
- ``volumes``: every frame of every instance into volumes ordered along the slice normal.
- ``resampling``: exact, invertible resampling onto the network grid; intensity windows.
- ``quality``: image-quality flags (motion, incomplete series) from measurements.
- ``networks``: ``build_network(family, entry)`` and each family's Grad-CAM layer.
- ``registry``: weights files checked against their sha256, then loaded.
- ``gradcam``: MONAI Grad-CAM heatmaps and the region they point at.
- ``predictor``, ``volume_predictor``: radiograph, slice-wise and volumetric predictors
  (prepare, forward, finish, self_test); ``families``: which predictor serves each family.
- ``training``, ``recipes``: ``train_demo`` on freshly drawn phantoms, per family.
"""

from __future__ import annotations

__all__ = [
    "aorta_phantoms",
    "brain_phantoms",
    "families",
    "gradcam",
    "head_phantoms",
    "limb_phantoms",
    "networks",
    "phantoms",
    "predictor",
    "preprocessing",
    "quality",
    "recipes",
    "registry",
    "resampling",
    "synthetic_dicom",
    "synthetic_series",
    "synthetic_studies",
    "training",
    "volume_predictor",
    "volumes",
]
