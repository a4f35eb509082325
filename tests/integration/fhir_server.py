"""A small real FHIR endpoint for tests: takes transaction Bundles over HTTP, validates them
with fhir.resources (R4 structures, the R4B package) and keeps what it accepted."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

__all__ = ["FhirTestServer"]


class FhirTestServer:
    """POST [base] with a transaction Bundle; PUT entries are stored by type and id."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}/fhir"
        self.bundles: list[dict[str, Any]] = []
        self.resources: dict[str, dict[str, Any]] = {}
        self.errors: list[str] = []
        self.force_status: int | None = None
        """Answer every request with this status (and an OperationOutcome) when set."""
        self.force_body: bytes | None = None
        """Answer every request with these bytes as the body when set (with ``force_status``, else 200)."""
        self._httpd: ThreadingHTTPServer | None = None

    def start(self) -> FhirTestServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                status, answer = server.accept(self.path, self.headers.get("Content-Type", ""), body)
                data = json.dumps(answer).encode() if server.force_body is None else server.force_body
                self.send_response(status)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def accept(self, path: str, content_type: str, body: bytes) -> tuple[int, dict[str, Any]]:
        if self.force_status is not None:
            return self.force_status, {
                "resourceType": "OperationOutcome",
                "issue": [{"severity": "error", "code": "forbidden", "diagnostics": "forced by the test"}],
            }
        try:
            if path.rstrip("/") != "/fhir" or "application/fhir+json" not in content_type:
                raise ValueError(f"POST {path} ({content_type}); expected /fhir, fhir+json")
            bundle = json.loads(body)
            get_fhir_model_class("Bundle").model_validate(bundle)
            if bundle.get("type") != "transaction":
                raise ValueError(f"Bundle.type {bundle.get('type')!r}; expected transaction")
            for entry in bundle["entry"]:
                res = entry["resource"]
                get_fhir_model_class(res["resourceType"]).model_validate(res)
                if entry["request"] != {"method": "PUT", "url": f"{res['resourceType']}/{res['id']}"}:
                    raise ValueError(f"request {entry['request']}; expected a PUT to the id")
        except (ValueError, KeyError, ValidationError) as exc:
            self.errors.append(str(exc)[:500])
            return 400, {
                "resourceType": "OperationOutcome",
                "issue": [{"severity": "error", "code": "invalid", "diagnostics": str(exc)[:300]}],
            }
        self.bundles.append(bundle)
        for entry in bundle["entry"]:
            res = entry["resource"]
            self.resources[f"{res['resourceType']}/{res['id']}"] = res
        return 200, {
            "resourceType": "Bundle",
            "type": "transaction-response",
            "entry": [{"response": {"status": "200 OK"}} for _ in bundle["entry"]],
        }

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [r for key, r in self.resources.items() if key.startswith(f"{kind}/")]
