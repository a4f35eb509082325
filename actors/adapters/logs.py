"""Where log records go: rotated files under the log dir, and a quiet console.

Every process (the ``pacsai`` driver, each Ray actor) writes its own rotated file under
``logging.dir`` (unset: ``<storage.var_dir>/logs``) at ``logging.level``, as text or, with
``logging.json_lines``, one JSON object per line for log shippers. The console (stderr) gets
only ``logging.console_level`` (WARNING unless ``pacsai --verbose``); below WARNING, only our
own packages reach it, never the INFO chatter of highdicom, httpx, pynetdicom or Ray Serve.

Ray actors inherit the driver's environment at ``ray.init`` (a local Ray), so the driver
exports its settings (``export_for_workers``) and each actor's ``configure_logging`` reads
them back (``LogSettings.from_environment``). What is logged is unchanged: UIDs and hashed
accessions, never names or patient IDs (pynetdicom's identifier logging is off everywhere;
``logging.log_identifiers: true`` is refused by the config).
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from core.config import LoggingConfig, StorageConfig

__all__ = [
    "ConsoleFilter",
    "JsonLinesFormatter",
    "LogSettings",
    "OUR_LOGGERS",
    "export_for_workers",
    "install",
    "log_dir",
]

logger = logging.getLogger(__name__)

OUR_LOGGERS = frozenset(
    {"pacsai", "actors", "api", "core", "demo", "models", "serve", "state", "synthetic", "training", "__main__"}
)
"""Top-level logger names of this project: the ones whose INFO may reach the console."""

TEXT_FORMAT = "%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s"
CONSOLE_FORMAT = "%(levelname)s %(name)s: %(message)s"

_ENV = "PACSAI_LOG_"  # the variables export_for_workers sets: PACSAI_LOG_DIR, ..._JSON, ...
_MARK = "_pacsai_handler"  # set on the handlers install() adds, so a second call replaces them


@dataclass(frozen=True, slots=True)
class LogSettings:
    """What one process's logging looks like.

    Attributes:
        level: What the file gets (``logging.level``).
        console_level: What stderr gets (``logging.console_level``; ``--verbose``: INFO).
        directory: Where the rotated file goes; ``None``: no file (console only).
        name: The process's name: the file's stem and JSON lines' ``actor`` field.
        json_lines: Write the file as JSON lines.
        max_bytes: Rotate the file at this size.
        backups: Rotated files kept.
        per_process: Put the pid in the file name (actors: a restart is a new process, and two
            processes must never rotate one file).
    """

    level: str = "INFO"
    console_level: str = "WARNING"
    directory: Path | None = None
    name: str = "pacsai"
    json_lines: bool = False
    max_bytes: int = 10 << 20
    backups: int = 5
    per_process: bool = False

    @classmethod
    def from_config(
        cls, cfg: LoggingConfig, storage: StorageConfig, name: str = "pacsai", verbose: bool = False
    ) -> LogSettings:
        """The settings of ``cfg`` (``verbose``: console at INFO, or lower if so configured)."""
        console = cfg.console_level
        if verbose and logging.getLevelName(console) > logging.INFO:
            console = "INFO"
        return cls(cfg.level, console, log_dir(cfg, storage), name, cfg.json_lines, cfg.max_bytes, cfg.backups, False)

    @classmethod
    def from_environment(cls, level: str, directory: Path | None, name: str) -> LogSettings:
        """An actor's settings: its level and name, the rest as the driver exported them."""
        env = os.environ
        exported = env.get(f"{_ENV}DIR")
        return cls(
            level=level,
            console_level=env.get(f"{_ENV}CONSOLE_LEVEL", "WARNING"),
            directory=Path(exported) if exported else directory,
            name=name,
            json_lines=env.get(f"{_ENV}JSON", "0") == "1",
            max_bytes=int(env.get(f"{_ENV}MAX_BYTES", str(10 << 20))),
            backups=int(env.get(f"{_ENV}BACKUPS", "5")),
            per_process=True,
        )

    @property
    def file(self) -> Path | None:
        """The log file (``<name>.log``, or ``<name>-<pid>.log`` per process)."""
        if self.directory is None:
            return None
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", self.name) or "process"
        return self.directory / (f"{stem}-{os.getpid()}.log" if self.per_process else f"{stem}.log")


def log_dir(cfg: LoggingConfig, storage: StorageConfig) -> Path:
    """``logging.dir``, or ``<storage.var_dir>/logs``."""
    return Path(cfg.dir) if cfg.dir else Path(storage.var_dir) / "logs"


class JsonLinesFormatter(logging.Formatter):
    """One JSON object per record: ``ts``, ``level``, ``logger``, ``message``, ``process``,
    ``actor`` (when known) and ``exc`` (a traceback, when there is one)."""

    def __init__(self, actor: str = "") -> None:
        super().__init__()
        self._actor = actor

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as one line of JSON."""
        ms = int(record.msecs)
        out: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{ms:03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        if self._actor:
            out["actor"] = self._actor
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


class ConsoleFilter(logging.Filter):
    """Let below-WARNING records through only from this project's loggers (``OUR_LOGGERS``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Whether ``record`` may reach the console."""
        return record.levelno >= logging.WARNING or record.name.split(".", 1)[0] in OUR_LOGGERS


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time (pytest and rich swap it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def _file_handler(settings: LogSettings) -> logging.Handler | None:
    path = settings.file
    if path is None:
        return None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(
            path, maxBytes=settings.max_bytes, backupCount=settings.backups, encoding="utf-8"
        )
    except OSError as exc:  # a read-only var dir must not stop a command: say so, go on
        logger.warning("logging: cannot write %s (%s); console only", path, exc.strerror or exc)
        return None
    handler.setLevel(settings.level)
    fmt = JsonLinesFormatter(settings.name) if settings.json_lines else logging.Formatter(TEXT_FORMAT)
    handler.setFormatter(fmt)
    return handler


def _adopt_serve_logger(handlers: list[logging.Handler], level: int) -> None:
    """Give the ``ray.serve`` logger our handlers, where Serve gave it only stderr.

    Importing ``ray.serve`` gives that logger its own stderr handler at INFO, cut off from the
    root logger (and Ray's ``ray`` logger has its own handler), in every process that imports
    it: the driver and actors holding handles. Its INFO lines ("Application ... is ready",
    "Started <router>") then reach the console, through Ray's copy of actor stderr too. Serve's
    replicas and controller, which also log to Serve's files, are left alone
    (``RAY_SERVE_LOG_TO_STDERR=0`` quiets them).
    """
    if "ray.serve" not in sys.modules:
        return
    serve = logging.getLogger("ray.serve")
    ours = getattr(serve, _MARK, False)
    if not ours and (serve.propagate or any(type(h) is not logging.StreamHandler for h in serve.handlers)):
        return
    for h in list(serve.handlers):
        serve.removeHandler(h)
    for h in handlers:
        serve.addHandler(h)
    serve.setLevel(level)
    setattr(serve, _MARK, True)


def install(settings: LogSettings) -> Path | None:
    """Route this process's records as ``settings`` say; return the log file, if any.

    A second call replaces what the first installed (other handlers, e.g. pytest's, stay).

    Args:
        settings: Levels, the file and its format.

    Returns:
        The file records go to, or ``None`` (no directory, or it cannot be written).
    """
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _MARK, False)]:
        root.removeHandler(old)
        old.close()
    console = _StderrHandler()
    console.setLevel(settings.console_level)
    console.addFilter(ConsoleFilter())
    console.setFormatter(logging.Formatter(CONSOLE_FORMAT))
    setattr(console, _MARK, True)
    root.addHandler(console)
    level = min(logging.getLevelName(settings.level), logging.getLevelName(settings.console_level))
    root.setLevel(level)
    file = _file_handler(settings)  # after the console: it says so if the file cannot be written
    if file is not None:
        setattr(file, _MARK, True)
        root.addHandler(file)
    _adopt_serve_logger([console] if file is None else [console, file], level)
    return None if file is None else settings.file


def export_for_workers(settings: LogSettings) -> None:
    """Export ``settings`` to the environment that Ray workers started from now on inherit.

    Also keeps Ray Serve's own per-request INFO lines in Ray's session logs (``/tmp/ray/
    session_latest/logs/serve``) instead of on the replica's stderr, which Ray copies to the
    driver's console.
    """
    env = {
        "DIR": str(settings.directory) if settings.directory else "",
        "CONSOLE_LEVEL": settings.console_level,
        "JSON": "1" if settings.json_lines else "0",
        "MAX_BYTES": str(settings.max_bytes),
        "BACKUPS": str(settings.backups),
    }
    os.environ.update({f"{_ENV}{k}": v for k, v in env.items()})
    os.environ.setdefault("RAY_SERVE_LOG_TO_STDERR", "0")
