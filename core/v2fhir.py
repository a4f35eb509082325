"""HL7 v2 -> FHIR R4 for the patient context, after the HL7 v2-to-FHIR IG (STU1, R4).

Message maps (IG ``mappings/messages``): ADT_A01 (A01, A04 and A08 share its structure):
PID -> Patient, PV1 -> Encounter (+ Location); ADT_A39 (A40): PID -> the surviving Patient,
MRG -> the prior patient merged into it; ORM_O01: PID -> Patient, PV1 -> Encounter, ORC and
its OBR -> one ServiceRequest (``core.v2orders``); OMI_O23 (the IG has no map): as ORM_O01,
plus IPC-1 (accession) and IPC-3 (Study Instance UID) from IHE RAD-4. Segment and data type
rows are cited where they are used.

Minimum necessary: we map what the AI, the report and the join need (identifiers, name, birth
date, sex, death, visit, location, order, priority, reason). Address, telecom, next of kin,
race, religion and the like are not stored: the context store is a PHI vault and keeps no more
than its purpose needs.

Resource ids are keyed hashes of the identifiers (``pat-``, ``enc-``, ``loc-``, ``sr-``), so
that ids can appear in audit events and job data without revealing an MRN or accession. A
patient's and a visit's ids hash the whole identity (ID, assigning authority, type; see
``core.v2types.IdentifierMapper.identity``), never the bare ID (issue #16).
"""

from __future__ import annotations

import typing
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fhir.resources.R4B import get_fhir_model_class

from core.context import ContextUpdate, PatientMerge
from core.errors import MessageInvalid
from core.fhir import validate
from core.hl7 import Hl7Message, Issue, Segment
from core.identifiers import DEFAULT_KEY, hash_identifier
from core.v2orders import OrderMapper
from core.v2types import (
    HD,
    V2_TABLE,
    IdentifierMapper,
    PatientIdentity,
    human_name,
    location,
    message_datetime,
    practitioner,
)

__all__ = ["ENCOUNTER_CLASS", "V2FhirMapper"]

_V2 = V2_TABLE
_ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"

ENCOUNTER_CLASS = {
    "E": (_ACT, "EMER", "emergency"),
    "I": (_ACT, "IMP", "inpatient encounter"),
    "O": (_ACT, "AMB", "ambulatory"),
    "P": (_ACT, "PRENC", "pre-admission"),
    "R": (f"{_V2}0004", "R", "Recurring patient"),
    "B": (f"{_V2}0004", "B", "Obstetrics"),
    "C": (f"{_V2}0004", "C", "Commercial Account"),
    "N": (f"{_V2}0004", "N", "Not Applicable"),
    "U": (f"{_V2}0004", "U", "Unknown"),
}
"""IG concept map PatientClass[EncounterClass]: PV1-2 -> Encounter.class."""
_ENCOUNTER_STATUS = {"P": "planned", "U": "unknown"}
"""IG concept map PatientClass[EncounterStatus]; every other class is ``in-progress``."""
_NO_AUTHORITY = HD()
_GENDER = {"F": "female", "M": "male", "O": "other", "U": "unknown", "A": "other", "N": "other"}
"""IG concept map AdministrativeSex: PID-8 -> Patient.gender."""
VALIDATED_MAX = 4096
"""Resources a mapper remembers as valid (a few MB), oldest forgotten first."""
ELEMENTS_MAX = 16384
"""Validated elements (their models) a mapper remembers (a few MB), oldest forgotten first."""
_ELEMENT_CLASSES: dict[type, dict[str, type]] = {}
"""Resource model -> its complex elements' JSON names -> their model classes."""


def _element_class(annotation: Any) -> type | None:
    """The FHIR model class in a field's annotation (``Optional[List[IdentifierType]]``)."""
    get = getattr(annotation, "get_model_klass", None)
    if get is not None:
        klass: type = get()
        return klass
    for arg in typing.get_args(annotation):
        found = _element_class(arg)
        if found is not None:
            return found
    return None


def _element_classes(model: type) -> dict[str, type]:
    known = _ELEMENT_CLASSES.get(model)
    if known is None:
        known = {}
        for name, info in model.model_fields.items():  # type: ignore[attr-defined]
            klass = _element_class(info.annotation)
            if klass is not None and klass.__name__ not in ("Resource", "DomainResource"):  # not polymorphic
                known[info.alias or name] = klass
        _ELEMENT_CLASSES[model] = known
    return known


@dataclass(frozen=True, slots=True)
class _Patient:
    """A mapped PID: the resource, and the keyed hashes of its bare IDs and identities."""

    resource: dict[str, Any]
    bare_keys: tuple[str, ...]
    identity_keys: tuple[str, ...]

    @property
    def id(self) -> str:
        """The Patient's id."""
        return str(self.resource["id"])


class V2FhirMapper:
    """Maps a supported HL7 message to a ``ContextUpdate`` of FHIR R4 resources."""

    def __init__(
        self,
        key: bytes = DEFAULT_KEY,
        identifier_systems: Mapping[str, str] | None = None,
        accession_fields: Sequence[str] = ("IPC-1", "OBR-18"),
        validate_resources: bool = True,
        default_authorities: Mapping[str, str] | None = None,
    ) -> None:
        """Args:
        key: Key of the hashed identifiers (the same as the DICOM listener's).
        identifier_systems: Assigning authority namespace -> Identifier.system.
        accession_fields: Where the accession number is, first valued wins.
        validate_resources: Check every resource with fhir.resources (R4) before returning.
        default_authorities: Sending facility (MSH-4) -> assigning authority of its
            identifiers that name none (``hl7.default_assigning_authorities``).
        """
        self._key = key
        self._validate = validate_resources
        self._valid: OrderedDict[str, None] = OrderedDict()
        """``repr`` of resources that validated (insertion order: oldest first; bounded)."""
        self._elements: OrderedDict[tuple[type, str], Any] = OrderedDict()
        """Elements that validated (class, ``repr``) -> their model (oldest first; bounded)."""
        self._ids = IdentifierMapper(identifier_systems or {}, default_authorities)
        self._order_mapper = OrderMapper(self._hash, self._ids, accession_fields)

    def map(self, message: Hl7Message) -> ContextUpdate:
        """Map one message (already checked by ``core.hl7.check_supported``).

        Raises:
            MessageInvalid: A required segment or field is missing or malformed (the error
                names the field, what was received and what was expected).
        """
        h = message.header
        if h.message_code == "ADT" and h.trigger_event == "A40":
            update = self._merge(message)
        elif h.message_code == "ADT":
            update = self._admission(message)
        else:
            update = self._orders(message)
        for resource in update.resources if self._validate else ():
            self._check(resource, h.control_id)
        return update

    def _check(self, resource: dict[str, Any], control_id: str) -> None:
        """Validate a mapped resource, unless the very same one validated before.

        Sites send the same Location, and the same Patient in every A08 and order, again and
        again; fhir.resources takes 0.1-0.4 ms a resource. ``repr`` is the key: equal only
        for equal content of equal JSON types, so a resource that passed would pass again.
        A resource not seen before is validated with the elements it shares with earlier ones
        (an identifier's type, a participant, a code) taken as already validated
        (``_validate_parts``): about half the cost for the resources of a busy interface.
        """
        key = repr(resource)
        if key in self._valid:
            return
        try:
            self._validate_parts(resource)
        except ValueError:  # the whole resource once more, for the error that names the element
            try:
                validate(resource)
            except ValueError as exc:
                raise MessageInvalid(f"mapped {exc}", control_id, "207") from None
        if len(self._valid) >= VALIDATED_MAX:
            self._valid.popitem(last=False)  # O(1); a dict's first key is not, after many deletions
        self._valid[key] = None

    def _validate_parts(self, resource: Mapping[str, Any]) -> None:
        """``core.fhir.validate``, with each complex element validated on its own and
        remembered: pydantic takes a model instance for an element as it is, and validates
        a resource's element from its dict with the very ``model_validate`` of the element's
        class used here, so the outcome is the same.

        Raises:
            ValueError: It is not valid (the error does not name the resource's element).
        """
        try:
            model = get_fhir_model_class(str(resource.get("resourceType", "")))
        except (KeyError, ValueError):
            raise ValueError("unknown resourceType") from None
        parts = dict(resource)
        for name, klass in _element_classes(model).items():
            value = parts.get(name)
            if isinstance(value, list):
                parts[name] = [self._element(klass, v) for v in value]
            elif value is not None:
                parts[name] = self._element(klass, value)
        model.model_validate(parts)

    def _element(self, klass: type, value: Any) -> Any:
        if not isinstance(value, dict):
            return value  # the resource's own validation says what is wrong
        key = (klass, repr(value))
        done = self._elements.get(key)
        if done is None:
            done = klass.model_validate(value)  # type: ignore[attr-defined]
            if len(self._elements) >= ELEMENTS_MAX:
                self._elements.popitem(last=False)
            self._elements[key] = done
        return done

    # ------------------------------------------------------------ helpers
    def _hash(self, value: str) -> str:
        return hash_identifier(value, self._key)

    def _need(self, message: Hl7Message, name: str) -> Segment:
        seg = message.first(name)
        if seg is None:
            raise MessageInvalid(
                f"{name}: segment missing; expected a {name} segment in {message.header.message_type}",
                message.header.control_id,
                "100",
                name,
            )
        return seg

    def _identities(
        self,
        message: Hl7Message,
        cx_list: Sequence[Sequence[str]],
        authorities: Sequence[HD] = (),
    ) -> list[PatientIdentity]:
        h = message.header
        return [
            self._ids.identity(cx, auth, h.sending_facility, h.sending_application)
            for cx, auth in zip(cx_list, list(authorities) + [HD()] * len(cx_list), strict=False)
        ]

    @staticmethod
    def _cx_list(seg: Segment, n: int) -> list[tuple[tuple[str, ...], HD]]:
        """The valued CX repetitions of field ``n``: components, and CX.4 with its
        subcomponents (namespace ID, universal ID, its type; HL7 v2.5 2.A.33)."""
        out = []
        for rep in seg.fields[n] if n < len(seg.fields) else ():
            if rep[0][0]:  # CX.1 valued
                hd = HD.parse(rep[3]) if len(rep) > 3 and any(rep[3]) else _NO_AUTHORITY
                out.append((tuple([c[0] for c in rep]), hd))
        return out

    def _patient_id(self, identities: Sequence[PatientIdentity], keys: Sequence[str] = ()) -> str:
        """``pat-`` + keyed hash of the main identity (the MR one, else the first); ``keys``:
        the identities' hashes if already made."""
        main = next((n for n, i in enumerate(identities) if i.type_code == "MR"), 0)
        return "pat-" + (keys[main] if keys else self._hash(identities[main].material))

    # ------------------------------------------------------------ patient
    def _patient(self, message: Hl7Message, pid: Segment) -> _Patient:
        """PID -> Patient (IG PID[Patient]): PID-2/3/4 identifier, -5 name, -7 birthDate,
        -8 gender, -29/-30 deceased; with the keyed hashes of PID-3's IDs and identities."""
        cx_list = self._cx_list(pid, 3)  # read once: PID-3 is the identity and an identifier
        ids = [cx for cx, _ in cx_list]
        if not ids:
            raise MessageInvalid(
                "PID-3: missing; expected at least one patient identifier (CX.1)",
                message.header.control_id,
                "101",
                pid.loc(3),
            )
        identities = self._identities(message, ids, [hd for _, hd in cx_list])
        identity_keys = tuple(self._hash(i.material) for i in identities)
        facility = message.header.sending_facility
        patient: dict[str, Any] = {
            "resourceType": "Patient",
            "id": self._patient_id(identities, identity_keys),
            "active": True,
            "identifier": [
                self._ids.cx(cx, authority=hd, facility=facility)
                for n in (2, 3, 4)
                for cx, hd in (cx_list if n == 3 else self._cx_list(pid, n))
            ],
        }
        names = [human_name(x) for x in pid.reps(5) if any(x)]
        if names:
            patient["name"] = names
        birth = message_datetime(message, pid, 7)
        if birth:
            patient["birthDate"] = birth[:10]
        self._gender(message, pid, patient)
        died = message_datetime(message, pid, 29)
        if died:
            patient["deceasedDateTime"] = died
        elif pid.get(30).upper() in ("Y", "N"):
            patient["deceasedBoolean"] = pid.get(30).upper() == "Y"
        return _Patient(patient, tuple(self._hash(cx[0]) for cx in ids), identity_keys)

    @staticmethod
    def _gender(message: Hl7Message, pid: Segment, patient: dict[str, Any]) -> None:
        sex = pid.get(8).upper()
        if not sex:
            return
        if sex not in _GENDER:
            raise MessageInvalid(
                f"PID-8: got {sex[:10]!r}; expected one of HL7 table 0001 {sorted(_GENDER)}",
                message.header.control_id,
                "103",
                pid.loc(8),
            )
        patient["gender"] = _GENDER[sex]

    # ---------------------------------------------------------- encounter
    def _encounter(
        self, message: Hl7Message, pv1: Segment, patient_id: str
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """PV1 -> Encounter (IG PV1[Encounter]): -2 class and status, -3 location, -7
        attending, -19 identifier (VN), -44/-45 period (-45 valued: finished)."""
        cls = pv1.get(2).upper()
        if cls not in ENCOUNTER_CLASS:
            got = f"got {cls[:10]!r}" if cls else "missing"
            raise MessageInvalid(
                f"PV1-2: {got}; expected a patient class from HL7 table 0004 {sorted(ENCOUNTER_CLASS)}",
                message.header.control_id,
                "101" if not cls else "103",
                pv1.loc(2),
            )
        visits = self._cx_list(pv1, 19)[:1]
        visit, visit_hd = visits[0] if visits else ((), HD())
        admitted = message_datetime(message, pv1, 44)
        discharged = message_datetime(message, pv1, 45)
        seed = f"{patient_id}|{admitted}"
        if visit:  # the visit number's identity: scoped like a patient's
            seed = self._identities(message, [(*visit[:4], "VN")], [visit_hd])[0].material
        system, code, display = ENCOUNTER_CLASS[cls]
        enc: dict[str, Any] = {
            "resourceType": "Encounter",
            "id": "enc-" + self._hash(seed),
            "status": "finished" if discharged else _ENCOUNTER_STATUS.get(cls, "in-progress"),
            "class": {"system": system, "code": code, "display": display},
            "subject": {"reference": f"Patient/{patient_id}"},
        }
        if visit:
            facility = message.header.sending_facility
            enc["identifier"] = [self._ids.cx(visit, "VN", visit_hd, facility)]
        period = {k: v for k, v in (("start", admitted), ("end", discharged)) if v}
        if period:
            enc["period"] = period
        return enc, self._where_and_who(pv1, enc, planned=cls == "P")

    def _where_and_who(self, pv1: Segment, enc: dict[str, Any], planned: bool) -> dict[str, Any] | None:
        """PV1-7 -> participant ATND; PV1-3 -> location (and the Location it names)."""
        attending = pv1.comps(7)
        if attending and any(attending):
            enc["participant"] = [
                {
                    "type": [
                        {
                            "coding": [
                                {"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "ATND"}
                            ]
                        }
                    ],
                    "individual": practitioner(attending),
                }
            ]
        location = self._place(pv1.comps(3))
        if location is not None:
            enc["location"] = [
                {
                    "location": {"reference": f"Location/{location['id']}", "display": location["name"]},
                    "status": "planned" if planned else "active",
                }
            ]
        return location

    def _place(self, pl: Sequence[str]) -> dict[str, Any] | None:
        return location(pl, "loc-" + self._hash("|".join((list(pl) + [""] * 4)[:4])))

    # --------------------------------------------------------- messages
    def _admission(self, message: Hl7Message) -> ContextUpdate:
        """ADT^A01 / A04 / A08 (ADT_A01 structure): Patient, and Encounter from PV1."""
        patient = self._patient(message, self._need(message, "PID"))
        enc, location = self._encounter(message, self._need(message, "PV1"), patient.id)
        resources = [patient.resource] + [r for r in (location, enc) if r is not None]
        return ContextUpdate(
            resources=tuple(resources),
            patient_keys=tuple((k, patient.id) for k in patient.bare_keys),
            encounters=((enc["id"], patient.id),),
            patient_key=patient.bare_keys[0],
            identity_keys=tuple((k, patient.id) for k in patient.identity_keys),
        )

    def _merge(self, message: Hl7Message) -> ContextUpdate:
        """ADT^A40 (ADT_A39): each PID (survivor) with its MRG (MRG-1: prior identifiers)."""
        pids, mrgs = message.all("PID"), message.all("MRG")
        if not pids or len(mrgs) != len(pids):
            raise MessageInvalid(
                f"MRG: got {len(mrgs)} MRG for {len(pids)} PID; expected one MRG after each PID",
                message.header.control_id,
                "100",
                "MRG",
            )
        resources, keys, identity_keys, merges = [], [], [], []
        for pid, mrg in zip(pids, mrgs, strict=True):
            survivor = self._patient(message, pid)
            prior_list = self._cx_list(mrg, 1)
            prior_ids = [cx for cx, _ in prior_list]
            if not prior_ids:
                raise MessageInvalid(
                    "MRG-1: missing; expected the prior patient identifier list",
                    message.header.control_id,
                    "101",
                    mrg.loc(1),
                )
            prior = self._identities(message, prior_ids, [hd for _, hd in prior_list])
            merges.append(
                PatientMerge(
                    self._patient_id(prior),
                    tuple(self._hash(cx[0]) for cx in prior_ids),
                    survivor.id,
                    tuple(self._hash(i.material) for i in prior),
                )
            )
            resources.append(survivor.resource)
            keys += [(k, survivor.id) for k in survivor.bare_keys]
            identity_keys += [(k, survivor.id) for k in survivor.identity_keys]
        return ContextUpdate(
            resources=tuple(resources),
            patient_keys=tuple(keys),
            merges=tuple(merges),
            patient_key=keys[0][0],
            identity_keys=tuple(identity_keys),
        )

    def _orders(self, message: Hl7Message) -> ContextUpdate:
        """ORM^O01 / OMI^O23: Patient, Encounter (PV1, optional), one ServiceRequest per ORC."""
        patient = self._patient(message, self._need(message, "PID"))
        resources: list[dict[str, Any]] = [patient.resource]
        pv1 = message.first("PV1")
        enc_id = ""
        encounters: tuple[tuple[str, str], ...] = ()
        warnings: tuple[Issue, ...] = ()
        if pv1 is not None and pv1.get(2) and pv1.get(2).upper() not in ENCOUNTER_CLASS:
            warnings = (self._ignored_class(message, pv1),)
        elif pv1 is not None and pv1.get(2):
            enc, location = self._encounter(message, pv1, patient.id)
            resources += [r for r in (location, enc) if r is not None]
            enc_id = enc["id"]
            encounters = ((enc_id, patient.id),)
        orders = []
        for group in self._order_mapper.groups(message):
            request, index = self._order_mapper.service_request(message, group, patient.id, enc_id)
            resources.append(request)
            orders.append(index)
        return ContextUpdate(
            resources=tuple(resources),
            patient_keys=tuple((k, patient.id) for k in patient.bare_keys),
            encounters=encounters,
            orders=tuple(orders),
            patient_key=patient.bare_keys[0],
            accession_key=orders[0].accession_key,
            identity_keys=tuple((k, patient.id) for k in patient.identity_keys),
            warnings=warnings,
        )

    @staticmethod
    def _ignored_class(message: Hl7Message, pv1: Segment) -> Issue:
        """PV1 is optional in ORM_O01 and OMI_O23: an unknown PV1-2 loses the visit (no
        Encounter), not the order; the AA says so with an ERR of severity W (issue #16)."""
        return Issue(
            "103",
            (
                f"PV1-2: got {pv1.get(2)[:10]!r}; expected a patient class from HL7 table 0004 "
                f"{sorted(ENCOUNTER_CLASS)}; the visit was ignored, the order applied"
            ),
            pv1.loc(2),
            "W",
        )
