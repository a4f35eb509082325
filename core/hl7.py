"""HL7 v2 messages: take what arrives on the MLLP link apart and check it.

Pure: bytes in, immutable values out; no sockets, no clock. ``str.split`` cuts the ER7 text,
``core.escapes`` resolves escape sequences; our own checks of the MSH come first, because a
broken MSH is exactly what must be answered ``AR`` with a reason (``core.acks`` builds the
answers). hl7apy parses the same ORM^O01 about 40 times slower here, too slow for the ACK
latency goal; the tests use it as an independent check of our ACKs.

Character sets live in ``core.charsets``, escape sequences in ``core.escapes`` (our own: the
library's logged whole field values, issue #16).

What is checked where (HL7 v2.5 2.9.2.1): ``parse_message`` here and
``core.hl7_checks.check_supported`` raise ``MessageRejected`` (AR: unparseable, broken MSH,
unsupported MSH-9 / MSH-11 / MSH-12, no MSH-10); ``core.hl7_checks.check_field_sizes`` and the
FHIR mapping raise ``MessageInvalid`` (AE, naming the field).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from core.charsets import BOM, TABLE_0211, decode
from core.errors import MessageRejected
from core.escapes import Delimiters, escape, unescape

__all__ = [
    "Hl7Message",
    "Issue",
    "MessageHeader",
    "Segment",
    "content_digest",
    "escape",
    "parse_message",
    "peek_header",
]

_STD = "|^~\\&"
_CONTROL = re.compile("[\x00-\x08\x0a-\x0c\x0e-\x1f\x7f]")
"""C0 controls other than TAB and CR (LF is normalised to CR before the check), and DEL."""
_SEGMENT_ID = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")


@dataclass(frozen=True, slots=True)
class MessageHeader:
    """The MSH fields we act on. HD and other composite values keep their components in
    ER7 with the standard delimiters (``RIS^1.2.3^ISO``), whatever the sender's MSH-2 was."""

    sending_application: str
    sending_facility: str
    receiving_application: str
    receiving_facility: str
    message_code: str
    trigger_event: str
    structure: str
    control_id: str
    processing_id: str
    version: str
    accept_ack_type: str = ""
    application_ack_type: str = ""
    charset: str = ""
    timestamp: str = ""

    @property
    def message_type(self) -> str:
        """``ADT^A01`` style type and trigger."""
        return f"{self.message_code}^{self.trigger_event}"

    @property
    def enhanced_mode(self) -> bool:
        """Whether MSH-15 or MSH-16 asks for enhanced acknowledgement mode."""
        return bool(self.accept_ack_type or self.application_ack_type)


@dataclass(frozen=True, slots=True)
class Segment:
    """One segment, unescaped: ``fields[n]`` is field n as repetitions -> components ->
    subcomponents (for MSH, field 1 is the field separator as in the standard's numbering)."""

    name: str
    index: int
    fields: tuple[tuple[tuple[tuple[str, ...], ...], ...], ...]

    def reps(self, n: int) -> tuple[tuple[str, ...], ...]:
        """Each repetition of field ``n`` as its components (first subcomponent of each)."""
        if n >= len(self.fields):
            return ()
        return tuple(tuple(c[0] for c in rep) for rep in self.fields[n] if any(any(c) for c in rep))

    def comps(self, n: int, rep: int = 1) -> tuple[str, ...]:
        """The components of repetition ``rep`` of field ``n`` (empty tuple if absent)."""
        if n >= len(self.fields) or len(self.fields[n]) < rep:
            return ()
        return tuple(c[0] for c in self.fields[n][rep - 1])

    def subs(self, n: int, comp: int, rep: int = 1) -> tuple[str, ...]:
        """The subcomponents of component ``comp`` of repetition ``rep`` of field ``n``.

        An HD inside a component (CX.4, PL.4, XCN.9, ...) keeps its universal ID and type
        here, where ``reps`` and ``comps`` give only its namespace ID.
        """
        if n >= len(self.fields) or len(self.fields[n]) < rep:
            return ()
        components = self.fields[n][rep - 1]
        return components[comp - 1] if len(components) >= comp else ()

    def get(self, n: int, comp: int = 1, rep: int = 1, sub: int = 1) -> str:
        """One value: field ``n``, component ``comp``, repetition ``rep``, subcomponent ``sub``."""
        if n >= len(self.fields) or len(self.fields[n]) < rep:
            return ""
        components = self.fields[n][rep - 1]
        if len(components) < comp or len(components[comp - 1]) < sub:
            return ""
        return components[comp - 1][sub - 1]

    def loc(self, n: int) -> str:
        """This field's HL7 error location (ERL): ``PID^1^3``."""
        return f"{self.name}^{self.index}^{n}"


@dataclass(frozen=True, slots=True)
class Issue:
    """Something wrong in one field that does not stop the message being stored (an ERR).

    Attributes:
        code: HL7 table 0357 code.
        reason: What was received and what was expected (may quote values: PHI).
        location: HL7 ERL, ``SEG^sequence^field``.
        severity: ERR-4 (HL7 table 0516): ``E`` error, ``W`` warning.
    """

    code: str
    reason: str
    location: str = ""
    severity: str = "E"


@dataclass(frozen=True, slots=True)
class Hl7Message:
    """A parsed message: its header, its segments in order, and a decoding problem, if any.

    ``problem`` is set when the bytes did not decode by MSH-18: the message was read byte
    for byte as Latin-1 so that it can be stored and answered AE, but it must not be applied.
    ``digest`` identifies the content for idempotency (see ``content_digest``).
    """

    header: MessageHeader
    segments: tuple[Segment, ...]
    problem: Issue | None = None
    digest: str = ""

    def all(self, name: str) -> list[Segment]:
        """Every segment with this ID, in order."""
        return [s for s in self.segments if s.name == name]

    def first(self, name: str) -> Segment | None:
        """The first segment with this ID, if any."""
        return next((s for s in self.segments if s.name == name), None)


def _reject(reason: str, code: str = "102", location: str = "", subject: str = "") -> MessageRejected:
    return MessageRejected(reason, subject, code, location)


def _msh_line(raw: bytes) -> bytes:
    """The bytes up to the first CR or LF: the MSH segment, whichever separator ends it."""
    ends = [i for i in (raw.find(b"\r"), raw.find(b"\n")) if i >= 0]
    return raw[: min(ends)] if ends else raw


def _declared_charset(head: str) -> str:
    """MSH-18's first repetition's first component, from the MSH line (Latin-1 text)."""
    fields = head.split(head[3]) if len(head) > 3 else []
    if len(fields) <= 17:
        return ""
    value = fields[17]
    for sep in head[5:6] + head[4:5]:  # repetition, then component separator
        if not sep.isalnum():
            value = value.split(sep)[0]
    return value.strip()


def _where(text: str, offset: int) -> str:
    """The HL7 ERL (``PID^1^5``) of a character offset in undecoded (Latin-1) text."""
    before = _normalise(text[:offset] + "x")[:-1].split("\r")
    line, names = before[-1], [seg[:3] for seg in before]
    fs = text[3] if len(text) > 3 else "|"
    field = line.count(fs) + (1 if line.startswith("MSH") else 0)
    return f"{line[:3]}^{names.count(line[:3])}^{field}"


def _decode(raw: bytes) -> tuple[str, str, Issue | None]:
    """Decode by MSH-18 (``core.charsets``); never reject for the character set (issue #16).

    MSH-18 is read from the MSH segment alone, whichever of CR, LF or CRLF ends it: the
    separators are normalised only after decoding, and an LF-separated message must not
    take its character set from the next segment. Bytes that do not decode give an
    ``Issue`` (AE naming the field) and the text read as Latin-1, byte for byte.
    """
    raw = raw[len(BOM) :] if raw.startswith(BOM) else raw
    head = _msh_line(raw).decode("latin-1")
    label = _declared_charset(head)
    done = decode(raw, label)
    if done.bad_offset < 0:
        return done.text, done.codec, None
    byte = f"0x{raw[done.bad_offset]:02X} at offset {done.bad_offset}"
    if done.unknown_label:
        return (
            done.text,
            done.codec,
            Issue(
                "103",
                (
                    f"MSH-18: got {label[:40]!r}, not a character set we know, and byte {byte} is not "
                    f"ASCII; expected one of HL7 table 0211 {sorted(TABLE_0211)} or a common alias "
                    "(UTF-8, ISO-8859-1, WINDOWS-1252, ...)"
                ),
                "MSH^1^18",
            ),
        )
    where = _where(done.text, done.bad_offset)
    field = where.split("^")[0] + "-" + where.split("^")[2]
    return (
        done.text,
        done.codec,
        Issue(
            "102",
            (f"{field}: byte {byte} is not valid {label[:40]} (MSH-18); expected text in the declared character set"),
            where,
        ),
    )


def _normalise(text: str) -> str:
    """Segments end in CR (2.5.1.2); accept CRLF and LF, drop trailing terminators."""
    return text.replace("\r\n", "\r").replace("\n", "\r").strip("\r")


def _check_text(text: str) -> None:
    found = _CONTROL.search(text)
    if found is not None:
        raise _reject(
            f"character 0x{ord(found.group()):02X} at offset {found.start()}: control "
            "characters are not allowed in ER7 text; expected printable text with segments "
            "ending in CR"
        )


def _delimiters(text: str) -> tuple[str, str]:
    """Return MSH-1 and MSH-2, or raise ``MessageRejected`` saying what is wrong."""
    if not text.startswith("MSH") or len(text) < 4:
        got = text[:12].encode("unicode_escape").decode()
        raise _reject(f"message start: got {got!r}; expected an MSH segment first", "100", "MSH^1")
    fs = text[3]
    end = text.find(fs, 4)
    enc = text[4:end] if end > 0 else ""
    chars = fs + enc
    bad = (
        fs.isalnum()
        or fs.isspace()
        or len(enc) not in (4, 5)
        or len(set(chars)) != len(chars)
        or any(c.isalnum() or c.isspace() for c in enc)
    )
    if bad:
        raise _reject(
            f"MSH-1/MSH-2 delimiters: got {fs!r} and {enc!r}; expected a field separator and 4 "
            "distinct non-alphanumeric encoding characters, e.g. '|' and '^~\\&'",
            "102",
            "MSH^1^2",
        )
    return fs, enc


def _check_segment_ids(text: str, fs: str) -> None:
    """Every segment starts with an ID and the field separator; one MSH per frame."""
    for number, seg in enumerate(text.split("\r"), start=1):
        if not seg:  # a blank line between segments carries nothing
            continue
        name = seg[:3]
        if len(seg) < 3 or not set(name) <= _SEGMENT_ID or (len(seg) > 3 and seg[3] != fs):
            shown = seg[:8].encode("unicode_escape").decode()
            raise _reject(
                f"segment {number}: got {shown!r}; expected a 3-character segment ID "
                "(A-Z, 0-9) followed by the field separator",
                "100",
            )
        if name == "MSH" and number > 1:  # a batch, or two messages in one frame
            raise _reject(
                f"segment {number}: a second MSH; expected one message per MLLP frame (batches are not supported)",
                "100",
                "MSH^2",
            )


def _segments(text: str, fs: str, enc: str, codec: str = "utf-8") -> tuple[Segment, ...]:
    """Split ER7 text into segments -> fields -> repetitions -> components -> subcomponents.

    ``str.split`` does the splitting (python-hl7's recursive parser costs about 0.6 ms per
    ORM^O01 here, ten times more); ``core.escapes`` resolves escape sequences (2.7 of
    chapter 2), only in values that contain the escape character, and logs nothing. Leading
    and trailing blanks are dropped from every value: they carry nothing, and FHIR codes
    must not have them. The HL7 null ``""`` ("delete this value") is read as empty: the
    context store keeps what it has rather than deleting on a message's word.
    """
    cs, rs, esc, ss = enc[0], enc[1], enc[2], enc[3]
    delimiters = Delimiters.of(fs, enc)

    def value(v: str) -> str:
        v = (unescape(v, delimiters, codec) if esc in v else v).strip()
        return "" if v == '""' else v

    def field(raw: str) -> tuple[tuple[tuple[str, ...], ...], ...]:
        plain = esc not in raw and '""' not in raw  # most values: nothing to resolve
        if rs not in raw and cs not in raw and ss not in raw:
            return (((raw.strip() if plain else value(raw),),),)  # most fields: one value
        if plain:
            return tuple(
                [tuple([tuple([v.strip() for v in comp.split(ss)]) for comp in rep.split(cs)]) for rep in raw.split(rs)]
            )
        return tuple(
            [tuple([tuple([value(v) for v in comp.split(ss)]) for comp in rep.split(cs)]) for rep in raw.split(rs)]
        )

    counts: dict[str, int] = {}
    out = []
    for raw in text.split("\r"):
        if not raw:
            continue
        parts = raw.split(fs)
        name = parts[0]
        counts[name] = counts.get(name, 0) + 1
        head = [(((name,),),)]
        if name == "MSH":  # MSH-1 is the field separator itself, MSH-2 the delimiters
            head += [(((fs,),),), (((enc,),),)]
            parts = parts[1:]
        fields = head + [field(p) for p in parts[1:]]
        out.append(Segment(name, counts[name], tuple(fields)))
    return tuple(out)


def _er7(parts: Iterable[str]) -> str:
    """Components joined with the standard delimiters, each escaped (2.7 escape sequences)."""
    return "^".join(escape(p) for p in parts).rstrip("^")


def _header(msh: Segment) -> MessageHeader:
    def hd(n: int) -> str:
        return _er7(msh.comps(n))

    return MessageHeader(
        sending_application=hd(3),
        sending_facility=hd(4),
        receiving_application=hd(5),
        receiving_facility=hd(6),
        message_code=msh.get(9, 1).strip().upper(),
        trigger_event=msh.get(9, 2).strip().upper(),
        structure=msh.get(9, 3).strip().upper(),
        control_id=msh.get(10).strip(),
        processing_id=msh.get(11).strip().upper(),
        version=msh.get(12).strip(),
        accept_ack_type=msh.get(15).strip().upper(),
        application_ack_type=msh.get(16).strip().upper(),
        charset=msh.get(18).strip(),
        timestamp=msh.get(7).strip(),
    )


def parse_message(raw: bytes) -> Hl7Message:
    """Parse one message as received (the MLLP frame's payload).

    Args:
        raw: The bytes between the MLLP start and end blocks.

    Returns:
        The message with its header.

    Raises:
        MessageRejected: It cannot be parsed, or its MSH is broken. Bytes that do not decode
            by MSH-18 are not a reject: the message comes back with ``problem`` set.
    """
    decoded, codec, problem = _decode(raw)
    text = _normalise(decoded)
    _check_text(text)
    fs, enc = _delimiters(text)
    _check_segment_ids(text, fs)
    segments = _segments(text, fs, enc, codec)
    return Hl7Message(_header(segments[0]), segments, problem, content_digest(text, fs))


def content_digest(text: str, fs: str) -> str:
    """SHA-256 of a message's content: the text with segments ending in CR, without MSH-7.

    Two copies of one message compare equal when a sender resends it later (a new MSH-7,
    the time of sending) or through an engine that ends segments in CRLF; any other
    difference is other content (issue #16: a conflict, not a duplicate).

    >>> a = content_digest("MSH|^~\\\\&|RIS|H|||20250101||ADT^A01|7|P|2.5\\rPID|1", "|")
    >>> a == content_digest("MSH|^~\\\\&|RIS|H|||20990101||ADT^A01|7|P|2.5\\rPID|1", "|")
    True
    >>> a == content_digest("MSH|^~\\\\&|RIS|H|||20250101||ADT^A01|7|P|2.5\\rPID|2", "|")
    False
    """
    head, _, rest = text.partition("\r")
    fields = head.split(fs)
    if len(fields) > 6:
        fields[6] = ""
    content = fs.join(fields) + "\r" + rest
    return hashlib.sha256(content.encode("utf-8", "surrogatepass")).hexdigest()


def peek_header(raw: bytes) -> MessageHeader | None:
    """Best effort: the header of a message that failed to parse, to address the AR to it.

    When MSH-2 is broken, MSH-9, MSH-10 and the rest are still read by position from the raw
    MSH line (``_recover_header``), so the sender can match the AR to what it sent.
    """
    raw = raw[len(BOM) :] if raw.startswith(BOM) else raw
    line = _msh_line(raw).decode("latin-1")
    try:
        fs, enc = _delimiters(line)
        return _header(_segments(line, fs, enc)[0])
    except (MessageRejected, IndexError, ValueError):
        return _recover_header(line)


def _recover_header(line: str) -> MessageHeader | None:
    """Read an MSH with a broken MSH-2 by position (issue #16).

    The field separator is MSH-1 (it must not be a letter, digit or blank); components are
    split at MSH-2's first character when it can be a delimiter, else at ``^``. Values are
    taken as they stand (no escape sequences resolved): they only address the AR.
    """
    if not line.startswith("MSH") or len(line) < 4 or line[3].isalnum() or line[3].isspace():
        return None
    parts = line.split(line[3])  # parts[n - 1] is MSH-n
    enc = parts[1] if len(parts) > 1 else ""
    cs = enc[0] if enc and not (enc[0].isalnum() or enc[0].isspace()) else "^"

    def comps(n: int) -> list[str]:
        return [c.strip() for c in (parts[n - 1] if len(parts) >= n else "").split(cs)]

    kind = comps(9) + ["", ""]
    return MessageHeader(
        sending_application=_er7(comps(3)),
        sending_facility=_er7(comps(4)),
        receiving_application=_er7(comps(5)),
        receiving_facility=_er7(comps(6)),
        message_code=kind[0].upper(),
        trigger_event=kind[1].upper(),
        structure=kind[2].upper(),
        control_id=parts[9].strip() if len(parts) >= 10 else "",
        processing_id=comps(11)[0].upper(),
        version=comps(12)[0],
        accept_ack_type=comps(15)[0].upper(),
        application_ack_type=comps(16)[0].upper(),
        charset=comps(18)[0],
        timestamp=comps(7)[0],
    )
