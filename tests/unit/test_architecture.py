"""The layering of DESIGN.md, checked: a rule nobody checks decays."""

from __future__ import annotations

import importlib
import pkgutil
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ["core", "models", "serve", "actors", "state", "api"]
"""The installed product."""
TOOLING = ["synthetic", "training", "demo"]
"""Test data, demo training and the demo: the product never imports them."""
OPERATOR_TOOLS = ["ops", "benchmarks"]
"""Grafana dashboards and ``pacsai bench``: outer layers the product never imports, plugged into
``pacsai`` through the ``pacsai.commands`` entry points."""
INSTALLED = PRODUCT + OPERATOR_TOOLS + ["synthetic", "demo"]
"""What the wheel ships: the product, the operator tools and what ``pacsai bench`` needs (its
synthetic studies and the Orthanc runner); demo training stays in the repository."""
PACKAGES = [*PRODUCT, "ops", "benchmarks.harness", *TOOLING]
"""Packages whose modules follow the house rules (``benchmarks/bench_*.py`` are scripts)."""


def test_import_contracts_hold():
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if lint is None:
        pytest.skip("import-linter is installed by `make setup`")
    res = subprocess.run([lint], cwd=ROOT, capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stdout[-3000:]


@pytest.mark.parametrize("package", PACKAGES)
def test_package_all_is_sorted_and_names_its_modules(package):
    pkg = importlib.import_module(package)
    names = list(pkg.__all__)
    assert names == sorted(names)
    modules = {m.name for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_")}
    assert set(names) == modules


@pytest.mark.parametrize("package", PACKAGES)
def test_every_public_module_has_a_sorted_all(package):
    pkg = importlib.import_module(package)
    for info in pkgutil.walk_packages(pkg.__path__, prefix=f"{package}."):
        if info.name.rsplit(".", 1)[-1].startswith("_") or info.name in {"actors.cli"}:
            continue
        module = importlib.import_module(info.name)
        exported = getattr(module, "__all__", None)
        assert exported is not None, f"{info.name} has no __all__"
        assert list(exported) == sorted(exported), info.name


def test_only_the_product_and_its_tools_are_installed():
    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    assert sorted(pattern.rstrip("*") for pattern in find["include"]) == sorted(INSTALLED)


def test_the_tools_are_plugins_the_product_never_imports():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    commands = project["entry-points"]["pacsai.commands"]
    assert {target.split(".")[0] for target in commands.values()} == set(OPERATOR_TOOLS)
    linter = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    for tool in OPERATOR_TOOLS:
        [contract] = [c for c in linter["contracts"] if c.get("forbidden_modules") == [tool]]
        assert set(contract["source_modules"]) >= set(PRODUCT)


def test_every_package_is_in_the_import_contracts():
    linter = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    assert {p.split(".")[0] for p in PACKAGES} <= set(linter["root_packages"])
    [product] = [c for c in linter["contracts"] if set(c.get("forbidden_modules", ())) == set(TOOLING)]
    assert set(product["source_modules"]) >= set(PRODUCT)


@pytest.mark.parametrize("package", PACKAGES)
def test_every_package_has_a_docstring(package):
    assert (importlib.import_module(package).__doc__ or "").strip()


def _pins(lines: list[str]) -> dict[str, str]:
    """``name==version`` lines as {normalised name: version} (PEP 503 names, extras dropped)."""
    pins = {}
    for line in lines:
        name, _, version = line.partition("==")
        pins[re.sub(r"[-_.]+", "-", name.split("[")[0].strip()).lower()] = version.strip()
    return pins


def test_every_pinned_dependency_is_in_the_lock_at_the_same_version():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pinned = _pins([*project["dependencies"], *project["optional-dependencies"]["test"]])
    lock = (ROOT / "requirements.lock").read_text().splitlines()
    locked = _pins([line for line in lock if "==" in line and not line.lstrip().startswith("#")])
    assert {name: locked.get(name) for name in pinned} == pinned


def test_urllib3_is_not_replaced_by_urllib3_future():
    """grafana-client 4+ pulls niquests and urllib3-future, which installs itself as ``urllib3``
    and broke requests (schemathesis) for the whole environment: pinned to 3.x, and checked."""
    import importlib.metadata

    import urllib3

    names = {d.metadata["Name"].lower() for d in importlib.metadata.distributions()}
    assert "urllib3-future" not in names
    assert urllib3.__version__ == importlib.metadata.version("urllib3")
