"""The layering of DESIGN.md, checked: a rule nobody checks decays."""

from __future__ import annotations

import importlib
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ["core", "models", "serve", "actors"]


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


@pytest.mark.parametrize("package", ["core", "actors"])
def test_every_public_module_has_a_sorted_all(package):
    pkg = importlib.import_module(package)
    for info in pkgutil.walk_packages(pkg.__path__, prefix=f"{package}."):
        if info.name.rsplit(".", 1)[-1].startswith("_") or info.name in {"actors.cli"}:
            continue
        module = importlib.import_module(info.name)
        exported = getattr(module, "__all__", None)
        assert exported is not None, f"{info.name} has no __all__"
        assert list(exported) == sorted(exported), info.name
