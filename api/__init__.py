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
"""

__all__ = [
    "app",
    "audit",
    "auth",
    "context",
    "deployment",
    "dicomweb",
    "limits",
    "model_operations",
    "multipart",
    "operations",
    "ops",
    "problems",
    "refusals",
    "security",
    "tokens",
]
