"""Synthetic HL7 v2 messages (no real patients) for unit and integration tests.

Field positions follow HL7 v2.5.1 and IHE RAD-1 / RAD-2 / RAD-4: OBR-18 is the accession number
(IHE SWF), OBR-31 the reason for study, TQ1-9 / OBR-27.6 the priority, IPC-1 the accession and
IPC-3 the Study Instance UID in OMI^O23.
"""

from __future__ import annotations

__all__ = ["a40", "adt", "field_list", "omi", "orm"]


def field_list(segment: str, fields: dict[int, str]) -> str:
    """Build a segment from ``{field number: value}`` (MSH numbering handled by the caller)."""
    last = max(fields) if fields else 0
    return "|".join([segment] + [fields.get(i, "") for i in range(1, last + 1)])


def _msh(
    kind: str,
    control: str,
    *,
    app: str = "RIS",
    facility: str = "HOSP",
    stamp: str = "20250301103000+0100",
    version: str = "2.5.1",
    extra: str = "",
) -> str:
    return f"MSH|^~\\&|{app}|{facility}|PACSAI|HOSP|{stamp}||{kind}|{control}|P|{version}{extra}"


def _pid(
    mrn: str,
    *,
    name: str = "SYNTHETIC^PATIENT^A^^DR^^L",
    birth: str = "19700615",
    sex: str = "F",
    more_ids: str = "",
    pid3: str = "",
) -> str:
    ids = pid3 or (f"{mrn}^^^HOSP^MR" + (f"~{more_ids}" if more_ids else ""))
    return field_list("PID", {1: "1", 3: ids, 5: name, 7: birth, 8: sex})


def _pv1(
    patient_class: str,
    *,
    location: str = "ED^BAY3^BED2^HOSP",
    visit: str = "V789^^^HOSP^VN",
    admitted: str = "20250301100000",
    discharged: str = "",
) -> str:
    return field_list(
        "PV1", {1: "1", 2: patient_class, 3: location, 7: "1234^SYNDOC^ANN", 19: visit, 44: admitted, 45: discharged}
    )


def adt(
    event: str = "A01",
    control: str = "ADT0001",
    *,
    mrn: str = "MRN123",
    patient_class: str = "E",
    sex: str = "F",
    birth: str = "19700615",
    pid3: str = "",
    name: str = "SYNTHETIC^PATIENT^A^^DR^^L",
    visit: str = "V789^^^HOSP^VN",
    **kw: str,
) -> str:
    """An ADT^A01 / A04 / A08 (ADT_A01 structure); ``pid3`` replaces the whole PID-3."""
    segments = [
        _msh(f"ADT^{event}^ADT_A01", control, app="ADT", **kw),
        f"EVN|{event}|20250301101500",
        _pid(mrn, sex=sex, birth=birth, pid3=pid3, name=name),
        _pv1(patient_class, visit=visit),
    ]
    return "\r".join(segments) + "\r"


def _order_segments(
    accession: str,
    priority: str,
    reason: str,
    *,
    placer: str = "PLC1001",
    filler: str = "FIL2002",
    control_code: str = "NW",
    status: str = "SC",
) -> list[str]:
    orc = field_list(
        "ORC",
        {
            1: control_code,
            2: f"{placer}^RIS",
            3: f"{filler}^PACS",
            5: status,
            7: f"^^^^^{priority}",
            9: "20250301102900",
            12: "5678^SYNREF^BOB",
        },
    )
    obr = field_list(
        "OBR",
        {
            1: "1",
            2: f"{placer}^RIS",
            3: f"{filler}^PACS",
            4: "36554-4^XR Chest 2 Views^LN",
            6: "20250301103000",
            16: "5678^SYNREF^BOB",
            18: accession,
            19: "RP01",
            20: "SPS01",
            24: "DX",
            27: f"^^^^^{priority}",
            31: reason,
        },
    )
    return [orc, obr]


def orm(
    control: str = "ORM0001",
    *,
    mrn: str = "MRN123",
    accession: str = "ACC3003",
    priority: str = "S",
    patient_class: str = "E",
    reason: str = "R07.4^Chest pain^I10^^^^^^Acute chest pain, rule out pneumothorax",
    pid3: str = "",
    name: str = "SYNTHETIC^PATIENT^A^^DR^^L",
    control_code: str = "NW",
    status: str = "SC",
    **kw: str,
) -> str:
    """An ORM^O01 radiology order (IHE RAD-2/RAD-4 v2.3.1 style, sent here as v2.5.1);
    ``control_code`` and ``status`` are ORC-1 and ORC-5 (``XO``/``CM``: the exam is done)."""
    segments = [_msh("ORM^O01^ORM_O01", control, **kw), _pid(mrn, birth="19700615", pid3=pid3, name=name)]
    if patient_class:
        segments.append(_pv1(patient_class, visit=""))
    segments += _order_segments(accession, priority, reason, control_code=control_code, status=status)
    return "\r".join(segments) + "\r"


def omi(
    control: str = "OMI0001",
    *,
    mrn: str = "MRN123",
    accession: str = "ACC4004",
    study_uid: str = "1.2.826.0.1.3680043.8.498.1",
    priority: str = "A",
    **kw: str,
) -> str:
    """An OMI^O23 imaging order (IHE RAD-4, v2.5.1) with TQ1 and IPC."""
    orc, obr = _order_segments("", priority, "^Persistent cough", placer="PLC9", filler="FIL9")
    tq1 = field_list("TQ1", {1: "1", 7: "20250302090000+0100", 9: priority})
    ipc = field_list("IPC", {1: f"{accession}^HOSP", 2: "RP9", 3: study_uid, 4: "SPS9", 5: "DX"})
    segments = [_msh("OMI^O23^OMI_O23", control, **kw), _pid(mrn), orc, tq1, obr, ipc]
    return "\r".join(segments) + "\r"


def a40(control: str = "MRG0001", *, survivor: str = "MRN123", prior: str = "MRN999") -> str:
    """An ADT^A40 merge: ``prior`` is merged into ``survivor``."""
    segments = [
        _msh("ADT^A40^ADT_A39", control, app="ADT"),
        "EVN|A40|20250301110000",
        _pid(survivor),
        field_list("MRG", {1: f"{prior}^^^HOSP^MR"}),
    ]
    return "\r".join(segments) + "\r"
