"""HL7 v2 orders -> FHIR R4 ServiceRequest, after the HL7 v2-to-FHIR IG (STU1, R4).

ORM_O01 and OMI_O23 carry one order group per ORC: the ORC, its OBR, and for OMI its TQ1 and
IPC (IHE RAD-4: IPC-1 accession, IPC-3 Study Instance UID). The IG incorporates OBR content
into the ServiceRequest made by ORC (IG ``ORC[ServiceRequest]``, ``OBR[ServiceRequest]``,
``TQ1[ServiceRequest]``); the concept maps OrderControlCode and OrderStatus give its status.
``core.v2fhir`` maps the rest of the message and calls ``OrderMapper`` per group.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from core.context import OrderIndex
from core.errors import MessageInvalid
from core.hl7 import Hl7Message, Segment
from core.v2types import V2_TABLE, IdentifierMapper, codeable, message_datetime, practitioner

__all__ = ["OrderMapper", "PRIORITY"]

_V2 = V2_TABLE
PRIORITY = {
    "S": "stat",
    "A": "asap",
    "R": "routine",
    "P": "urgent",
    "C": "urgent",
    "T": "urgent",
    "PRN": "routine",
}
"""HL7 table 0485 (extended priority, TQ1-9 / TQ.6) -> ServiceRequest.priority."""
_ORDER_CONTROL = {
    "NW": "active",
    "OK": "active",
    "CA": "active",
    "HD": "active",
    "RL": "active",
    "RO": "active",
    "OC": "revoked",
    "OD": "revoked",
    "CR": "revoked",
    "DC": "revoked",
    "DR": "revoked",
    "HR": "on-hold",
    "OH": "on-hold",
}
"""IG concept map OrderControlCode[ServiceRequest.status] (ORC-1, when ORC-5 is empty)."""
_ORDER_STATUS = {
    "A": "active",
    "IP": "active",
    "SC": "active",
    "CA": "revoked",
    "DC": "revoked",
    "RP": "revoked",
    "CM": "completed",
    "HD": "on-hold",
    "ER": "entered-in-error",
}
"""IG concept map OrderStatus (ORC-5 -> ServiceRequest.status)."""


@dataclass(frozen=True, slots=True)
class _Order:
    """The segments of one order group: ORC and what follows it up to the next ORC."""

    orc: Segment
    obr: Segment | None
    tq1: Segment | None
    ipc: Segment | None


class OrderMapper:
    """ORC (+ OBR, TQ1, IPC) -> ServiceRequest and the order's index for the join."""

    def __init__(self, hash_id: Callable[[str], str], ids: IdentifierMapper, accession_fields: Sequence[str]) -> None:
        """Args:
        hash_id: The keyed hash of identifiers (ids and join keys).
        ids: CX / EI -> Identifier.
        accession_fields: Where the accession number is, first valued wins.
        """
        self._hash = hash_id
        self._ids = ids
        self._accession_fields = tuple(accession_fields)

    def groups(self, message: Hl7Message) -> list[_Order]:
        """Split ORM_O01 / OMI_O23 into order groups: ORC, then its OBR, TQ1 and IPC."""
        groups: list[_Order] = []
        for seg in message.segments:
            if seg.name == "ORC":
                groups.append(_Order(seg, None, None, None))
            elif seg.name in ("OBR", "TQ1", "IPC") and groups:
                if getattr(groups[-1], seg.name.lower()) is None:
                    groups[-1] = replace(groups[-1], **{seg.name.lower(): seg})
            elif seg.name == "OBR":
                raise MessageInvalid(
                    "OBR: got an OBR before any ORC; expected ORC then OBR (ORM_O01 / OMI_O23)",
                    message.header.control_id,
                    "100",
                    seg.loc(0),
                )
        if not groups:
            raise MessageInvalid(
                "ORC: segment missing; expected at least one ORC with its OBR",
                message.header.control_id,
                "100",
                "ORC",
            )
        return groups

    def _accession(self, message: Hl7Message, group: _Order) -> tuple[str, dict[str, Any]]:
        """The accession (IHE SWF: OBR-18; OMI: IPC-1) as an identifier of type ACSN."""
        segs = {"IPC": group.ipc, "OBR": group.obr, "ORC": group.orc}
        for name in self._accession_fields:
            seg_name, n = name.split("-")
            seg = segs[seg_name]
            value = seg.get(int(n)) if seg is not None else ""
            if seg is not None and value:
                if name in ("IPC-1", "ORC-3", "OBR-3"):  # EI: the authority gives the system
                    return value, self._ids.ei(seg.comps(int(n)), "ACSN")
                return value, {"type": {"coding": [{"system": f"{_V2}0203", "code": "ACSN"}]}, "value": value}
        # Report it where this structure can carry it: ORM_O01 has no IPC (issue #16).
        fields = [f for f in self._accession_fields if not f.startswith("IPC") or message.header.message_code == "OMI"]
        seg_name, n = (fields or ["OBR-18"])[0].split("-")
        seg = segs[seg_name]
        raise MessageInvalid(
            f"accession number: none of {', '.join(fields or ['OBR-18'])} is valued; expected "
            "the accession number there (set hl7.accession_fields for this RIS)",
            message.header.control_id,
            "101",
            seg.loc(int(n)) if seg is not None else f"{seg_name}^1^{n}",
        )

    def _priority(self, message: Hl7Message, group: _Order) -> str:
        """TQ1-9, else OBR-27.6 / ORC-7.6 (TQ priority), else OBR-5 (IG TQ1[ServiceRequest])."""
        candidates = [(group.tq1, 9, 1), (group.obr, 27, 6), (group.orc, 7, 6), (group.obr, 5, 1)]
        for seg, n, comp in candidates:
            if seg is None or not seg.get(n, comp):
                continue
            value = seg.get(n, comp).upper()
            if value not in PRIORITY:
                raise MessageInvalid(
                    f"{seg.name}-{n}: got {value[:10]!r}; expected a priority from HL7 table 0485 {sorted(PRIORITY)}",
                    message.header.control_id,
                    "103",
                    seg.loc(n),
                )
            return PRIORITY[value]
        return "routine"

    def service_request(
        self, message: Hl7Message, group: _Order, patient_id: str, enc_id: str
    ) -> tuple[dict[str, Any], OrderIndex]:
        """ORC + OBR (+ TQ1, IPC) -> ServiceRequest (IG ORC/OBR[ServiceRequest])."""
        orc, obr = group.orc, group.obr
        ctrl = message.header.control_id
        if obr is None:  # a pharmacy or diet order (RXO, ODS), not a procedure
            raise MessageInvalid(
                f"OBR: segment missing in the order group of ORC {orc.index}; expected an OBR "
                "(the requested procedure) after each ORC",
                ctrl,
                "100",
                "OBR",
            )
        if not obr.get(4):
            raise MessageInvalid(
                "OBR-4: missing; expected the universal service identifier (requested procedure)",
                ctrl,
                "101",
                obr.loc(4),
            )
        if not orc.get(1):
            raise MessageInvalid("ORC-1: missing; expected an order control code", ctrl, "101", orc.loc(1))
        accession, acsn = self._accession(message, group)
        request: dict[str, Any] = {
            "resourceType": "ServiceRequest",
            "id": "sr-" + self._hash(accession),
            "status": self._status(orc),
            "intent": "order",
            "identifier": self._order_ids(orc, obr) + [acsn],
            "code": codeable(obr.comps(4)),
            "priority": self._priority(message, group),
            "subject": {"reference": f"Patient/{patient_id}"},
        }
        self._order_details(message, group, request, enc_id)
        study_uid = group.ipc.get(3) if group.ipc is not None else ""
        when = request.get("occurrenceDateTime") or request.get("authoredOn") or ""
        timing = request.get("occurrenceTiming", {}).get("repeat", {}).get("boundsPeriod", {})
        when = timing.get("start", when)
        index = OrderIndex(
            request["id"],
            self._hash(accession),
            study_uid,
            patient_id,
            enc_id,
            when[:10] if len(when) >= 10 else "",
            request["status"],
        )
        return request, index

    @staticmethod
    def _status(orc: Segment) -> str:
        """ORC-5 (OrderStatus) if valued, else ORC-1 (OrderControlCode[ServiceRequest.status])."""
        by_status = _ORDER_STATUS.get(orc.get(5).upper())
        return by_status or _ORDER_CONTROL.get(orc.get(1).upper(), "active")

    def _order_ids(self, orc: Segment, obr: Segment) -> list[dict[str, Any]]:
        """ORC-2 / ORC-3 (else OBR-2 / OBR-3) -> identifier PLAC / FILL."""
        out = []
        for n, code in ((2, "PLAC"), (3, "FILL")):
            ei = orc.comps(n) if orc.get(n) else obr.comps(n)
            if ei and ei[0]:
                out.append(self._ids.ei(ei, code))
        return out

    def _order_details(self, message: Hl7Message, group: _Order, request: dict[str, Any], enc_id: str) -> None:
        orc, obr, tq1 = group.orc, group.obr, group.tq1
        assert obr is not None  # checked by the caller
        reasons = [codeable(r) for r in obr.reps(31)]
        if [r for r in reasons if r]:
            request["reasonCode"] = [r for r in reasons if r]
        start = message_datetime(message, tq1, 7) if tq1 is not None else ""
        requested = message_datetime(message, obr, 6)
        if start:
            request["occurrenceTiming"] = {"repeat": {"boundsPeriod": {"start": start}}}
        elif requested:
            request["occurrenceDateTime"] = requested
        authored = message_datetime(message, orc, 9)
        if authored and orc.get(1).upper() == "NW":
            request["authoredOn"] = authored
        requester = orc.comps(12) if orc.get(12) else obr.comps(16)
        if requester and any(requester):
            request["requester"] = practitioner(requester)
        if enc_id:
            request["encounter"] = {"reference": f"Encounter/{enc_id}"}
