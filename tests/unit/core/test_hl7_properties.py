"""Property-based tests: deciding an HL7 frame never raises, whatever the frame holds.

Frames are the messages the project sends itself (ADT, ORM, OMI, A40) and the published ones
of the HL7 corpus (``tests/data/hl7``: HAPI's, python-hl7's, ...), with delimiters, escape
sequences (formatting counts among them: ``\\.sk99999999\\`` made 100 MB and ``\\.sp²\\``
raised, before stop 31), odd digits, dates and bytes inserted, and pieces cut out. Whatever
comes, ``intake_of`` returns a decision (AA, AE naming the field, or AR); a raise would be
answered AE 207 "internal error" at every resend.
"""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.v2intake import Intake, IntakeRules, intake_of
from tests.hl7_messages import a40, adt, omi, orm

CORPUS = Path(__file__).resolve().parents[2] / "data" / "hl7"
SEEDS = [orm().encode(), omi().encode(), adt("A01").encode(), adt("A08").encode(), a40().encode()] + [
    p.read_bytes() for p in sorted(CORPUS.glob("*.hl7"))
]
ATOMS = [
    b"\\",
    b"|",
    b"^",
    b"~",
    b"&",
    b'""',
    b"\r",
    b"\n",
    b"\\X",
    b"\\XFF\\",
    b"\\X00\\",
    b"\\.sp",
    b"\\.sk",
    b"\\.sk99999999\\",
    b"\\.in-",
    b"\\C2842\\",
    b"\\H\\",
    b"\\N\\",
    "²".encode(),
    "٣".encode(),
    b"9" * 30,
    b"20250230",
    b"+2500",
    b"\xff",
    b"\xc3\xa9",
    b"PID|",
    b"PV1|",
    b"OBR|",
    b"MRG|",
    b"ZZZ|",
]
RULES = IntakeRules(
    hash_key=b"k" * 32,
    versions=("2.1", "2.2", "2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8"),
    processing_ids=("P", "T", "D"),
    max_message_bytes=1 << 20,
    max_field_chars=4096,
)
MAPPER = RULES.mapper()


@st.composite
def escapes(draw: st.DrawFn) -> bytes:
    """One escape sequence of HL7 v2.5 2.7, well formed or not: a command and an argument."""
    command = draw(st.sampled_from([".sp", ".sk", ".br", ".in", ".ti", ".ce", "X", "C", "M", "H", "N", "F", "Z"]))
    argument = draw(
        st.sampled_from(["", "-3", "+2", "²", "٣", "4DC3", "0" * 12 + "5", "9" * 5000])
        | st.integers(0, 10**12).map(str)
        | st.text("0123456789ABCDEF", max_size=12)
    )
    return f"\\{command}{argument}\\".encode()


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    frame = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(frame)))
        if draw(st.booleans()):
            frame[at:at] = draw(st.sampled_from(ATOMS) | escapes() | st.binary(min_size=1, max_size=4))
        else:
            del frame[at : at + draw(st.integers(1, 8))]
    return bytes(frame)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames())
def test_every_frame_is_decided_never_raised(frame):
    decided = intake_of(frame, len(frame), False, RULES, MAPPER)  # no raise, no gigabyte
    assert isinstance(decided, Intake)
    if decided.error is not None:  # an AE or AR says which field, or at least why
        assert decided.error.text
