"""Demo-weight training on synthetic phantoms, and its held-out evaluation.

Not part of the installed product: the product never imports this package (an import-linter
contract checks it). Run it from the repository root as ``python -m training`` (``make
weights``); see :mod:`training.__main__`.

- ``training``: ``train_demo`` (a short CPU run per family, weights written atomically with a
  sha256 sidecar) and the held-out evaluation, which goes through the serving predictor.
- ``bundles``: MONAI bundles and ONNX / TorchScript exports of a network (issue 17's tests and
  benchmark).
- ``recipes``: the training batches and held-out studies of the families other than chest X-ray.
"""

from __future__ import annotations

__all__ = ["bundles", "recipes", "training"]
