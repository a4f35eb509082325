"""The HTTPS front door: REST operations and DICOMweb, a FastAPI app served as a Ray Serve ingress.

- ``app.py``: ``create_app(ctx)``, the FastAPI application (OpenAPI 3.1 at ``/openapi.json``)
- ``context.py``: ``ApiContext``, what one replica holds (ledger, intake, authenticator, operations)
- ``problems.py``: RFC 9457 problem details for every error
- ``security.py``: the FastAPI dependencies that authenticate and check scopes
- ``auth.py``: API tokens and OIDC bearer JWTs
- ``operations.py``: the IT operations service layer shared with the ``pacsai`` CLI; its model
  half is ``model_operations.py`` and what both refuse is ``refusals.py``
- ``ops.py``: the REST routes of the operations
- ``dicomweb.py``: STOW-RS in, QIDO-RS / WADO-RS of our results
- ``deployment.py``: the Ray Serve deployment (built by the composition root)
- ``audit.py``: every request audited with its subject; ``limits.py``: the body-size gate;
  ``multipart.py``: streaming multipart/related; ``tokens.py``: the token routes
- ``clinical.py``: readers' routes (issue 12): worklist by role, a result, its heatmap image, reviews
- ``events.py``: critical findings as server-sent events to readers' pages (issue 12)
- ``page.py``: the review page at ``/review/`` (static files in ``static/review/``; issue 12)
- ``success.py``: the success measures per model version and month, and agreement alerts (issue 12)
"""

__all__ = [
    "app",
    "audit",
    "auth",
    "clinical",
    "context",
    "deployment",
    "dicomweb",
    "events",
    "limits",
    "model_operations",
    "multipart",
    "operations",
    "ops",
    "page",
    "problems",
    "refusals",
    "security",
    "success",
    "tokens",
]
