"""``pacsai grafana provision`` against a local fake Grafana, and every panel's PromQL against a
real Prometheus (Debian's; started with ``demo.prometheus``).

Grafana itself cannot be installed here (it is not in Debian, PyPI or npm), so a small HTTP
server plays the part of its API: the endpoints grafana-client calls for provisioning
(``GET``/``POST /api/folders``, ``POST /api/dashboards/db`` with ``overwrite``, ``GET
/api/search``), a bearer-token check, and Grafana's 412 for an existing uid without overwrite.
It records what it receives.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from demo.orthanc import free_port
from demo.prometheus import PrometheusError, PrometheusProcess, prometheus_binary
from ops.cli import register
from ops.dashboards import DASHBOARD_TITLES, panel_queries
from tests.pki import Pki, make_pki

pytestmark = pytest.mark.integration

TOKEN = "glsa_test-token-do-not-print"
ENV = "PACSAI_TEST_GRAFANA_TOKEN"


@dataclass
class FakeGrafana:
    """What the fake Grafana holds and was sent."""

    token: str
    folders: dict[str, str] = field(default_factory=dict)  # uid -> title
    dashboards: dict[str, dict[str, Any]] = field(default_factory=dict)  # uid -> {dashboard, folderUid, version}
    requests: list[tuple[str, str]] = field(default_factory=list)
    url: str = ""

    def handle(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        if path == "/api/folders" and method == "GET":
            return 200, [{"id": n, "uid": uid, "title": t} for n, (uid, t) in enumerate(self.folders.items(), 1)]
        if path == "/api/folders" and method == "POST":
            uid = body.get("uid") or f"f{len(self.folders) + 1}"
            if uid in self.folders or body["title"] in self.folders.values():
                return 409, {"message": "a folder with the same name or uid already exists"}
            self.folders[uid] = body["title"]
            return 200, {"id": len(self.folders), "uid": uid, "title": body["title"]}
        if path == "/api/dashboards/db" and method == "POST":
            return self._save(body)
        if path == "/api/search" and method == "GET":
            uids = set(query.get("folderUIDs", []))
            return 200, [
                {"uid": uid, "title": d["dashboard"]["title"], "type": "dash-db", "folderUid": d["folderUid"]}
                for uid, d in self.dashboards.items()
                if not uids or d["folderUid"] in uids
            ]
        return 404, {"message": "Not found"}

    def _save(self, body: dict[str, Any]) -> tuple[int, Any]:
        board = body["dashboard"]
        uid = board["uid"]
        if body.get("folderUid") not in self.folders:
            return 400, {"message": "folder not found"}
        old = self.dashboards.get(uid)
        if old is not None and not body.get("overwrite"):
            return 412, {"message": "A dashboard with the same uid already exists", "status": "name-exists"}
        version = 1 if old is None else old["version"] + 1
        self.dashboards[uid] = {"dashboard": board, "folderUid": body["folderUid"], "version": version}
        return 200, {
            "id": len(self.dashboards),
            "uid": uid,
            "url": f"/d/{uid}",
            "status": "success",
            "version": version,
        }


def _handler(grafana: FakeGrafana) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            parts = urlsplit(self.path)
            grafana.requests.append((self.command, parts.path))
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            if self.headers.get("Authorization") != f"Bearer {grafana.token}":
                status, answer = 401, {"message": "Unauthorized"}
            else:
                status, answer = grafana.handle(self.command, parts.path, parse_qs(parts.query), body)
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@contextlib.contextmanager
def _serving(fake: FakeGrafana, pki: Pki | None = None) -> Iterator[FakeGrafana]:
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _handler(fake))
    if pki is None:
        fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    else:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(pki.server_cert, pki.server_key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        fake.url = f"https://localhost:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def grafana() -> Iterator[FakeGrafana]:
    with _serving(FakeGrafana(TOKEN)) as fake:
        yield fake


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pacsai")
    register(parser.add_subparsers(dest="command", required=True))
    return parser


def _run(*argv: str) -> int:
    args = _parser().parse_args(list(argv))
    return int(args.func(args))


def _provision(grafana: FakeGrafana, *extra: str) -> int:
    return _run("grafana", "provision", "--url", grafana.url, "--token-env", ENV, *extra)


def test_provision_puts_the_five_dashboards_in_the_folder_and_reruns_idempotently(
    grafana: FakeGrafana, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(ENV, TOKEN)
    assert _provision(grafana) == 0
    assert grafana.folders == {"pacs-ai": "PACS-AI"}
    assert {uid: d["dashboard"]["title"] for uid, d in grafana.dashboards.items()} == DASHBOARD_TITLES
    assert all(d["folderUid"] == "pacs-ai" and d["version"] == 1 for d in grafana.dashboards.values())
    first = {uid: d["dashboard"] for uid, d in grafana.dashboards.items()}

    assert _provision(grafana) == 0  # again: same folder, same uids, overwritten
    assert grafana.folders == {"pacs-ai": "PACS-AI"}
    assert {uid: d["dashboard"] for uid, d in grafana.dashboards.items()} == first
    assert all(d["version"] == 2 for d in grafana.dashboards.values())
    assert grafana.requests.count(("POST", "/api/folders")) == 1
    assert grafana.requests.count(("POST", "/api/dashboards/db")) == 10
    out = capsys.readouterr()
    assert "5 dashboards in folder 'PACS-AI'" in out.out and f"{grafana.url}/d/pacsai-overview" in out.out
    assert TOKEN not in out.out + out.err


def test_provision_uses_an_existing_folder_found_by_title(
    grafana: FakeGrafana, monkeypatch: pytest.MonkeyPatch
) -> None:
    grafana.folders["hand-made"] = "Radiology AI"
    monkeypatch.setenv(ENV, TOKEN)
    assert _provision(grafana, "--folder", "Radiology AI") == 0
    assert grafana.folders == {"hand-made": "Radiology AI"}
    assert {d["folderUid"] for d in grafana.dashboards.values()} == {"hand-made"}


def test_a_wrong_token_is_a_clear_error_with_exit_status_1(
    grafana: FakeGrafana, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = "glsa_wrong-secret-value"
    monkeypatch.setenv(ENV, wrong)
    assert _provision(grafana) == 1
    err = capsys.readouterr().err
    assert "Grafana refused the token (401 Unauthorized)" in err and grafana.url in err
    assert wrong not in err and TOKEN not in err
    assert not grafana.dashboards


def test_a_missing_token_variable_is_named_and_nothing_is_sent(
    grafana: FakeGrafana, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(ENV, raising=False)
    assert _provision(grafana) == 2
    err = capsys.readouterr().err
    assert f"{ENV}: not set" in err
    assert grafana.requests == []


def test_an_unreachable_grafana_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(ENV, TOKEN)
    assert _run("grafana", "provision", "--url", f"http://127.0.0.1:{free_port()}", "--token-env", ENV) == 1
    assert "cannot reach Grafana" in capsys.readouterr().err


def test_a_grafana_behind_a_private_ca_needs_its_ca_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pki = make_pki(tmp_path / "pki")
    monkeypatch.setenv(ENV, TOKEN)
    with _serving(FakeGrafana(TOKEN), pki) as fake:
        assert _provision(fake) == 1  # the private CA is not in the system's trust store
        assert "cannot reach Grafana" in capsys.readouterr().err
        assert _provision(fake, "--ca-file", str(pki.ca)) == 0
        assert set(fake.dashboards) == set(DASHBOARD_TITLES)


def test_export_writes_the_provisioning_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run("grafana", "export", "--dir", str(tmp_path)) == 0
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert written == sorted(
        [f"dashboards/{uid}.json" for uid in DASHBOARD_TITLES]
        + ["dashboards/pacsai.yaml", "datasources/prometheus.yaml"]
    )
    assert "wrote 7 files" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["grafana"], ["grafana", "provision"], ["grafana", "export"]])
def test_each_command_has_an_example_in_its_help(argv: list[str]) -> None:
    parser = _parser()
    for name in argv:  # walk down to the sub-parser (argparse has no public way)
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    examples = [line for line in parser.format_help().splitlines() if line.startswith("Example:")]
    assert examples and f"pacsai {' '.join(argv)}" in examples[0]


# ---------------------------------------------------------------- the PromQL, in a real Prometheus
needs_prometheus = pytest.mark.skipif(prometheus_binary() is None, reason="Debian package 'prometheus' not installed")


@pytest.fixture(scope="module")
def prometheus() -> Iterator[PrometheusProcess]:
    if prometheus_binary() is None:
        pytest.skip("Debian package 'prometheus' not installed")
    with PrometheusProcess() as prom:
        yield prom


@needs_prometheus
def test_every_panel_query_parses_in_prometheus(prometheus: PrometheusProcess) -> None:
    failed = {}
    for q in panel_queries():
        try:
            assert isinstance(prometheus.query(q.expr), list)
        except PrometheusError as exc:
            failed[f"{q.dashboard_uid} / {q.panel_title}"] = str(exc)
    assert not failed, failed


@needs_prometheus
def test_a_bad_query_raises_with_prometheus_message(prometheus: PrometheusProcess) -> None:
    with pytest.raises(PrometheusError, match="bad_data: .*parse error"):
        prometheus.query("sum by (stage (ray_pacsai_jobs)")
    assert prometheus.query("1 + 1")[0]["value"][1] == "2"


RAY_LABELS = 'NodeAddress="127.0.0.1",WorkerId="w1",SessionName="s1",Component="core_worker"'
SERVE_LABELS = 'application="model-chest",deployment="ModelDeployment",replica="r1",route="/"'


def _ray_shaped_exposition(n: int) -> str:
    """Every catalogue metric and the dashboards' Serve metrics as Ray's exporter shows them,
    counters and histograms grown by ``n`` (the scrape number), so rates are positive."""
    from core.metrics import METRICS, MetricKind, prometheus_name

    lines = []
    for name, spec in METRICS.items():
        labels = ",".join([RAY_LABELS] + [f'{key}="demo"' for key in spec.labels])
        series = prometheus_name(name)
        if spec.kind is MetricKind.HISTOGRAM:
            lines += [f'{series}_bucket{{{labels},le="{b}"}} {n}' for b in (*spec.buckets, "+Inf")]
            lines += [f"{series}_sum{{{labels}}} {n * 0.004}", f"{series}_count{{{labels}}} {n}"]
        else:
            lines.append(f"{series}{{{labels}}} {n}")
    serve = f"{RAY_LABELS},{SERVE_LABELS}"
    lines += [f"ray_serve_deployment_request_counter_total{{{serve}}} {n}"]
    lines += [f'ray_serve_deployment_processing_latency_ms_bucket{{{serve},le="{b}"}} {n}' for b in (10, 100, "+Inf")]
    lines += [
        f"ray_serve_deployment_replica_healthy{{{serve}}} 1",
        f"ray_serve_replica_processing_queries{{{serve}}} 1",
    ]
    return "\n".join(lines) + "\n"


@pytest.fixture
def ray_shaped_exporter() -> Iterator[str]:
    scrapes = iter(range(1, 1_000_000))

    class Exporter(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            data = _ray_shaped_exposition(next(scrapes)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Exporter)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(5)


@needs_prometheus
def test_every_panel_query_returns_data_from_ray_shaped_series(ray_shaped_exporter: str) -> None:
    """The series names and label matchers match what Ray exports (the live pipeline's test
    checks real values; this one runs in seconds on synthetic series; the unit test checks the
    ``by (...)`` labels)."""
    with PrometheusProcess(targets=[ray_shaped_exporter]) as prom:
        prom.wait_for_targets_up(timeout_s=20)
        deadline = time.monotonic() + 10
        while not prom.query("count_over_time(ray_pacsai_stage_jobs_total[5m]) >= 2") and time.monotonic() < deadline:
            time.sleep(0.1)  # rate() needs two scrapes
        empty = [f"{q.dashboard_uid} / {q.panel_title}: {q.expr}" for q in panel_queries() if not prom.query(q.expr)]
    assert not empty, empty
