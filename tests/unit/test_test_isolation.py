"""Tests depend on nothing outside the repository (issue #9, item 8).

Certificates, messages and images come from the repository (``tests/data``) or are made at
test time (``tests/pki.py``); an absolute path to a shared folder breaks on a fresh clone and
expires with its contents.
"""

from __future__ import annotations

import re
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
OUTSIDE = re.compile(r"""["'](/work/|/home/|/srv/|/opt/|/mnt/|~/)""")


def test_no_test_names_a_path_outside_the_repository():
    offenders = [
        f"{path.relative_to(TESTS)}:{number}"
        for path in sorted(TESTS.rglob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if OUTSIDE.search(line)
    ]
    assert offenders == []
