"""HL7 v2 data types -> FHIR R4 data types (HL7 v2-to-FHIR IG, ``mappings/datatypes``).

DTM -> dateTime, CWE -> CodeableConcept, CX / EI -> Identifier, XPN -> HumanName,
XCN -> a Practitioner reference, PL -> Location. Pure functions of component tuples as
``core.hl7.Segment`` returns them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import date
from typing import Any

from core.fhir import system_for_v2

__all__ = [
    "DTM",
    "IdentifierMapper",
    "V2_TABLE",
    "codeable",
    "fhir_datetime",
    "human_name",
    "location",
    "practitioner",
]

V2_TABLE = "http://terminology.hl7.org/CodeSystem/v2-"
"""Prefix of the HL7 v2 table code systems (``v2-0203`` identifier types, ...)."""
DTM = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\.\d{1,4})?([+-]\d{4})?$")
"""HL7 DTM: ``YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ]``; group 8 is the offset."""
_NAME_USE = {
    "L": "official", "D": "usual", "A": "usual", "M": "maiden", "N": "nickname",
    "B": "old", "S": "anonymous", "TEMP": "temp",
}
"""IG concept map NameType (XPN.7 -> HumanName.use)."""


def fhir_datetime(value: str, default_offset: str | None = None) -> str:
    """Convert an HL7 DTM to a FHIR dateTime (IG DTM[dateTime]).

    FHIR R4 requires a time zone once a time is given; a DTM without an offset takes the
    offset of MSH-7, and without one either it keeps only its date.

    >>> fhir_datetime("20250101120000+0100")
    '2025-01-01T12:00:00+01:00'
    >>> fhir_datetime("202501011200")
    '2025-01-01'
    >>> fhir_datetime("1970")
    '1970'

    Raises:
        ValueError: Not a DTM, or not a real date and time.
    """
    m = DTM.match(value.strip())
    if m is None:
        raise ValueError("not YYYY[MM[DD[HH[MM[SS[.S]]]]]][+/-ZZZZ]")
    y, mo, d, h, mi, s, frac, off = m.groups()
    date(int(y), int(mo or 1), int(d or 1))  # raises for a month 13 or a 31 February
    if int(h or 0) > 23 or int(mi or 0) > 59 or int(s or 0) > 59:
        raise ValueError("time out of range")
    day = "-".join(p for p in (y, mo, d) if p)
    offset = off or default_offset
    if h is None or d is None or offset is None:
        return day
    return f"{day}T{h}:{mi or '00'}:{s or '00'}{frac or ''}{offset[:3]}:{offset[3:]}"


def codeable(cwe: Sequence[str]) -> dict[str, Any]:
    """CWE -> CodeableConcept (IG CWE[CodeableConcept]: .1/.2/.3 and .4/.5/.6, .9 text).

    >>> codeable(("R07.4", "Chest pain", "I10"))["coding"][0]["system"]
    'http://hl7.org/fhir/sid/icd-10'
    >>> codeable(("", "cough for 3 weeks"))
    {'text': 'cough for 3 weeks'}
    >>> codeable(("A  1",))["coding"][0]["code"]
    'A 1'

    """
    codings = []
    for code, display, system in ((0, 1, 2), (3, 4, 5)):
        part = [cwe[i] if len(cwe) > i else "" for i in (code, display, system)]
        if part[0]:
            coding = {"code": " ".join(part[0].split())}  # FHIR code: single inner blanks
            if part[1]:
                coding["display"] = part[1]
            uri = system_for_v2(part[2]) if part[2] else None
            if uri:
                coding["system"] = uri
            codings.append(coding)
    out: dict[str, Any] = {"coding": codings} if codings else {}
    text = cwe[8] if len(cwe) > 8 and cwe[8] else (cwe[1] if len(cwe) > 1 else "")
    if text:
        out["text"] = text
    return out


class IdentifierMapper:
    """CX and EI -> Identifier, with the site's assigning authority -> system table."""

    def __init__(self, systems: Mapping[str, str]) -> None:
        """Args:
        systems: Assigning authority namespace ID -> Identifier.system.
        """
        self._systems = dict(systems)

    def system(self, namespace: str, universal: str, kind: str) -> str | None:
        """The system of an HD: configured by namespace, else ``urn:oid:`` of an ISO OID."""
        if namespace in self._systems:
            return self._systems[namespace]
        return f"urn:oid:{universal}" if universal and kind.upper() == "ISO" else None

    def cx(self, cx: Sequence[str], type_code: str = "") -> dict[str, Any]:
        """CX -> Identifier (IG CX[Identifier]): .1 value, .4 system or assigner, .5 type."""
        authority = (cx[3] if len(cx) > 3 else "").split("&") + ["", "", ""]
        ident: dict[str, Any] = {"value": cx[0]}
        code = type_code or (cx[4] if len(cx) > 4 else "")
        if code:
            ident["type"] = {"coding": [{"system": f"{V2_TABLE}0203", "code": code}]}
        system = self.system(authority[0], authority[1], authority[2])
        if system:
            ident["system"] = system
        elif authority[0]:
            ident["assigner"] = {"display": authority[0]}
        return ident

    def ei(self, ei: Sequence[str], type_code: str) -> dict[str, Any]:
        """EI -> Identifier (IG EI[Identifier]): .1 value, .2/.3/.4 the assigning authority."""
        parts = list(ei) + ["", "", "", ""]
        ident: dict[str, Any] = {
            "type": {"coding": [{"system": f"{V2_TABLE}0203", "code": type_code}]},
            "value": parts[0],
        }
        system = self.system(parts[1], parts[2], parts[3])
        if system:
            ident["system"] = system
        return ident


def human_name(xpn: Sequence[str]) -> dict[str, Any]:
    """XPN -> HumanName (IG XPN[HumanName]): .1 family, .2/.3 given, .4/.6 suffix, .5 prefix,
    .7 use.

    >>> human_name(("DOE", "JANE", "Q", "", "DR", "", "L"))
    {'family': 'DOE', 'given': ['JANE', 'Q'], 'prefix': ['DR'], 'use': 'official'}
    """
    parts = list(xpn) + [""] * 7
    name: dict[str, Any] = {}
    if parts[0]:
        name["family"] = parts[0]
    given = [g for g in (parts[1], parts[2]) if g]
    if given:
        name["given"] = given
    if parts[4]:
        name["prefix"] = [parts[4]]
    suffix = [s for s in (parts[3], parts[5]) if s]
    if suffix:
        name["suffix"] = suffix
    if parts[6] in _NAME_USE:
        name["use"] = _NAME_USE[parts[6]]
    return name


def practitioner(xcn: Sequence[str]) -> dict[str, Any]:
    """XCN -> a Practitioner reference by identifier and display (no resource is made)."""
    parts = list(xcn) + [""] * 3
    ref: dict[str, Any] = {"type": "Practitioner"}
    display = " ".join(p for p in (parts[2], parts[1]) if p)
    if display:
        ref["display"] = display
    if parts[0]:
        ref["identifier"] = {"value": parts[0]}
    return ref


def location(pl: Sequence[str], location_id: str) -> dict[str, Any] | None:
    """PL -> Location (IG PL[Location]): one Location for the most granular level given
    (bed, else room, else point of care), named after all of them; no partOf chain.

    Returns:
        The Location, or ``None`` when PV1-3 names no place.
    """
    parts = list(pl) + [""] * 4
    where = [p for p in parts[:3] if p]
    if not where:
        return None
    name = " ".join(where) + (f" ({parts[3].split('&')[0]})" if parts[3] else "")
    kind = "bd" if parts[2] else ("ro" if parts[1] else "wa")
    return {
        "resourceType": "Location",
        "id": location_id,
        "status": "active",
        "name": name,
        "mode": "instance",
        "physicalType": {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/location-physical-type",
            "code": kind,
        }]},
    }
