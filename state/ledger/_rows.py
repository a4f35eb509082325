"""Rows to typed values (the one place that knows the column names of shared tables)."""

from __future__ import annotations

from collections.abc import Iterable

from core.job import Job
from core.types import InstanceMeta, JobState
from state.db import Row
from state.ledger._codec import RecordCodec

__all__ = ["INSTANCE_COLUMNS", "equal_to", "instance_columns", "instance_of", "job_of"]

INSTANCE_COLUMNS = (
    "sop_instance_uid, sop_class_uid, study_uid, series_uid, modality, transfer_syntax,"
    " body_part, series_description, patient_key, calling_ae, path, sha256, size, received_at,"
    " accession_key"
)
"""The columns ``instance_of`` reads (``i.``-prefixed where joined: use ``instance_columns``)."""


def equal_to(pairs: Iterable[tuple[str, object | None]]) -> tuple[list[str], list[object]]:
    """``column = ?`` clauses and their arguments for the pairs whose value is given
    (``None``: not narrowed by that column).

    >>> equal_to([("o.kind", "sr"), ("j.study_uid", None)])
    (['o.kind = ?'], ['sr'])
    """
    given = [(c, v) for c, v in pairs if v is not None]
    return [f"{c} = ?" for c, _ in given], [v for _, v in given]


def instance_columns(alias: str) -> str:
    """``INSTANCE_COLUMNS`` of a table alias.

    >>> instance_columns("i").split(",")[0]
    'i.sop_instance_uid'
    """
    return ", ".join(f"{alias}.{c.strip()}" for c in INSTANCE_COLUMNS.split(","))


def instance_of(row: Row) -> InstanceMeta:
    """An ``instances`` row as ``InstanceMeta``."""
    return InstanceMeta(
        sop_instance_uid=row["sop_instance_uid"],
        sop_class_uid=row["sop_class_uid"],
        study_instance_uid=row["study_uid"],
        series_instance_uid=row["series_uid"],
        modality=row["modality"],
        transfer_syntax_uid=row["transfer_syntax"],
        path=row["path"],
        sha256=row["sha256"],
        size=int(row["size"]),
        received_at=float(row["received_at"]),
        calling_ae=row["calling_ae"],
        body_part=row["body_part"],
        series_description=row["series_description"],
        patient_key=row["patient_key"],
        accession_key=row["accession_key"],
    )


def job_of(row: Row, codec: RecordCodec) -> Job:
    """A ``jobs`` row as a ``Job`` with its typed record.

    Raises:
        RecordError: The stored record cannot be read.
    """
    return Job(
        job_id=int(row["job_id"]),
        study_instance_uid=row["study_uid"],
        version=int(row["version"]),
        state=JobState(row["state"]),
        priority=int(row["priority"]),
        attempts=int(row["attempts"]),
        not_before=float(row["not_before"]),
        created_at=float(row["created_at"]),
        updated_at=float(row["updated_at"]),
        last_instance_at=float(row["last_instance_at"]),
        reason=row["reason"],
        lease_owner=row["lease_owner"],
        leased_until=float(row["leased_until"]),
        record=codec.load_job(row["data"]),
    )
