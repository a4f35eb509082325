"""Ray Serve deployments: one per model family, each wrapping a Ray-free predictor of ``models``.

- ``app``: ``build_app(family, entry)`` applies the entry's Serve options (resources, queue bounds,
  replicas or autoscaling); ``FAMILIES`` maps a family key to its deployment.
- ``deployment``: ``ModelDeployment``, the one deployment class of every family (cross-request
  ``@serve.batch`` of network inputs: radiograph frames, CT slices or volumes; Grad-CAM after).
- ``weights``: ``check_weights(cfg)``, every weights file checked before Ray starts (no torch).

``serve`` may import ``core`` and ``models``, never ``actors``: the pipeline reaches a deployment
through its Serve handle (application ``app_name(family)``).
"""

from __future__ import annotations

__all__ = ["app", "deployment", "weights"]
