"""A local Prometheus process (Debian's ``prometheus``), for the demo and the tests.

Each instance gets its own temporary config, TSDB directory and free port, and scrapes its
targets every second, so a test sees a recorded value within a couple of seconds. ``query``
runs an instant query over the HTTP API and raises with Prometheus's own message when the
PromQL does not parse.

>>> PrometheusProcess(Path("/tmp/p"), targets=("127.0.0.1:8080",), port=9999).url
'http://127.0.0.1:9999'
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import yaml

from demo.orthanc import free_port, wait_until_ready

__all__ = ["PrometheusError", "PrometheusProcess", "prometheus_binary"]

logger = logging.getLogger(__name__)


class PrometheusError(RuntimeError):
    """Prometheus refused a query (its ``errorType`` and ``error``) or is not running."""


def prometheus_binary() -> str | None:
    """Return the Prometheus executable, if installed (Debian package ``prometheus``)."""
    return shutil.which("prometheus")


class PrometheusProcess:
    """Start, stop and query a private Prometheus.

    Args:
        workdir: Holds the config, the TSDB and the log (a temporary directory if None; it is
            removed on ``stop``).
        targets: ``host:port`` endpoints to scrape (e.g. Ray's metrics export ports).
        port: Its HTTP port (a free one if 0).
        scrape_interval_s: Seconds between scrapes.
    """

    def __init__(
        self,
        workdir: Path | None = None,
        targets: tuple[str, ...] | list[str] = (),
        port: int = 0,
        scrape_interval_s: float = 1.0,
    ) -> None:
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="pacsai-prometheus-")) if workdir is None else workdir
        self.targets = tuple(targets)
        self.port = port or free_port()
        self.scrape_interval_s = scrape_interval_s
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Base URL of the HTTP API."""
        return f"http://127.0.0.1:{self.port}"

    def _write_config(self) -> Path:
        interval = f"{round(self.scrape_interval_s * 1000)}ms"
        config = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "scrape_configs": [{"job_name": "pacsai", "static_configs": [{"targets": list(self.targets)}]}],
        }
        path = self.workdir / "prometheus.yml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def start(self, timeout_s: float = 30.0) -> PrometheusProcess:
        """Start Prometheus and wait until it is ready.

        Raises:
            RuntimeError: Prometheus is not installed, exits, or is not ready in time.
        """
        binary = prometheus_binary()
        if binary is None:
            raise RuntimeError("Prometheus is not installed (Debian package 'prometheus')")
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = [
            binary,
            f"--config.file={self._write_config()}",
            f"--storage.tsdb.path={self.workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]
        log = (self.workdir / "prometheus.log").open("ab")
        self._proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        if not wait_until_ready(self._proc, f"{self.url}/-/ready", timeout_s, self.workdir / "prometheus.log"):
            self.stop()
            raise RuntimeError(f"Prometheus was not ready on {self.url} within {timeout_s} s")
        return self

    def stop(self) -> None:
        """Stop Prometheus (SIGTERM, then SIGKILL) and remove a temporary workdir."""
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
            self._proc = None
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> PrometheusProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ HTTP API
    def _get(self, path: str, params: dict[str, str] | None = None) -> Any:
        try:
            r = httpx.get(f"{self.url}{path}", params=params, timeout=10.0)
        except httpx.HTTPError as exc:
            raise PrometheusError(f"{self.url}{path}: {type(exc).__name__}: {exc}") from exc
        try:
            body = r.json()
        except ValueError as exc:
            raise PrometheusError(f"{path}: HTTP {r.status_code}, not JSON: {r.text[:200]}") from exc
        if body.get("status") != "success":
            raise PrometheusError(f"{body.get('errorType', r.status_code)}: {body.get('error', r.text[:200])}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Run an instant query; return its result list (``[{"metric": {...}, "value": [t, v]}]``).

        A scalar or string result comes back as a one-element list of ``{"value": [t, v]}``.

        Raises:
            PrometheusError: The PromQL does not parse or cannot run (``bad_data: ...`` as
                Prometheus says it), or Prometheus cannot be reached.
        """
        data = self._get("/api/v1/query", {"query": expr})
        if data["resultType"] in ("scalar", "string"):
            return [{"value": data["result"]}]
        return list(data["result"])

    def targets_health(self) -> dict[str, str]:
        """Each active target's scrape URL and health (``up``, ``down`` or ``unknown``)."""
        data = self._get("/api/v1/targets", {"state": "active"})
        return {t["scrapeUrl"]: t["health"] for t in data["activeTargets"]}

    def wait_for_targets_up(self, timeout_s: float = 30.0) -> None:
        """Wait until every configured target has been scraped successfully.

        Raises:
            PrometheusError: Some target is not up within ``timeout_s`` (the message lists them).
        """
        deadline = time.monotonic() + timeout_s
        health: dict[str, str] = {}
        while time.monotonic() < deadline:
            health = self.targets_health()
            if len(health) >= len(self.targets) and all(h == "up" for h in health.values()):
                return
            time.sleep(0.2)
        raise PrometheusError(f"targets not up within {timeout_s} s: {health or 'none discovered'}")
