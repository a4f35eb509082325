"""Docstring examples run as doctests (core, models, state, synthetic, training): examples that
run cannot rot."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
from types import ModuleType

import numpy as np
import pytest

PACKAGES = ("core", "models", "state", "synthetic", "training", "ops", "benchmarks.harness")


def _modules() -> list[str]:
    names = []
    for package in PACKAGES:
        pkg = importlib.import_module(package)
        names.append(package)
        names += [info.name for info in pkgutil.walk_packages(pkg.__path__, prefix=f"{package}.")]
    return sorted(names)


MODULES = _modules()


def _run(module: ModuleType) -> doctest.TestResults:
    # numpy 2 prints scalars as ``np.float32(1.0)``; the examples show values as numpy 1 did.
    with np.printoptions(legacy="1.25"):
        return doctest.testmod(
            module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False, report=False
        )


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    failed, _ = _run(importlib.import_module(name))
    assert failed == 0, capsys.readouterr().out[-4000:]


def test_there_are_examples_to_run() -> None:
    """A collector that silently finds nothing would pass every test above."""
    attempted = {name: _run(importlib.import_module(name)).attempted for name in MODULES}
    assert attempted["core.pixels"] >= 1 and attempted["core.uids"] >= 1
    assert sum(attempted.values()) >= 40
