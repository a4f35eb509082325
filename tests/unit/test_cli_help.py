"""`pacsai --help` of every command shows an example; plugins add commands through entry points."""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from actors import cli


@dataclass(frozen=True)
class FakeEntryPoint:
    """What ``importlib.metadata.entry_points(group=...)`` yields, as far as the CLI uses it."""

    name: str
    value: str
    loader: Callable[[], Any]

    def load(self) -> Any:
        return self.loader()


def _hello(args: argparse.Namespace) -> int:
    print(f"hello {args.who}")
    return 0


def register_hello(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "hello",
        help="say hello",
        epilog="Example:\n  pacsai hello --who ops",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--who", default="world")
    p.set_defaults(func=_hello)


def _broken() -> Any:
    raise ImportError("No module named 'grafana_client'")


@pytest.fixture
def plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    fakes = [
        FakeEntryPoint("hello", "tests.unit.test_cli_help:register_hello", lambda: register_hello),
        FakeEntryPoint("grafana", "ops.cli:register", _broken),
    ]

    def entry_points(**kwargs: Any) -> list[FakeEntryPoint]:
        return fakes if kwargs.get("group") == "pacsai.commands" else []

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)


def _all_parsers() -> list[argparse.ArgumentParser]:
    return list(cli._sub_parsers(cli._parser()))


def test_every_command_and_sub_command_help_has_an_example() -> None:
    parsers = _all_parsers()
    progs = {p.prog for p in parsers}
    assert {"pacsai", "pacsai status", "pacsai quarantine release", "pacsai models deploy"} <= progs
    assert len(parsers) >= 24
    for p in parsers:  # whatever is registered, plugins included
        text = p.format_help()
        assert "Example" in text or "example:" in text, p.prog
        assert p.prog.split()[0] == "pacsai"


def test_every_example_parses_as_the_command_it_illustrates() -> None:
    progs = {p.prog for p in _all_parsers()}
    for prog, example in cli.EXAMPLES.items():
        assert prog in progs, f"an example for a command that does not exist: {prog}"
        for line in example.split("\n"):
            words = shlex.split(line.split("|")[0])
            assert words[0] == "pacsai" and " ".join(words).startswith(prog)
            assert "func" in vars(cli._parser().parse_args(words[1:])), line


def test_a_plugin_adds_its_command_and_a_broken_one_is_named_and_skipped(
    plugins: None, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="pacsai"):
        assert cli.main(["hello", "--who", "ops"]) == 0
    assert capsys.readouterr().out == "hello ops\n"
    [warning] = [r.getMessage() for r in caplog.records if r.name == "pacsai"]
    assert "grafana" in warning and "ops.cli:register" in warning and "grafana_client" in warning
    helps = {p.prog: p.format_help() for p in _all_parsers()}
    assert "pacsai hello --who ops" in helps["pacsai hello"]
    assert "pacsai grafana" not in helps


def test_a_plugin_command_takes_verbose_too(plugins: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["hello", "-v"]) == 0
    assert capsys.readouterr().out == "hello world\n"
