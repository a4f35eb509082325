"""Patient context from the HL7 bridge: what a message changes, and what a study job gets.

The context store (``actors/adapters/context_store.py``) keeps the current FHIR R4 resources
per patient, encounter and order. This module holds the pure parts:

- ``ContextUpdate``: what one message changes (resources and the keyed-hash indexes).
- ``merge_resource`` / ``rebind_patient`` / ``merge_patients``: how an update meets what is
  stored (A08 updates in place; A40 merges two patients and re-links their orders).
- ``choose_order``: which order belongs to a study when the accession does not match.
- ``StudyContext``: the small projection that travels with a job (age, sex, indication,
  priority, where the patient is). It holds no names and no identifiers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import date
from typing import Any

from core.fhir import dicom_scheme
from core.hl7 import Issue
from core.types import CodedTerm, Priority

__all__ = [
    "ContextUpdate",
    "OrderIndex",
    "PatientMerge",
    "StudyContext",
    "age_in_years",
    "choose_order",
    "merge_patients",
    "merge_resource",
    "rebind_patient",
    "relink_subject",
    "study_context",
]

_LANES = {"stat": Priority.STAT, "asap": Priority.URGENT, "urgent": Priority.URGENT}


@dataclass(frozen=True, slots=True)
class OrderIndex:
    """How an order (ServiceRequest) is found: keyed hashes and dates, no identifiers.

    Attributes:
        service_request_id: The ServiceRequest's id.
        accession_key: Keyed hash of the accession number.
        study_uid: Study Instance UID from IPC-3, if the order named one.
        patient_id: The Patient's id.
        encounter_id: The Encounter's id, if the order came with a PV1.
        order_date: ``YYYY-MM-DD`` the procedure is for (or was ordered), if known.
        status: ServiceRequest.status.
    """

    service_request_id: str
    accession_key: str
    study_uid: str
    patient_id: str
    encounter_id: str
    order_date: str
    status: str


@dataclass(frozen=True, slots=True)
class PatientMerge:
    """An A40 merge: the prior patient (MRG) is replaced by the surviving one (PID).

    Attributes:
        prior_id: The Patient id the prior identifiers map to.
        prior_keys: Keyed hashes of the bare prior IDs (MRG-1 CX.1; the DICOM join's index).
        survivor_id: The surviving Patient's id.
        prior_identity_keys: Keyed hashes of the prior identities (CX.1, authority, CX.5).
    """

    prior_id: str
    prior_keys: tuple[str, ...]
    survivor_id: str
    prior_identity_keys: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ContextUpdate:
    """What one HL7 message changes in the context store.

    Attributes:
        resources: FHIR resources to upsert (merged into the stored version by id).
        patient_keys: ``(patient_key, patient_id)``: keyed hashes of every bare PID-3 ID
            (CX.1), the index a study's DICOM Patient ID is joined by.
        encounters: ``(encounter_id, patient_id)``.
        orders: Order indexes.
        merges: A40 merges.
        patient_key: The first patient key (for the audit trail).
        accession_key: The first accession key (for the audit trail).
        identity_keys: ``(identity_key, patient_id)``: keyed hashes of every PID-3 identity
            (CX.1, assigning authority, CX.5); what finds a stored patient again.
        warnings: Optional fields that were ignored (the ACK is AA with ERR severity W).
    """

    resources: tuple[dict[str, Any], ...]
    patient_keys: tuple[tuple[str, str], ...] = ()
    encounters: tuple[tuple[str, str], ...] = ()
    orders: tuple[OrderIndex, ...] = ()
    merges: tuple[PatientMerge, ...] = ()
    patient_key: str = ""
    accession_key: str = ""
    identity_keys: tuple[tuple[str, str], ...] = ()
    warnings: tuple[Issue, ...] = ()


def merge_resource(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any]:
    """Merge a message's version of a resource into the stored one.

    Top-level elements the message carries replace the stored ones; elements it does not
    carry are kept (an ORM's minimal PID must not erase the birth date an ADT gave). Links
    from earlier merges are kept and extended. Neither argument is changed.

    >>> merge_resource({"id": "p", "sex": "male", "born": "1970"}, {"id": "p", "sex": "female"})
    {'id': 'p', 'sex': 'female', 'born': '1970'}
    """
    out = dict(old or {})  # shallow: both sides are fresh from JSON or the mapper
    for key, value in new.items():
        if key == "link" and out.get("link"):
            seen = {json.dumps(x, sort_keys=True) for x in out["link"]}
            fresh = [x for x in value if json.dumps(x, sort_keys=True) not in seen]
            out["link"] = list(out["link"]) + fresh
        else:
            out[key] = value
    return out


def _swap_refs(node: Any, old: str, new: str) -> Any:
    if isinstance(node, dict):
        return {k: (new if k == "reference" and v == old else _swap_refs(v, old, new)) for k, v in node.items()}
    if isinstance(node, list):
        return [_swap_refs(x, old, new) for x in node]
    return node


def relink_subject(resource: Mapping[str, Any], prior_id: str, survivor_id: str) -> dict[str, Any]:
    """Point every reference to ``Patient/prior_id`` at ``Patient/survivor_id``."""
    return _swap_refs(dict(resource), f"Patient/{prior_id}", f"Patient/{survivor_id}")


def rebind_patient(update: ContextUpdate, proposed: str, existing: str) -> ContextUpdate:
    """Use the stored patient ``existing`` instead of the id the message proposed.

    A patient known under several identities (PID-3 repeats) keeps one Patient resource:
    when any identity (ID, assigning authority, type) of a message is already stored, the
    store rebinds the update. A bare ID alone never rebinds (issue #16).
    """
    if proposed == existing:
        return update
    resources = []
    for res in update.resources:
        res = relink_subject(res, proposed, existing)
        if res.get("resourceType") == "Patient" and res.get("id") == proposed:
            res = {**res, "id": existing}
        resources.append(res)

    def pid(x: str) -> str:
        return existing if x == proposed else x

    return replace(
        update,
        resources=tuple(resources),
        patient_keys=tuple((k, pid(p)) for k, p in update.patient_keys),
        identity_keys=tuple((k, pid(p)) for k, p in update.identity_keys),
        encounters=tuple((e, pid(p)) for e, p in update.encounters),
        orders=tuple(replace(o, patient_id=pid(o.patient_id)) for o in update.orders),
        merges=tuple(replace(m, survivor_id=pid(m.survivor_id)) for m in update.merges),
    )


def merge_patients(
    prior: Mapping[str, Any] | None, survivor: Mapping[str, Any], merge: PatientMerge
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """Apply an A40 merge to the two Patient resources (FHIR R4 Patient.link).

    Returns:
        ``(prior, survivor)``: the prior patient inactive and ``replaced-by`` the survivor;
        the survivor ``replaces`` the prior. ``prior`` is ``None`` if it was never stored.
    """
    new_survivor = merge_resource(
        survivor,
        {"link": [{"other": {"reference": f"Patient/{merge.prior_id}"}, "type": "replaces"}]},
    )
    if prior is None:
        return None, new_survivor
    new_prior = merge_resource(
        prior,
        {
            "active": False,
            "link": [{"other": {"reference": f"Patient/{merge.survivor_id}"}, "type": "replaced-by"}],
        },
    )
    return new_prior, new_survivor


def _day(value: str) -> date | None:
    try:
        return date.fromisoformat(value[:10]) if len(value) >= 10 else None
    except ValueError:
        return None


def choose_order(
    candidates: Sequence[tuple[OrderIndex, float]], study_date: date | None, window_days: int
) -> OrderIndex | None:
    """Pick the order of a patient that belongs to a study on ``study_date``.

    Orders dated within ``window_days`` of the study qualify; the closest date wins, then
    the most recently updated. Revoked and entered-in-error orders never qualify.

    Args:
        candidates: ``(order, updated_at)`` of every order of the patient.
        study_date: Study Date (0008,0020); without it nothing qualifies.
        window_days: How far apart the order and study dates may be.
    """
    if study_date is None:
        return None
    best: tuple[int, float, OrderIndex] | None = None
    for order, updated in candidates:
        day = _day(order.order_date)
        if day is None or order.status in ("revoked", "entered-in-error"):
            continue
        distance = abs((day - study_date).days)
        if distance <= window_days and (best is None or (distance, -updated) < (best[0], -best[1])):
            best = (distance, updated, order)
    return best[2] if best else None


def age_in_years(birth: str, on: date) -> int | None:
    """Whole years from a FHIR ``birthDate`` (``YYYY[-MM[-DD]]``) to ``on``.

    >>> age_in_years("1970-06-15", date(2025, 6, 14))
    54
    >>> age_in_years("1970", date(2025, 1, 1)) is None
    True
    """
    born = _day(birth)
    if born is None or born > on:
        return None
    return on.year - born.year - ((on.month, on.day) < (born.month, born.day))


def _terms(concepts: Sequence[Mapping[str, Any]]) -> tuple[CodedTerm, ...]:
    out = []
    for concept in concepts:
        for c in concept.get("coding", []):
            scheme = dicom_scheme(c.get("system"))
            if scheme and c.get("code"):
                out.append(CodedTerm(c["code"], scheme, c.get("display") or c["code"]))
                break
    return tuple(out)


def _text(concept: Mapping[str, Any]) -> str:
    if concept.get("text"):
        return str(concept["text"])
    codings = concept.get("coding", [])
    named = [str(n) for n in (c.get("display") or c.get("code") for c in codings) if n]
    return named[0] if named else ""


@dataclass(frozen=True, slots=True)
class StudyContext:
    """The patient context a job carries: clinical facts, no names, no identifiers.

    Attributes:
        match: How the order was found: ``study_uid``, ``accession`` or ``patient+date``.
        service_request: ``ServiceRequest/<id>`` (an id derived from a keyed hash).
        patient: ``Patient/<id>``.
        encounter: ``Encounter/<id>``, or empty.
        age_years: Age on the study date.
        sex: FHIR administrative gender.
        indication: Reason for the study, as text (OBR-31).
        indication_codes: The reason, coded (schemes DICOM knows).
        procedure: The requested procedure (OBR-4), coded, if the scheme is known.
        procedure_text: The requested procedure in words.
        priority: FHIR request priority: ``routine``, ``urgent``, ``asap`` or ``stat``.
        encounter_class: v3 ActCode of the encounter: ``EMER``, ``IMP``, ``AMB``, ...
        location: Where the patient is (PV1-3), in words.
    """

    match: str
    service_request: str
    patient: str
    encounter: str = ""
    age_years: int | None = None
    sex: str = ""
    indication: str = ""
    indication_codes: tuple[CodedTerm, ...] = ()
    procedure: CodedTerm | None = None
    procedure_text: str = ""
    priority: str = "routine"
    encounter_class: str = ""
    location: str = ""

    @property
    def lane(self) -> int:
        """Scheduling priority: STAT orders first, then urgent orders and the ED."""
        lane = _LANES.get(self.priority, Priority.ROUTINE)
        if self.encounter_class == "EMER":
            lane = max(lane, Priority.URGENT)
        return int(lane)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (for the ledger's job data)."""
        return asdict(self)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> StudyContext:
        """Rebuild a context stored by :meth:`to_json`."""
        data = dict(raw)
        data["indication_codes"] = tuple(CodedTerm(**c) for c in data.get("indication_codes", ()))
        proc = data.get("procedure")
        data["procedure"] = CodedTerm(**proc) if proc else None
        return cls(**data)


def study_context(
    match: str,
    patient: Mapping[str, Any] | None,
    service_request: Mapping[str, Any],
    encounter: Mapping[str, Any] | None,
    study_date: date,
) -> StudyContext:
    """Project the stored resources onto what a job needs.

    Args:
        match: How the order was found.
        patient: The Patient resource (``None`` if the order's patient is not stored).
        service_request: The ServiceRequest resource.
        encounter: The Encounter (the order's, else the patient's latest), if any.
        study_date: The study date (else today): the reference for the age.
    """
    reasons = service_request.get("reasonCode", [])
    code = service_request.get("code", {})
    procedures = _terms([code]) if code else ()
    location = ""
    if encounter and encounter.get("location"):
        location = str(encounter["location"][0].get("location", {}).get("display", ""))
    return StudyContext(
        match=match,
        service_request=f"ServiceRequest/{service_request.get('id', '')}",
        patient=f"Patient/{patient['id']}" if patient else "",
        encounter=f"Encounter/{encounter['id']}" if encounter else "",
        age_years=age_in_years(str((patient or {}).get("birthDate", "")), study_date),
        sex=str((patient or {}).get("gender", "")),
        indication="; ".join(t for t in (_text(r) for r in reasons) if t),
        indication_codes=_terms(reasons),
        procedure=procedures[0] if procedures else None,
        procedure_text=_text(code) if code else "",
        priority=str(service_request.get("priority", "routine")),
        encounter_class=str(((encounter or {}).get("class") or {}).get("code", "")),
        location=location,
    )
