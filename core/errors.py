"""The PacsAIError tree, grouped by what the caller does with the error.

- ``ConfigError``: abort startup. The message lists every bad field.
- ``RejectedInput``: answer the peer with a failure status; do not retry the same data.
  - ``MessageInvalid``: an HL7 v2 message parsed but broke a rule (ACK ``AE`` with ``ERR``).
  - ``MessageRejected``: an HL7 v2 message cannot be taken as a message at all: it cannot be
    parsed, its MSH is broken, or its type, version or processing ID is not supported
    (ACK ``AR``; HL7 v2.5 2.9.2.1).
  - ``DimseRefused``: a DIMSE-N request (MPPS N-CREATE / N-SET, IAN N-CREATE) is refused;
    answer it with the status, Error Comment, Error ID and Offending Element it carries.
- ``TransientIOError``: retry with backoff; the data is kept.
  - ``OutOfResources``: our own disk is below its floor (DICOM 0xA700: the sender retries).
  - ``DependencyUnavailable``: a peer (PACS, model deployment, FHIR endpoint) cannot be
    reached now. Work waits without spending its retry budget.
- ``ModelError``: the model could not produce a result for this input (audit it, no SR).
  - ``ModelWeightsError``: a weights file is missing or its sha256 does not match.
  - ``UndecodablePixels``: one instance's Pixel Data cannot be decoded where the model reads
    it (the inference stage quarantines that instance and goes on without it).
- ``AccessDenied``: the principal may not do this.
- ``LeaseLost``: another worker owns the job now; drop the result, the ledger is right.
- ``RecordError``: a stored record cannot be read (unknown schema version, wrong type, or
  invalid content). The job it belongs to fails with the reason; nothing guesses.

Every exception here can cross a Ray actor boundary: each passes all of its arguments
positionally to ``super().__init__`` so that pickling round-trips (Ray issue #50211).
"""

from __future__ import annotations

__all__ = [
    "AccessDenied",
    "ConfigError",
    "DependencyUnavailable",
    "DimseRefused",
    "LeaseLost",
    "MessageInvalid",
    "MessageRejected",
    "ModelError",
    "ModelWeightsError",
    "OutOfResources",
    "PacsAIError",
    "RecordError",
    "RejectedInput",
    "TransientIOError",
    "UndecodablePixels",
]


class PacsAIError(Exception):
    """Root of every error this project raises on purpose."""


class ConfigError(PacsAIError):
    """A configuration cannot be used; startup must stop.

    Args:
        source: Where the configuration came from (a file path or ``"<mapping>"``).
        problems: One line per bad field: ``path.to.field: got X; expected Y``.
    """

    def __init__(self, source: str, problems: list[str]) -> None:
        super().__init__(source, problems)
        self.source = source
        self.problems = list(problems)

    def __str__(self) -> str:
        lines = [f"{self.source}: {len(self.problems)} problem(s)"]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


class RejectedInput(PacsAIError):
    """Input we will not accept as it is; the sender must not retry it unchanged.

    Args:
        reason: Human-readable reason, naming the field.
        subject: The identifier of what was rejected (a SOP Instance UID, MSH-10, ...).
    """

    def __init__(self, reason: str, subject: str = "") -> None:
        super().__init__(reason, subject)
        self.reason = reason
        self.subject = subject

    def __str__(self) -> str:
        return f"{self.reason} ({self.subject})" if self.subject else self.reason


class MessageInvalid(RejectedInput):
    """An HL7 v2 message parsed but breaks a rule; the ACK is ``AE`` with an ``ERR`` segment.

    Args:
        reason: What is wrong, naming the field, what was received and what was expected.
        subject: MSH-10 (message control ID) of the message, if known.
        error_code: HL7 table 0357 code (``101`` required field missing, ``102`` data type
            error, ``103`` table value not found, ``207`` application internal error, ...).
        location: Where, as an HL7 ERL: ``SEG^sequence^field`` (e.g. ``PID^1^3``).
    """

    def __init__(self, reason: str, subject: str = "", error_code: str = "207", location: str = "") -> None:
        PacsAIError.__init__(self, reason, subject, error_code, location)
        self.reason = reason
        self.subject = subject
        self.error_code = error_code
        self.location = location


class MessageRejected(MessageInvalid):
    """An HL7 v2 message cannot be accepted as a message; the ACK is ``AR``.

    Raised for bytes that cannot be parsed, a broken MSH, and an unsupported message type,
    version or processing ID (HL7 v2.5 2.9.2.1: the sender must not resend it unchanged).
    """


class DimseRefused(RejectedInput):
    """A DIMSE-N request we refuse, with the status to answer (PS3.7 C.5, PS3.4 F.7.2, R).

    Args:
        reason: Error Comment (0000,0902): what was received and what was expected; LO, so
            the response carries its first 64 characters.
        subject: The SOP Instance UID of the request.
        status: The failure status, e.g. ``0x0110`` (processing failure).
        offending: Offending Element (0000,0901) tags, as ints (``0x00400252``).
        error_id: Error ID (0000,0903), 0 for none (PS3.4 Table F.7.2-2: ``0xA710``).
    """

    def __init__(
        self,
        reason: str,
        subject: str = "",
        status: int = 0x0110,
        offending: tuple[int, ...] = (),
        error_id: int = 0,
    ) -> None:
        PacsAIError.__init__(self, reason, subject, status, tuple(offending), error_id)
        self.reason = reason
        self.subject = subject
        self.status = status
        self.offending = tuple(offending)
        self.error_id = error_id

    @property
    def error_comment(self) -> str:
        """Error Comment (0000,0902): LO, at most 64 characters (PS3.5 6.2)."""
        return self.reason[:64]


class TransientIOError(PacsAIError):
    """An I/O failure that may succeed later; the work is kept and retried."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class OutOfResources(TransientIOError):
    """Our own storage is below its configured floor (DICOM status 0xA700)."""


class DependencyUnavailable(TransientIOError):
    """A peer cannot be reached now; retry later without spending the retry budget.

    Args:
        dependency: Which peer (``"pacs"``, ``"model:chest_xray"``, ...).
        reason: What happened.
    """

    def __init__(self, dependency: str, reason: str) -> None:
        PacsAIError.__init__(self, dependency, reason)
        self.dependency = dependency
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.dependency} unavailable: {self.reason}"


class ModelError(PacsAIError):
    """The model could not produce a result for this input."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ModelWeightsError(ModelError):
    """A weights file is missing, unreadable or does not match its sha256."""


class UndecodablePixels(ModelError):
    """The Pixel Data of one instance cannot be decoded where the model reads it.

    The model's replica is the one decoder of what a model reads (issue 14): the validator
    checked only the frame headers of such an instance. The inference stage holds the instance
    in quarantine (``pixel_data_undecodable``, as the validator would have) and runs the task on
    the rest of the study.

    Args:
        reason: What failed, naming the instance.
        sop_instance_uid: The instance.
    """

    def __init__(self, reason: str, sop_instance_uid: str) -> None:
        super().__init__(reason)
        self.args = (reason, sop_instance_uid)  # pickled across Ray as cls(*args)
        self.sop_instance_uid = sop_instance_uid


class AccessDenied(PacsAIError):
    """The principal is not allowed to perform the action.

    Args:
        principal: Who asked.
        action: What they asked for.
    """

    def __init__(self, principal: str, action: str) -> None:
        super().__init__(principal, action)
        self.principal = principal
        self.action = action


class LeaseLost(PacsAIError):
    """The job's lease expired and another worker took it; this result is discarded."""

    def __init__(self, job_id: int, owner: str) -> None:
        super().__init__(job_id, owner)
        self.job_id = job_id
        self.owner = owner


class RecordError(PacsAIError):
    """A stored record cannot be read back (``core.codec``).

    Args:
        kind: The record type that was expected (e.g. ``JobRecord``).
        reason: What is wrong: ``got schema 7; expected 1``, or the first invalid field.
    """

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(kind, reason)
        self.kind = kind
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.kind} record: {self.reason}"
