"""Records in ledger rows: versioned JSON, sections over a few KB moved to blobs.

A job's record is stored as ``{"schema": 1, "type": "JobRecord", "sections": {...}}``. A section
whose JSON is longer than ``inline_max`` bytes (a 400-slice study's instance lists, a long
prediction) is stored once as a content-addressed blob and the row keeps ``{"$blob": ref}``, so
a row stays small whatever the study size. Heatmap pixels never reach a record: they are blobs
from the start (``core.records.HeatmapRef``).
"""

from __future__ import annotations

import functools
import json
import typing
from dataclasses import MISSING, fields
from typing import Any

from core.codec import SCHEMA_VERSION, check_envelope, from_jsonable, to_jsonable
from core.errors import RecordError
from core.job import JobRecord
from core.records import BlobRef, Prediction
from state.blobs import Blobs
from state.column_seal import ColumnSealer

__all__ = ["INLINE_MAX", "RecordCodec"]

INLINE_MAX = 4096
"""Bytes of JSON a record section may take in a row before it moves to a blob."""


def _compact(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


class RecordCodec:
    """Turns records into row text and back, spilling big sections to the blob store."""

    def __init__(self, blobs: Blobs, inline_max: int = INLINE_MAX, sealer: ColumnSealer | None = None) -> None:
        """Args:
        blobs: Where big sections go.
        inline_max: Largest section kept in the row, in bytes of JSON.
        sealer: Seals job rows (the HL7 study context names the indication in words);
            ``None``: kept in clear.
        """
        self.blobs = blobs
        self._inline_max = inline_max
        self.seal = sealer or ColumnSealer(None)

    # --------------------------------------------------------------- generic
    def _dump(self, cls: type, value: Any) -> str:
        hints = _hints(cls)
        sections: dict[str, Any] = {}
        for f in fields(cls):
            part = getattr(value, f.name)
            if f.default is not MISSING and part == f.default:
                continue  # a default needs no space in the row
            raw = to_jsonable(part, hints[f.name])
            text = _compact(raw)
            if len(text) > self._inline_max:
                raw = {"$blob": to_jsonable(self.blobs.put(text.encode(), "application/json"))}
            sections[f.name] = raw
        return _compact({"schema": SCHEMA_VERSION, "type": cls.__name__, "sections": sections})

    def _load(self, cls: type, text: str) -> Any:
        kind = cls.__name__
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise RecordError(kind, f"stored text is not JSON: {exc}") from None
        check_envelope(kind, raw)
        hints = _hints(cls)
        sections = raw.get("sections")
        if not isinstance(sections, dict):
            raise RecordError(kind, "got no 'sections' object")
        values: dict[str, Any] = {}
        for name, part in sections.items():
            if name not in hints:
                raise RecordError(kind, f"got unknown section {name!r}; expected one of {sorted(hints)}")
            if isinstance(part, dict) and set(part) == {"$blob"}:
                ref = from_jsonable(BlobRef, part["$blob"], f"{kind}.{name}")
                part = self.blobs.get_json(ref)
            values[name] = from_jsonable(hints[name], part, f"{kind}.{name}")
        try:
            return cls(**values)
        except TypeError as exc:
            raise RecordError(kind, str(exc)) from None

    # -------------------------------------------------------------- job data
    def dump_job(self, record: JobRecord) -> str:
        """Row text of a job record (sealed)."""
        return self.seal.text(self._dump(JobRecord, record))

    def load_job(self, text: str) -> JobRecord:
        """The job record of a row (``'{}'``: a job no stage wrote to yet).

        Raises:
            RecordError: Another schema version, or invalid or missing content.
        """
        text = self.seal.open_text(text)
        if text in ("", "{}"):
            return JobRecord()
        record: JobRecord = self._load(JobRecord, text)
        return record

    # ------------------------------------------------------------ predictions
    def dump_prediction(self, prediction: Prediction) -> str:
        """Row text of a prediction (``sr_results``)."""
        return self._dump(Prediction, prediction)

    def load_prediction(self, text: str) -> Prediction:
        """The prediction of a row.

        Raises:
            RecordError: Another schema version, or invalid or missing content.
        """
        prediction: Prediction = self._load(Prediction, text)
        return prediction
