"""QIDO-RS query keys and matching (PS3.18 8.3.4, PS3.4 C.2.2.2), over our own result objects.

Pure: a ``Query`` is parsed from the request's query parameters, ``matches`` applies it to a
data set's attributes, ``summarise`` builds the study / series / instance level answers.

>>> q = parse_query([("PatientID", "P1*"), ("StudyDate", "20240101-20241231"), ("limit", "5")])
>>> q.limit, sorted(q.keys)
(5, ['PatientID', 'StudyDate'])
"""

from __future__ import annotations

import enum
import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset

from core.numbers import ascii_int

__all__ = ["LEVEL_ATTRIBUTES", "Level", "Query", "QueryError", "matches", "parse_query", "summarise"]


class Level(enum.StrEnum):
    """The level a QIDO-RS request searches."""

    STUDY = "study"
    SERIES = "series"
    INSTANCE = "instance"


LEVEL_ATTRIBUTES: dict[Level, tuple[str, ...]] = {
    Level.STUDY: (
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "ReferringPhysicianName",
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyID",
    ),
    Level.SERIES: ("Modality", "SeriesDescription", "SeriesInstanceUID", "SeriesNumber"),
    Level.INSTANCE: ("SOPClassUID", "SOPInstanceUID", "InstanceNumber", "ContentDate", "ContentTime"),
}
"""The attributes each level returns (PS3.18 Table 10.6.3-3/4/5, those our objects carry)."""

_CONTROL = {"limit", "offset", "fuzzymatching", "includefield"}
_RANGE_VRS = {"DA", "TM", "DT"}
_WILDCARD_VRS = {"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"}


class QueryError(ValueError):
    """A query parameter cannot be used; the message names it."""


@dataclass(frozen=True)
class Query:
    """Matching keys by keyword, and paging."""

    keys: dict[str, str] = field(default_factory=dict)
    limit: int = 100
    offset: int = 0
    include_all: bool = False
    include: tuple[str, ...] = ()


def _keyword(name: str) -> str:
    """A query key as a DICOM keyword (``PatientID`` or ``00100020``)."""
    if len(name) == 8 and all(c in "0123456789abcdefABCDEF" for c in name):
        keyword = keyword_for_tag(int(name, 16))
        if keyword:
            return keyword
    elif tag_for_keyword(name) is not None:
        return name
    raise QueryError(f"{name}: not a DICOM attribute keyword or tag")


def parse_query(params: Iterable[tuple[str, str]], max_limit: int = 1000) -> Query:
    """Parse QIDO-RS query parameters.

    Raises:
        QueryError: A key is not an attribute, or limit/offset are not non-negative integers.
    """
    keys: dict[str, str] = {}
    limit, offset, include_all, include = min(100, max_limit), 0, False, []
    for name, value in params:
        if name in _CONTROL:
            if name in ("limit", "offset"):
                number = ascii_int(value)
                if number is None:
                    raise QueryError(f"{name}: got {value[:20]!r}; expected a non-negative integer (0-9, at most 18)")
                if name == "limit":
                    limit = max(1, min(number, max_limit))
                else:
                    offset = number
            elif name == "includefield":
                for item in value.split(","):
                    if item == "all":
                        include_all = True
                    elif item:
                        include.append(_keyword(item))
            continue
        keyword = _keyword(name)
        if len(value) > 256:
            raise QueryError(f"{name}: value longer than 256 characters")
        keys[keyword] = value
    return Query(keys, limit, offset, include_all, tuple(include))


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value)


def _match_one(keyword: str, wanted: str, have: str) -> bool:
    """One key against one attribute value (PS3.4 C.2.2.2: single value, list of UIDs,
    wild card, range)."""
    if wanted in ("", "*"):
        return True  # universal match
    vr = dictionary_VR(keyword)
    if vr == "UI":
        return have in {u.strip() for u in wanted.replace(",", "\\").split("\\")}
    if vr in _RANGE_VRS and "-" in wanted:
        low, _, high = wanted.partition("-")
        return bool(have) and (not low or have >= low) and (not high or have[: len(high)] <= high)
    if vr in _WILDCARD_VRS and any(c in wanted for c in "*?"):
        values = have.split("\\") if have else [""]
        return any(
            fnmatch.fnmatchcase(v.upper() if vr == "PN" else v, wanted.upper() if vr == "PN" else wanted)
            for v in values
        )
    if vr == "PN":
        return have.upper() == wanted.upper()
    return wanted in (have.split("\\") if "\\" in have else [have])


def matches(ds: Dataset, query: Query) -> bool:
    """Whether a data set matches every key of the query.

    >>> ds = Dataset(); ds.PatientID = "P123"; ds.StudyDate = "20240615"; ds.Modality = "SR"
    >>> matches(ds, Query({"PatientID": "P1*", "StudyDate": "20240601-"}))
    True
    >>> matches(ds, Query({"Modality": "SEG"}))
    False
    """
    return all(_match_one(k, v, _text(ds, k)) for k, v in query.keys.items())


def summarise(level: Level, datasets: Sequence[Dataset], retrieve_url: str, query: Query) -> Dataset:
    """One QIDO-RS answer at ``level`` for the matching data sets of one study / series /
    instance: the level's attributes (and those of the levels above), counts, RetrieveURL."""
    first = datasets[0]
    out = Dataset()
    levels = {Level.STUDY: [Level.STUDY], Level.SERIES: [Level.STUDY, Level.SERIES]}.get(level, list(Level))
    wanted = [kw for lv in levels for kw in LEVEL_ATTRIBUTES[lv]] + list(query.include)
    for keyword in wanted:
        if keyword in first:
            out[keyword] = first[keyword]
    if query.include_all:
        for elem in first:
            if elem.VR != "SQ" and elem.tag.group not in (0x7FE0,) and elem.tag not in out:
                out.add(elem)
    if level is Level.STUDY:
        out.ModalitiesInStudy = sorted({str(ds.get("Modality", "")) for ds in datasets if ds.get("Modality")})
        out.NumberOfStudyRelatedSeries = len({str(ds.SeriesInstanceUID) for ds in datasets})
        out.NumberOfStudyRelatedInstances = len(datasets)
    elif level is Level.SERIES:
        out.NumberOfSeriesRelatedInstances = len(datasets)
    out.RetrieveURL = retrieve_url
    return out
