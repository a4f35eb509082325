"""One received HL7 v2 frame, decided before it is stored: what to keep and what is wrong.

Everything a frame costs before its transaction is here: decoding and parsing
(``core.hl7``), the receiver's checks (``core.hl7_checks``), the FHIR mapping and its
validation (``core.v2fhir``). It is pure and its result is a small picklable value, so the
listener can run it wherever CPU is free: on its event loop, or in a parse worker process
(``actors.adapters.hl7_workers``) while the event loop answers other connections. *Why:* on
two cores the mapping's FHIR validation alone took more CPU than the store; run on the event
loop, it held the GIL the store's writer thread needed between its SQL statements, and the
ACK p99 of 8 connections was 23-29 ms.

The outcome follows HL7 v2.5 2.9.2.1 as the listener answers it:

- ``rejected``: not a message we take (oversized, unparseable, broken MSH, unsupported
  MSH-9/11/12, no MSH-10): AR, only its head is kept.
- otherwise the message is stored; ``error`` set: it broke a rule (AE naming the field),
  ``update`` set: what it changes once applied.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from core.acks import AckError
from core.context import ContextUpdate
from core.errors import MessageInvalid, MessageRejected
from core.hl7 import Hl7Message, MessageHeader, parse_message, peek_header
from core.hl7_checks import check_field_sizes, check_supported
from core.v2fhir import V2FhirMapper

__all__ = ["Intake", "IntakeRules", "intake_of"]


@dataclass(frozen=True, slots=True)
class IntakeRules:
    """What a frame is checked and mapped against (the ``hl7`` config slice, flattened so a
    worker process gets it as a plain value).

    Attributes:
        hash_key: Key of the hashed identifiers (the DICOM listener's).
        versions: Accepted MSH-12 values.
        processing_ids: Accepted MSH-11 values.
        max_message_bytes: The frame limit (named in the AR of an oversized frame).
        max_field_chars: The field limit (AE naming the field).
        identifier_systems: Assigning authority namespace -> Identifier.system.
        accession_fields: Where orders carry the accession number.
        validate_resources: Validate every mapped resource (fhir.resources, R4).
        default_authorities: Sending facility -> assigning authority of bare IDs.
        rejected_max_rows: Quota of the reject store (heads of messages answered AR).
    """

    hash_key: bytes
    versions: tuple[str, ...]
    processing_ids: tuple[str, ...]
    max_message_bytes: int
    max_field_chars: int
    identifier_systems: Mapping[str, str] = field(default_factory=dict)
    accession_fields: tuple[str, ...] = ("IPC-1", "OBR-18")
    validate_resources: bool = True
    default_authorities: Mapping[str, str] = field(default_factory=dict)
    rejected_max_rows: int = 100_000
    """Quota of the reject store: a rejection past it is answered AR but not kept."""

    def mapper(self) -> V2FhirMapper:
        """The FHIR mapper these rules configure."""
        return V2FhirMapper(
            self.hash_key,
            dict(self.identifier_systems),
            self.accession_fields,
            self.validate_resources,
            dict(self.default_authorities),
        )


@dataclass(frozen=True, slots=True)
class Intake:
    """What became of one frame before the store.

    Attributes:
        header: Its MSH (``None``: not even a header could be read).
        rejected: Answer AR and keep only the head (``error`` says why).
        update: What the message changes when applied (``None``: nothing, see ``error``).
        error: Why it is rejected or not applied, or ``None``.
        digest: The content digest idempotency compares (``Hl7Message.digest``).
    """

    header: MessageHeader | None
    rejected: bool = False
    update: ContextUpdate | None = None
    error: AckError | None = None
    digest: str = ""


def _ack_error(exc: MessageInvalid) -> AckError:
    return AckError(exc.error_code, exc.reason, exc.location)


def intake_of(payload: bytes, size: int, oversized: bool, rules: IntakeRules, mapper: V2FhirMapper) -> Intake:
    """Decide one frame: parse, check and map it (the order in which the checks answer).

    Args:
        payload: The frame's payload (its head only, when oversized).
        size: The frame's size in bytes.
        oversized: The frame was longer than ``rules.max_message_bytes``.
        rules: The checks' settings.
        mapper: ``rules.mapper()``, built once per process.

    Returns:
        The outcome; a bug in the mapping raises (the caller answers AE 207).
    """
    header: MessageHeader | None = None
    try:
        if oversized:
            raise MessageRejected(
                f"message: {size} bytes; expected at most {rules.max_message_bytes} (hl7.listener.max_message_bytes)",
                "",
                "102",
                "",
            )
        message = parse_message(payload)
        header = message.header
        check_supported(header, rules.versions, rules.processing_ids)
    except MessageRejected as exc:
        return Intake(header or peek_header(payload), True, None, _ack_error(exc))
    update, error = _map(message, len(payload), rules, mapper)
    return Intake(header, False, update, error, message.digest)


def _map(
    message: Hl7Message, size: int, rules: IntakeRules, mapper: V2FhirMapper
) -> tuple[ContextUpdate | None, AckError | None]:
    if message.problem is not None:  # bytes that did not decode: store, answer AE
        return None, AckError.of(message.problem)
    try:
        check_field_sizes(message, rules.max_field_chars, size)
        return mapper.map(message), None
    except MessageInvalid as exc:
        return None, _ack_error(exc)
