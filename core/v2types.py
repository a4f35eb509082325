"""HL7 v2 data types -> FHIR R4 data types (HL7 v2-to-FHIR IG, ``mappings/datatypes``).

DTM -> dateTime, CWE -> CodeableConcept, CX / EI -> Identifier, XPN -> HumanName,
XCN -> a Practitioner reference, PL -> Location. Pure functions of component tuples as
``core.hl7.Segment`` returns them.

Identity (issue #16): an identifier names a person only together with its assigning authority
(CX.4) and its type (CX.5). ``IdentifierMapper.identity`` gives that triple, with the authority
in one canonical spelling: the configured or derived ``Identifier.system``, else the namespace
ID; an identifier without CX.4 takes the authority configured for its sending facility
(``hl7.default_assigning_authorities``), else it is scoped to that facility, so a bare ID from
one facility never meets the same bare ID from another.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from core.errors import MessageInvalid
from core.fhir import system_for_v2
from core.hl7 import Hl7Message, Segment

__all__ = [
    "DTM",
    "HD",
    "IdentifierMapper",
    "PatientIdentity",
    "V2_TABLE",
    "codeable",
    "fhir_datetime",
    "human_name",
    "location",
    "message_datetime",
    "practitioner",
]

V2_TABLE = "http://terminology.hl7.org/CodeSystem/v2-"
"""Prefix of the HL7 v2 table code systems (``v2-0203`` identifier types, ...)."""
DTM = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\.\d{1,4})?([+-]\d{4})?$", re.ASCII)
"""HL7 DTM: ``YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ]``; group 8 is the offset."""
_NAME_USE = {
    "L": "official",
    "D": "usual",
    "A": "usual",
    "M": "maiden",
    "N": "nickname",
    "B": "old",
    "S": "anonymous",
    "TEMP": "temp",
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


def message_datetime(message: Hl7Message, seg: Segment, n: int, comp: int = 1) -> str:
    """Field ``n`` (component ``comp``) of ``seg`` as a FHIR dateTime, with MSH-7's offset.

    Raises:
        MessageInvalid: The value is not an HL7 DTM (ERR 102 naming the field).
    """
    value = seg.get(n, comp)
    if not value:
        return ""
    offset = DTM.match(message.header.timestamp)
    try:
        return fhir_datetime(value, offset.group(8) if offset else None)
    except ValueError as exc:
        raise MessageInvalid(
            f"{seg.name}-{n}: got {value[:40]!r}; expected an HL7 DTM ({exc})",
            message.header.control_id,
            "102",
            seg.loc(n),
        ) from None


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


@dataclass(frozen=True, slots=True)
class HD:
    """HL7 HD (hierarchic designator): namespace ID, universal ID and universal ID type.

    >>> HD.parse("HOSP&1.2.3&ISO")
    HD(namespace='HOSP', universal_id='1.2.3', universal_id_type='ISO')
    """

    namespace: str = ""
    universal_id: str = ""
    universal_id_type: str = ""

    @classmethod
    def parse(cls, value: str | Sequence[str]) -> HD:
        """An HD from its subcomponents, or from ER7 text with ``&`` between them."""
        parts = list(value.split("&") if isinstance(value, str) else value) + ["", "", ""]
        return cls(parts[0].strip(), parts[1].strip(), parts[2].strip().upper())

    def __bool__(self) -> bool:
        return bool(self.namespace or self.universal_id)


@dataclass(frozen=True, slots=True)
class PatientIdentity:
    """Who an identifier names: its value, its assigning authority and its type (CX.1/.4/.5).

    Attributes:
        value: CX.1.
        authority: The assigning authority, canonical (see ``IdentifierMapper.authority``).
        type_code: CX.5 (HL7 table 0203), upper case; empty if the sender gave none.
    """

    value: str
    authority: str
    type_code: str

    @property
    def material(self) -> str:
        """The unambiguous text a keyed hash of this identity is taken over: each part
        prefixed with its length, so no value can pass for another split.

        >>> PatientIdentity("4711", "ns:A", "MR").material
        '4:4711|4:ns:A|2:MR'
        """
        return "|".join(f"{len(p)}:{p}" for p in (self.value, self.authority, self.type_code))


class IdentifierMapper:
    """CX and EI -> Identifier, with the site's assigning authority -> system table."""

    def __init__(self, systems: Mapping[str, str], default_authorities: Mapping[str, str] | None = None) -> None:
        """Args:
        systems: Assigning authority namespace ID -> Identifier.system.
        default_authorities: Sending facility (MSH-4, whole or its namespace ID) -> the
            assigning authority (HD, ``&`` between subcomponents) of identifiers without CX.4.
        """
        self._systems = dict(systems)
        self._defaults = {k: HD.parse(v) for k, v in (default_authorities or {}).items()}

    def system(self, namespace: str, universal: str, kind: str) -> str | None:
        """The system of an HD: configured by namespace, else ``urn:oid:`` of an ISO OID,
        ``urn:uuid:`` of a UUID, or the URI itself (IG HD[Identifier.system])."""
        if namespace in self._systems:
            return self._systems[namespace]
        if not universal:
            return None
        kind = kind.upper()
        if kind == "ISO":
            return f"urn:oid:{universal}"
        if kind == "UUID":
            return f"urn:uuid:{universal.lower()}"
        return universal if kind == "URI" else None

    def default_authority(self, facility: str) -> HD:
        """The configured authority of a sending facility's bare identifiers (or none)."""
        found = self._defaults.get(facility) or self._defaults.get(facility.split("^")[0])
        return found or HD()

    def authority(self, hd: HD, facility: str, application: str = "") -> tuple[HD, str]:
        """The assigning authority an identifier belongs to, and its canonical name.

        Args:
            hd: CX.4 as sent (may be empty).
            facility: MSH-4 of the message (ER7).
            application: MSH-3, the scope when MSH-4 is empty too.

        Returns:
            The authority (CX.4, else the facility's configured one) and its canonical name:
            its Identifier.system, else ``ns:`` + namespace, else ``<type>:`` + universal ID;
            with no authority at all, ``sender:`` + the sending facility (or application).
        """
        hd = hd or self.default_authority(facility)
        if not hd:
            return hd, f"sender:{facility or application}"
        system = self.system(hd.namespace, hd.universal_id, hd.universal_id_type)
        if system:
            return hd, system
        if hd.namespace:
            return hd, f"ns:{hd.namespace}"
        return hd, f"{hd.universal_id_type}:{hd.universal_id}"

    def identity(
        self,
        cx: Sequence[str],
        authority: HD,
        facility: str,
        application: str = "",
        type_code: str = "",
    ) -> PatientIdentity:
        """The identity of a CX: (CX.1, canonical authority, CX.5 or ``type_code``)."""
        _, name = self.authority(authority, facility, application)
        code = type_code or (cx[4] if len(cx) > 4 else "")
        return PatientIdentity(cx[0], name, code.strip().upper())

    def cx(
        self,
        cx: Sequence[str],
        type_code: str = "",
        authority: HD | None = None,
        facility: str = "",
    ) -> dict[str, Any]:
        """CX -> Identifier (IG CX[Identifier]): .1 value, .4 system or assigner, .5 type.

        Args:
            cx: The components (first subcomponent each).
            type_code: Identifier type to use instead of CX.5.
            authority: CX.4 with its subcomponents (default: CX.4's namespace only).
            facility: MSH-4, whose configured authority applies when CX.4 is empty.
        """
        hd = authority if authority is not None else HD.parse(cx[3] if len(cx) > 3 else "")
        hd = hd or self.default_authority(facility)
        ident: dict[str, Any] = {"value": cx[0]}
        code = type_code or (cx[4] if len(cx) > 4 else "")
        if code:
            ident["type"] = {"coding": [{"system": f"{V2_TABLE}0203", "code": code}]}
        system = self.system(hd.namespace, hd.universal_id, hd.universal_id_type)
        if system:
            ident["system"] = system
        elif hd.namespace:
            ident["assigner"] = {"display": hd.namespace}
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
        "physicalType": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/location-physical-type",
                    "code": kind,
                }
            ]
        },
    }
