"""Our audit entries as DICOM audit messages (PS3.15 A.5, the XML an audit record repository reads).

Each event type maps to one DICOM event (``EVENTS``: EventID from CID 400, EventActionCode,
the outcome of a failure). Types without a row are reported as 110100 Application Activity,
so a new event type is exported (less precisely) before anyone maps it. Our own type travels
too, as an EventTypeCode in the ``PACSAI`` scheme, so the repository can tell the 30-odd
events apart.

*What is never in a message:* names, patient IDs, free text from ``detail``. The patient is a
participant object only by its keyed hash (``patient_key``, ``core.identifiers``), flagged as
such in a ParticipantObjectDetail; ``detail`` values leave only for the keys in
``_DETAIL_KEYS`` (status, model family and version, reason codes), base64-encoded as the
schema asks.

Pure: the caller gives the source's names; nothing here reads the host or the clock.
"""

from __future__ import annotations

import base64
import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from core.audit import AuditEntry
from core.types import AuditEventType as T

__all__ = ["AuditSource", "EVENTS", "EventSpec", "audit_message", "outcome_of", "spec_for"]

SCHEME = "PACSAI"
"""codeSystemName of the EventTypeCode that carries our own event type."""


@dataclass(frozen=True, slots=True)
class EventSpec:
    """How one of our event types is reported.

    Attributes:
        code: EventID code value (DCM, CID 400).
        meaning: Its code meaning.
        action: EventActionCode: C(reate), R(ead), U(pdate), D(elete), E(xecute).
        outcome: EventOutcomeIndicator: 0 success, 4 minor, 8 serious, 12 major failure.
    """

    code: str
    meaning: str
    action: str
    outcome: str = "0"


ACTIVITY = ("110100", "Application Activity")
ACCESSED = ("110103", "DICOM Instances Accessed")
TRANSFERRED = ("110104", "DICOM Instances Transferred")
EXPORT = ("110106", "Export")
ORDER = ("110109", "Order Record")
PATIENT = ("110110", "Patient Record")
PROCEDURE = ("110111", "Procedure Record")
QUERY = ("110112", "Query")
SECURITY = ("110113", "Security Alert")
AUTHENTICATION = ("110114", "User Authentication")


def _spec(event: tuple[str, str], action: str, outcome: str = "0") -> EventSpec:
    return EventSpec(event[0], event[1], action, outcome)


EVENTS: MappingProxyType[str, EventSpec] = MappingProxyType(
    {
        T.INSTANCE_RECEIVED: _spec(TRANSFERRED, "C"),
        T.INSTANCE_DUPLICATE: _spec(TRANSFERRED, "R"),
        T.INSTANCE_REJECTED: _spec(TRANSFERRED, "C", "4"),
        T.STUDY_COMPLETE: _spec(ACTIVITY, "E"),
        T.VALIDATED: _spec(ACCESSED, "R"),
        T.QUARANTINED: _spec(ACCESSED, "U", "4"),
        T.ROUTED: _spec(ACTIVITY, "E"),
        T.SKIPPED: _spec(ACTIVITY, "E"),
        T.LINKED: _spec(ACTIVITY, "E"),
        T.PRIOR_QUERY: _spec(QUERY, "E"),
        T.PRIOR_RETRIEVED: _spec(TRANSFERRED, "C"),
        T.PRIOR_IDENTITY_CONFLICT: _spec(PATIENT, "R", "4"),
        T.PRIOR_ISSUER_MISMATCH: _spec(PATIENT, "R", "4"),
        T.PRIOR_UNVERIFIED: _spec(PATIENT, "R", "4"),
        T.MPPS_RECEIVED: _spec(PROCEDURE, "U"),
        T.IAN_RECEIVED: _spec(PROCEDURE, "U"),
        T.EVIDENCE_REFUSED: _spec(PROCEDURE, "U", "4"),
        T.SENDER_TIGHTENED: _spec(ACTIVITY, "U"),
        T.INFERRED: _spec(ACCESSED, "R"),
        T.INFERENCE_FAILED: _spec(ACCESSED, "R", "4"),
        T.SR_BUILT: _spec(ACCESSED, "C"),
        T.SR_DELIVERED: _spec(TRANSFERRED, "R"),
        T.SR_VERSION_SUPERSEDED: _spec(ACCESSED, "D"),
        T.SR_VERSION_CAP_REACHED: _spec(ACTIVITY, "E", "4"),
        T.DELIVERY_FAILED: _spec(TRANSFERRED, "R", "4"),
        T.JOB_RETRY: _spec(ACTIVITY, "E", "4"),
        T.JOB_DEAD: _spec(ACTIVITY, "E", "8"),
        T.JOB_REPLAYED: _spec(ACTIVITY, "E"),
        T.LEASE_TAKEN_BACK: _spec(ACTIVITY, "E"),
        T.REVIEW_FLAG_RESOLVED: _spec(PATIENT, "U"),
        T.AI_SWITCH_CHANGED: _spec(ACTIVITY, "U"),
        T.QUARANTINE_RELEASED: _spec(ACCESSED, "U"),
        T.QUARANTINE_DISCARDED: _spec(ACCESSED, "D"),
        T.HL7_RECEIVED: _spec(ORDER, "C"),
        T.HL7_REJECTED: _spec(ORDER, "C", "4"),
        T.CONTEXT_READ: _spec(PATIENT, "R"),
        T.EHR_REPORT_QUEUED: _spec(ACTIVITY, "E"),
        T.EHR_REPORT_DELIVERED: _spec(EXPORT, "R"),
        T.RESEARCH_EXPORTED: _spec(EXPORT, "R"),
        T.DATA_KEYS_ROTATED: _spec(SECURITY, "U"),
        T.EHR_REPORT_FAILED: _spec(EXPORT, "R", "4"),
        T.EHR_REPORT_REPLAYED: _spec(ACTIVITY, "E"),
        T.API_REQUEST: _spec(ACTIVITY, "E"),
        T.API_TOKEN_CREATED: _spec(SECURITY, "C"),
        T.API_TOKEN_REVOKED: _spec(SECURITY, "D"),
        T.MODEL_PROMOTED: _spec(ACTIVITY, "U"),
        T.MODEL_ROLLED_BACK: _spec(ACTIVITY, "U"),
        "association_refused": _spec(SECURITY, "E", "4"),  # a peer not allowed (node authentication)
        "hl7_peer_refused": _spec(SECURITY, "E", "4"),
        "data_purged": _spec(ACTIVITY, "D"),  # retention (core.retention): counts per store, no PHI
        T.ALERT_POLICY_CHANGED: _spec(SECURITY, "U"),  # who sees which alerts changed
        T.ALERT_POLICY_REJECTED: _spec(SECURITY, "U", "4"),
        T.RESULT_VIEWED: _spec(ACCESSED, "R"),
        T.FINDING_REVIEWED: _spec(ACCESSED, "U"),
        T.VERIFIED_SR_DELIVERED: _spec(TRANSFERRED, "R"),
        T.ALERT_PUSHED: _spec(EXPORT, "R"),
        T.AGREEMENT_BELOW_FLOOR: _spec(ACTIVITY, "E", "4"),
        T.METRICS_EXPORTED: _spec(EXPORT, "R"),
    }
)
"""Our event types and the DICOM events they are reported as (unknown: Application Activity)."""

_DETAIL_KEYS = ("status", "kind", "family", "version", "codes", "reason_codes", "purpose", "method", "match")
"""``detail`` keys whose values are codes, never free text or identifiers: only these leave."""
_ROLE_APPLICATION = ("110150", "Application")
_ROLE_SOURCE = ("110153", "Source Role ID")
_ROLE_DESTINATION = ("110152", "Destination Role ID")


@dataclass(frozen=True, slots=True)
class AuditSource:
    """Who reports: this bridge.

    Attributes:
        source_id: AuditSourceID and the bridge's UserID (a host name or AE title).
        host: Where it runs (NetworkAccessPointID, a machine name).
        enterprise_site_id: AuditEnterpriseSiteID, or ``""``.
    """

    source_id: str
    host: str
    enterprise_site_id: str = ""


def spec_for(entry: AuditEntry) -> EventSpec:
    """The DICOM event of an entry: its row, refined for API requests by their HTTP status."""
    spec = EVENTS.get(entry.type, _spec(ACTIVITY, "E"))
    if entry.type != T.API_REQUEST:
        return spec
    status = _int(entry.detail.get("status"))
    if status in (401, 403):
        return _spec(AUTHENTICATION, "E", "4")
    base = _spec(ACCESSED, "R") if entry.study_uid else spec
    return EventSpec(base.code, base.meaning, base.action, outcome_of(status))


def outcome_of(http_status: int | None) -> str:
    """EventOutcomeIndicator of an HTTP status: 2xx/3xx success, 4xx minor, 5xx serious."""
    if http_status is None or http_status < 400:
        return "0"
    return "4" if http_status < 500 else "8"


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _coded(parent: ET.Element, tag: str, code: str, scheme: str, meaning: str) -> ET.Element:
    """A CodedValueType element (``csd-code``, ``codeSystemName``, ``originalText``)."""
    return ET.SubElement(parent, tag, {"csd-code": code, "codeSystemName": scheme, "originalText": meaning})


def _event(root: ET.Element, entry: AuditEntry, spec: EventSpec) -> None:
    stamp = datetime.fromtimestamp(entry.at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    attrs = {"EventActionCode": spec.action, "EventDateTime": stamp, "EventOutcomeIndicator": spec.outcome}
    node = ET.SubElement(root, "EventIdentification", attrs)
    _coded(node, "EventID", spec.code, "DCM", spec.meaning)
    _coded(node, "EventTypeCode", entry.type, SCHEME, entry.type.replace("_", " "))
    if spec.outcome != "0":
        description = ET.SubElement(node, "EventOutcomeDescription")
        description.text = f"{entry.type} (see the pacsai audit trail, seq {entry.seq})"


def _participant(root: ET.Element, user: str, requestor: bool, role: tuple[str, str] | None, host: str = "") -> None:
    attrs = {"UserID": user, "UserIsRequestor": "true" if requestor else "false"}
    if host:
        attrs |= {"NetworkAccessPointID": host, "NetworkAccessPointTypeCode": "1"}
    node = ET.SubElement(root, "ActiveParticipant", attrs)
    if role is not None:
        _coded(node, "RoleIDCode", role[0], "DCM", role[1])


def _participants(root: ET.Element, entry: AuditEntry, source: AuditSource) -> None:
    """The actor (a stage of ours or a user), this bridge, and a DICOM peer where one sent."""
    peer = str(entry.detail.get("calling_ae") or "")
    ours = entry.actor.startswith("stage:") or not entry.actor
    if ours:
        role = _ROLE_DESTINATION if peer else _ROLE_APPLICATION
        _participant(root, source.source_id, True, role, source.host)
    else:
        _participant(root, entry.actor, True, None)
        _participant(root, source.source_id, False, _ROLE_APPLICATION, source.host)
    if peer:
        _participant(root, peer, False, _ROLE_SOURCE)


def _source(root: ET.Element, source: AuditSource) -> None:
    attrs = {"AuditSourceID": source.source_id}
    if source.enterprise_site_id:
        attrs = {"AuditEnterpriseSiteID": source.enterprise_site_id, **attrs}
    node = ET.SubElement(root, "AuditSourceIdentification", attrs)
    ET.SubElement(node, "AuditSourceTypeCode", {"csd-code": "4"})  # application server process


def _detail(node: ET.Element, kind: str, value: str) -> None:
    encoded = base64.b64encode(value.encode()).decode("ascii")
    ET.SubElement(node, "ParticipantObjectDetail", {"type": kind, "value": encoded})


def _study(root: ET.Element, entry: AuditEntry) -> None:
    """The study (110180 Study Instance UID), with the instance and the job where known."""
    attrs = {
        "ParticipantObjectID": entry.study_uid,
        "ParticipantObjectTypeCode": "2",
        "ParticipantObjectTypeCodeRole": "3",
    }
    node = ET.SubElement(root, "ParticipantObjectIdentification", attrs)
    _coded(node, "ParticipantObjectIDTypeCode", "110180", "DCM", "Study Instance UID")
    ET.SubElement(node, "ParticipantObjectName").text = entry.study_uid
    if entry.job_id is not None:
        _detail(node, "JobID", str(entry.job_id))
    for key in _DETAIL_KEYS:
        if key in entry.detail:
            _detail(node, key, json.dumps(entry.detail[key], sort_keys=True, default=str))
    if entry.sop_instance_uid:
        description = ET.SubElement(node, "ParticipantObjectDescription")
        sop_class = ET.SubElement(description, "SOPClass", {"NumberOfInstances": "1"})
        ET.SubElement(sop_class, "Instance", {"UID": entry.sop_instance_uid})


def _patient(root: ET.Element, patient_key: str) -> None:
    """The patient by keyed hash only (Person, Patient role); the detail says it is a hash."""
    attrs = {
        "ParticipantObjectID": patient_key,
        "ParticipantObjectTypeCode": "1",
        "ParticipantObjectTypeCodeRole": "1",
    }
    node = ET.SubElement(root, "ParticipantObjectIdentification", attrs)
    _coded(node, "ParticipantObjectIDTypeCode", "2", "RFC-3881", "Patient Number")
    ET.SubElement(node, "ParticipantObjectName").text = patient_key
    _detail(node, "IdentifierHash", "HMAC-SHA256/64 keyed hash of Patient ID (0010,0020)")


def audit_message(entry: AuditEntry, source: AuditSource) -> bytes:
    """The entry as one DICOM audit message (UTF-8 XML, no declaration: the syslog BOM says UTF-8)."""
    root = ET.Element("AuditMessage")
    _event(root, entry, spec_for(entry))
    _participants(root, entry, source)
    _source(root, source)
    if entry.study_uid:
        _study(root, entry)
    patient_key = entry.detail.get("patient_key")
    if isinstance(patient_key, str) and patient_key:
        _patient(root, patient_key)
    return ET.tostring(root, encoding="utf-8", xml_declaration=False)
