"""Where actors run on a Ray cluster: ingress cells, the Ray resources that pin them, and names.

One machine runs every actor in one process tree with one ``var/`` directory, and that is the
default (``cluster`` unset). A cluster is made of *ingress cells*: an ingress node receives
DICOM and HL7 into its own spool, and the CPU stages that read those files (assembler, validator,
router, prior linker, inference dispatch, SR writer, delivery, EHR delivery) run on that node too
and lease only the jobs of their cell. Model replicas run wherever their Ray resources are (GPU
nodes); the instance bytes reach them through Ray's object store, so a model node needs no
spool. The ledger is the shared PostgreSQL server, so every node sees the same state.

A node declares its cell with a Ray custom resource, ``ray start --resources
'{"ingress": 1, "pacsai_cell_a": 1}'``; the actors of cell ``a`` ask for a sliver of
``pacsai_cell_a``, so Ray places them on that node, and when the node dies and comes back (same
resources) Ray restarts them there, where the cell's files are.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["CELL_PATTERN", "ClusterConfig", "actor_name", "cell_resource", "cell_resources"]

CELL_PATTERN = r"^[a-z0-9][a-z0-9_]{0,31}$"
"""A cell name: lower-case letters, digits and underscores (it becomes a Ray resource name and a
directory name)."""

_SLIVER = 0.001
"""The share of a node's cell resource one actor asks for: any number of actors fit."""


class ClusterConfig(BaseModel):
    """The ingress cells of a multi-node Ray cluster (absent: one machine)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cells: tuple[str, ...] = Field(
        min_length=1,
        description="One name per ingress node; the node is started with the Ray resource "
        "pacsai_cell_<name> (and 'ingress'), e.g. ray start --resources "
        '\'{"ingress": 1, "pacsai_cell_a": 1}\'',
    )
    stage_actors: int = Field(
        default=1,
        ge=1,
        le=16,
        description="Actors of each CPU stage per cell, leasing from the same ledger",
    )
    start_timeout_s: float = Field(
        default=120.0,
        gt=0,
        description="How long `pacsai up` waits for each live cell's actors; a cell whose node "
        "is not up yet starts when the node joins",
    )

    @field_validator("cells")
    @classmethod
    def _cell_names(cls, cells: tuple[str, ...]) -> tuple[str, ...]:
        bad = [c for c in cells if not re.fullmatch(CELL_PATTERN, c)]
        if bad:
            raise ValueError(f"cell names {bad} must match {CELL_PATTERN}")
        if len(set(cells)) != len(cells):
            raise ValueError(f"cell names repeat: {list(cells)}")
        return cells


def cell_resource(cell: str) -> str:
    """The Ray custom resource an ingress node of ``cell`` declares.

    >>> cell_resource("a")
    'pacsai_cell_a'
    """
    return f"pacsai_cell_{cell}"


def cell_resources(cell: str) -> dict[str, float]:
    """The ``resources`` option that places an actor on the node of ``cell`` ({} on one machine).

    >>> cell_resources("a")
    {'pacsai_cell_a': 0.001}
    >>> cell_resources("")
    {}
    """
    return {cell_resource(cell): _SLIVER} if cell else {}


def actor_name(site: str, cell: str, role: str, index: int = 0) -> str:
    """The Ray name of one actor: unique per site, cell, role and index.

    One machine keeps the names it always had (``pacsai-listener``).

    >>> actor_name("pacsai", "", "listener")
    'pacsai-listener'
    >>> actor_name("pacsai", "a", "validator", 1)
    'pacsai-a-validator-1'
    """
    parts = [site, *([cell] if cell else []), role, *([str(index)] if index else [])]
    return "-".join(parts)
