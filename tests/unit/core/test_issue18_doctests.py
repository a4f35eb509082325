"""Docstring examples of the completion, versions, priors and review modules run as tests."""

from __future__ import annotations

import doctest

import pytest

import core.ian
import core.mpps
import core.order_status
import core.pacs_counts
import core.priors
import core.sources
import core.versions


@pytest.mark.parametrize(
    "module",
    [core.ian, core.mpps, core.order_status, core.pacs_counts, core.priors, core.sources, core.versions],
    ids=lambda m: m.__name__,
)
def test_docstring_examples_run(module):
    result = doctest.testmod(module)
    assert result.failed == 0 and result.attempted > 0
