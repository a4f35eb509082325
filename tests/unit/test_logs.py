"""Logging: rotated files under the log dir, a quiet console, JSON lines for log shippers."""

from __future__ import annotations

import json
import logging
import os
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors import cli
from actors.adapters.logs import LogSettings, export_for_workers, install
from actors.stage import configure_logging
from core.config import LoggingConfig, StorageConfig


@pytest.fixture(autouse=True)
def restore_root_logging() -> Iterator[None]:
    """Each test installs handlers on the root logger: put back what pytest had."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(h)
        h.close()
    root.setLevel(level)


def test_the_file_rotates_at_max_bytes_and_keeps_backups(tmp_path: Path) -> None:
    path = install(LogSettings(directory=tmp_path / "logs", name="rot", max_bytes=2000, backups=2))
    assert path == tmp_path / "logs" / "rot.log"
    for i in range(200):
        logging.getLogger("actors.test").info("line %d of a log that has to rotate", i)
    assert sorted(p.name for p in path.parent.iterdir()) == ["rot.log", "rot.log.1", "rot.log.2"]
    assert "line 199" in path.read_text()
    assert all(p.stat().st_size <= 2000 for p in path.parent.iterdir())


def test_the_console_shows_warning_not_info_and_the_file_gets_both(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = install(LogSettings(directory=tmp_path, name="quiet"))
    log = logging.getLogger("actors.test")
    log.info("routine detail")
    log.warning("something to look at")
    err = capsys.readouterr().err
    assert "routine detail" not in err and "WARNING actors.test: something to look at" in err
    assert path is not None
    text = path.read_text()
    assert "INFO" in text and "routine detail" in text and "something to look at" in text


def test_third_party_info_never_reaches_the_console_even_verbose(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = install(LogSettings(directory=tmp_path, name="verbose", console_level="INFO"))
    for name in ("highdicom.sr", "httpx", "pynetdicom.assoc", "ray.serve", "urllib3.connectionpool", "filelock"):
        logging.getLogger(name).info("chatter from %s", name)
    logging.getLogger("pynetdicom").warning("association aborted")
    logging.getLogger("core.routing").info("ours at INFO")
    err = capsys.readouterr().err
    assert "chatter" not in err
    assert "association aborted" in err and "ours at INFO" in err
    assert path is not None and "chatter from highdicom.sr" in path.read_text()  # the file has it all


def test_json_lines_parse_with_their_fields(tmp_path: Path) -> None:
    path = install(LogSettings(directory=tmp_path, name="a/validator-1", json_lines=True))
    log = logging.getLogger("actors.validator")
    log.info("job %d validated", 7)
    try:
        raise ValueError("bad pixel data")
    except ValueError:
        log.exception("job %d failed", 8)
    assert path == tmp_path / "a-validator-1.log"
    first, second = [json.loads(line) for line in path.read_text().splitlines()]
    assert set(first) == {"ts", "level", "logger", "message", "process", "actor"}
    assert (first["level"], first["logger"], first["message"]) == ("INFO", "actors.validator", "job 7 validated")
    assert (first["process"], first["actor"]) == (os.getpid(), "a/validator-1")
    assert first["ts"].endswith("Z") and first["ts"][10] == "T"
    assert second["level"] == "ERROR" and "ValueError: bad pixel data" in second["exc"]


def test_settings_come_from_the_config(tmp_path: Path) -> None:
    storage = StorageConfig(var_dir=str(tmp_path / "var"))
    default = LogSettings.from_config(LoggingConfig(), storage)
    assert (default.directory, default.console_level, default.level) == (tmp_path / "var" / "logs", "WARNING", "INFO")
    assert LogSettings.from_config(LoggingConfig(), storage, verbose=True).console_level == "INFO"
    shipped = LogSettings.from_config(LoggingConfig(dir=str(tmp_path / "x"), json_lines=True, backups=1), storage)
    assert (shipped.directory, shipped.json_lines, shipped.backups) == (tmp_path / "x", True, 1)


def test_a_second_install_replaces_the_first(tmp_path: Path) -> None:
    install(LogSettings(directory=tmp_path, name="one"))
    install(LogSettings(directory=tmp_path, name="two"))
    ours = [h for h in logging.getLogger().handlers if getattr(h, "_pacsai_handler", False)]
    assert len(ours) == 2  # one console, one file
    logging.getLogger("actors.test").warning("after the second install")
    assert "after the second" not in (tmp_path / "one.log").read_text()
    assert "after the second" in (tmp_path / "two.log").read_text()


def test_an_unwritable_log_dir_leaves_the_console(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert install(LogSettings(directory=blocker / "logs")) is None
    assert "console only" in capsys.readouterr().err


def test_an_actor_logs_to_its_own_file_with_what_the_driver_exported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("INFO")  # the old one-argument call still works: console only
    for key in ("DIR", "CONSOLE_LEVEL", "JSON", "MAX_BYTES", "BACKUPS"):
        monkeypatch.delenv(f"PACSAI_LOG_{key}", raising=False)
    monkeypatch.delenv("RAY_SERVE_LOG_TO_STDERR", raising=False)
    configure_logging("INFO", log_dir=tmp_path / "var-logs", name="router")
    logging.getLogger("actors.router").info("routed")
    assert "routed" in (tmp_path / "var-logs" / f"router-{os.getpid()}.log").read_text()
    export_for_workers(LogSettings(directory=tmp_path / "driver", json_lines=True))
    assert os.environ["RAY_SERVE_LOG_TO_STDERR"] == "0"  # Serve's per-request INFO stays in Ray's files
    configure_logging("INFO", log_dir=tmp_path / "var-logs", name="router")
    logging.getLogger("actors.router").info("routed again")
    [line] = (tmp_path / "driver" / f"router-{os.getpid()}.log").read_text().splitlines()
    assert json.loads(line)["message"] == "routed again"
    assert "routed" not in capsys.readouterr().err


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "pacsai.yaml"
    path.write_text(f"storage: {{var_dir: {tmp_path / 'var'}}}\n")
    return path


@pytest.mark.parametrize("flags", [[], ["--verbose"], ["-v"]])
def test_pacsai_logs_to_the_var_dir_and_verbose_shows_info(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str]
) -> None:
    assert cli.main([*flags, "tokens", "list", "--config", str(_config(tmp_path))]) == 0
    logging.getLogger("actors.test").info("an INFO line")
    err = capsys.readouterr().err
    assert ("an INFO line" in err) is bool(flags)
    assert "an INFO line" in (tmp_path / "var" / "logs" / "pacsai.log").read_text()


def test_verbose_after_the_sub_command_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["tokens", "list", "--config", str(_config(tmp_path)), "-v"]) == 0
    logging.getLogger("actors.test").info("an INFO line")
    assert "an INFO line" in capsys.readouterr().err


def test_ray_serves_own_stderr_logger_is_routed_through_ours(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Importing ray.serve gives its logger a stderr handler at INFO, cut off from the root."""
    serve = logging.getLogger("ray.serve")
    monkeypatch.setattr(serve, "handlers", [logging.StreamHandler()])
    monkeypatch.setattr(serve, "propagate", False)
    monkeypatch.setattr(serve, "level", logging.INFO)
    monkeypatch.setattr(serve, "_pacsai_handler", False, raising=False)
    monkeypatch.setitem(sys.modules, "ray.serve", types.ModuleType("ray.serve"))
    path = install(LogSettings(directory=tmp_path, name="driver"))
    serve.info("Application 'model-chest_xray' is ready.")
    serve.warning("Deployment is unhealthy")
    err = capsys.readouterr().err
    assert "is ready" not in err and "WARNING ray.serve: Deployment is unhealthy" in err
    assert path is not None and "is ready" in path.read_text()
