"""JSON for typed records: one schema version, a clear error for anything else.

Records are frozen dataclasses; pydantic's ``TypeAdapter`` (already the config's library)
turns them into JSON-ready values and back, checking every field's type on the way in. A
stored record carries ``{"schema": SCHEMA_VERSION, "type": <class name>}``: reading one
written under another schema version, of another type, or with invalid content raises
``RecordError`` naming what was found and what was expected, never a half-read record.

>>> from core.records import FrameRef
>>> raw = dump_record(FrameRef("1.2.3", "1.2.840.10008.5.1.4.1.1.2", 4))
>>> raw["schema"], raw["type"]
(1, 'FrameRef')
>>> load_record(FrameRef, raw)
FrameRef(sop_instance_uid='1.2.3', sop_class_uid='1.2.840.10008.5.1.4.1.1.2', frame_number=4)
>>> load_record(FrameRef, {**raw, "schema": 7})
Traceback (most recent call last):
...
core.errors.RecordError: FrameRef record: got schema 7; expected 1 (written by another version of PACS-AI Bridge)
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import TypeAdapter, ValidationError

from core.errors import RecordError

__all__ = [
    "SCHEMA_VERSION",
    "check_envelope",
    "dump_record",
    "from_jsonable",
    "load_record",
    "to_jsonable",
]

SCHEMA_VERSION = 1
"""Version of every record's JSON shape. Bump it (and add a reader for the old one, or a
ledger migration) whenever a stored record's shape changes incompatibly."""

T = TypeVar("T")


@functools.cache
def _adapter(tp: Any) -> TypeAdapter[Any]:
    return TypeAdapter(tp)


def to_jsonable(value: Any, tp: Any = None) -> Any:
    """Return ``value`` as JSON-ready Python values (dicts, lists, str, numbers, None).

    Args:
        value: A record (or a value of a record field's type).
        tp: Its type, where it is not simply ``type(value)`` (e.g. ``X | None``).
    """
    return _adapter(type(value) if tp is None else tp).dump_python(value, mode="json")


def from_jsonable(tp: Any, raw: Any, kind: str = "") -> Any:
    """Rebuild a value of type ``tp`` from JSON-ready values.

    Raises:
        RecordError: ``raw`` is not a valid ``tp`` (the first problem is named).
    """
    try:
        return _adapter(tp).validate_python(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "<root>"
        name = kind or getattr(tp, "__name__", str(tp))
        raise RecordError(name, f"{where}: {err['msg']}") from None


def dump_record(record: Any) -> dict[str, Any]:
    """Return a record as a versioned JSON-ready dict."""
    return {
        "schema": SCHEMA_VERSION,
        "type": type(record).__name__,
        "data": to_jsonable(record),
    }


def load_record(tp: type[T], raw: Mapping[str, Any]) -> T:
    """Read a record written by :func:`dump_record`.

    Raises:
        RecordError: Another schema version, another record type, or invalid content.
    """
    check_envelope(tp.__name__, raw)
    value: T = from_jsonable(tp, raw.get("data"), tp.__name__)
    return value


def check_envelope(kind: str, raw: Mapping[str, Any]) -> None:
    """Check a stored record's schema version and type.

    Raises:
        RecordError: The version or the type is not the expected one.
    """
    if not isinstance(raw, Mapping):
        raise RecordError(kind, f"got {type(raw).__name__}; expected a JSON object")
    schema = raw.get("schema")
    if schema != SCHEMA_VERSION:
        raise RecordError(
            kind,
            f"got schema {schema}; expected {SCHEMA_VERSION} (written by another version of PACS-AI Bridge)",
        )
    if raw.get("type", kind) != kind:
        raise RecordError(kind, f"got a {raw.get('type')} record; expected {kind}")
