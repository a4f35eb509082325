"""Networks, DICOM-to-tensor preprocessing, predictors, weight registry and Grad-CAM.

Only production code: nothing here imports Ray or pynetdicom, nor the synthetic data, training
or demo packages (import-linter contracts check both): ``serve/`` wraps these classes in Ray
Serve deployments. Phantoms and synthetic DICOM live in ``synthetic/``, demo-weight training in
``training/``. Submodules are imported explicitly.

- ``preprocessing``: DICOM radiograph to a normalised ``(1, H, W)`` float32 array.
- ``volumes``: every frame of every instance into volumes ordered along the slice normal.
- ``resampling``: exact, invertible resampling onto the network grid; intensity windows.
- ``quality``: image-quality flags (motion, incomplete series) from measurements.
- ``networks``: ``build_network(family, entry)`` and each family's Grad-CAM layer.
- ``registry``: weights files checked against their sha256, then loaded; ``weights``: the check
  alone, without torch (``pacsai up`` runs it before Ray starts).
- ``gradcam``: MONAI Grad-CAM heatmaps and the region they point at.
- ``predictor``, ``volume_predictor``: radiograph, slice-wise and volumetric predictors
  (prepare, forward, finish, self_test); ``families``: which predictor serves each family.
- ``bundles``: what families from MONAI bundles and exported networks need at run time: ONNX
  networks (onnxruntime), a bundle's ``network_def`` and its own preprocessing transforms.
"""

from __future__ import annotations

__all__ = [
    "bundles",
    "families",
    "gradcam",
    "networks",
    "predictor",
    "preprocessing",
    "quality",
    "registry",
    "resampling",
    "volume_predictor",
    "volumes",
    "weights",
]
