"""Networks, DICOM-to-tensor preprocessing, predictors, weight registry and demo training.

Nothing here imports Ray or pynetdicom (an import-linter contract checks it): ``serve/`` wraps
these classes in Ray Serve deployments. Submodules are imported explicitly, so that importing
``models.phantoms`` or ``models.synthetic_dicom`` does not pull in torch.

- ``phantoms``: synthetic chest radiographs with known lesions (numpy only).
- ``synthetic_dicom``: valid DX/CR/CT DICOM datasets built from synthetic pixels.
- ``preprocessing``: DICOM bytes to a normalised ``(1, H, W)`` float32 array.
- ``networks``: ``build_network(family, entry)``.
- ``registry``: weights files checked against their sha256, then loaded.
- ``predictor``: ``ChestXrayPredictor`` (preprocess, forward, to_prediction, self_test).
- ``training``: ``train_demo`` on freshly drawn phantoms.
"""

from __future__ import annotations

__all__ = [
    "networks",
    "phantoms",
    "predictor",
    "preprocessing",
    "registry",
    "synthetic_dicom",
    "training",
]
