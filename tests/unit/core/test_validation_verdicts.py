"""The validator's remembered verdicts (``core._verdicts``) never leak between instances.

The validator remembers that the attributes a series shares were found clean, keyed by their
raw bytes. An instance that differs from a remembered one in any checked element must get
exactly the issues and facts a fresh validator gives it: each test inspects a clean slice first
(so its verdict is remembered), then the changed one, and compares with a validator that never
saw the clean slice.
"""

from __future__ import annotations

from io import BytesIO

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import FileDataset
from pydicom.tag import Tag

from core.validation import Validator
from tests.corruptions import ct, write


def _part10(ds: FileDataset) -> bytes:
    buffer = BytesIO()
    write(ds, buffer)
    return buffer.getvalue()


_SLICES = [_part10(ds) for ds in ct(seed=7, n=2)]
_CHECKED = [
    0x00080016, 0x00080018, 0x00080060, 0x00100020, 0x0020000D, 0x0020000E, 0x00200032, 0x00200037,
    0x00280002, 0x00280004, 0x00280006, 0x00280008, 0x00280010, 0x00280011, 0x00280030, 0x00280100,
    0x00280101, 0x00280102, 0x00280103, 0x00080005, 0x00181164, 0x7FE00010,
]  # fmt: skip
_VALUES = st.sampled_from(
    [b"", b"\x00\x00", b"\x01\x00", b"\x10\x00", b"\x20\x00", b"\x0c\x00", b"\x08\x00", b"0", b"1 ", b"2\x00",
     b"1.2.3", b"1.2.03", b"nan ", b"-1 ", b"1\\0\\0\\0\\1\\0", b"2\\0\\0\\0\\1\\0", b"1\\2\\3 ", b"-0.5\\0.5",
     b"MONOCHROME1 ", b"RGB ", b"CT", b"MR", b"ct", b"1.2.840.10008.5.1.4.1.1.7\x00", b"X" * 70]
)  # fmt: skip


def _read(data: bytes) -> FileDataset:
    return dcmread(BytesIO(data))


def _with(data: bytes, changes: list[tuple[int, str | None, bytes]]) -> FileDataset:
    ds = _read(data)
    for tag, vr, value in changes:
        old = ds.get_item(tag, keep_deferred=True)
        vr = vr or (old.VR if old is not None else None)
        ds[tag] = RawDataElement(Tag(tag), vr, len(value), value, 0, False, True)  # type: ignore[assignment]
    return ds


def _outcome(validator: Validator, ds: FileDataset) -> tuple[list[tuple[str, ...]], str]:
    issues, facts = validator.inspect(ds, str(ds.file_meta.TransferSyntaxUID))
    return [(i.code, i.message, i.sop_instance_uid, i.level) for i in issues], repr(facts)


def test_a_clean_series_is_checked_once_and_answers_alike() -> None:
    validator = Validator()
    first = [_outcome(validator, _read(data)) for data in _SLICES]
    again = [_outcome(validator, _read(data)) for data in _SLICES]
    assert first == again == [_outcome(Validator(), _read(data)) for data in _SLICES]
    assert all(issues == [] for issues, _ in first)
    assert len(validator._verdicts) == 1  # both slices share one verdict


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.sampled_from(_CHECKED), st.sampled_from([None, "US", "DS", "UI", "CS", "OB"]), _VALUES),
        min_size=1,
        max_size=3,
    )
)
def test_a_changed_checked_element_gets_a_fresh_verdict(changes: list[tuple[int, str | None, bytes]]) -> None:
    remembered = Validator()
    _outcome(remembered, _read(_SLICES[0]))  # clean: its shared attributes are remembered
    assert remembered._verdicts
    changed = _with(_SLICES[1], changes)
    assert _outcome(remembered, changed) == _outcome(Validator(), _with(_SLICES[1], changes))


def test_a_wrong_value_in_a_remembered_series_is_still_found() -> None:
    validator = Validator()
    _outcome(validator, _read(_SLICES[0]))
    issues, _ = _outcome(validator, _with(_SLICES[1], [(0x00280010, None, b"\x20\x01")]))  # Rows 288
    assert [code for code, *_ in issues] == ["pixel_length_mismatch"]
    issues, _ = _outcome(validator, _with(_SLICES[1], [(0x00200032, None, b"1\\2")]))  # two coordinates
    assert [code for code, *_ in issues] == ["invalid_value"]
