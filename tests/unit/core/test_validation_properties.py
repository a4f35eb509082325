"""Property-based tests: the validator never raises, whatever the data set holds.

Data sets are built from raw elements (as dcmread leaves them until accessed) with arbitrary
VRs and bytes for the attributes the validator reads, and from valid files with bytes flipped or
cut off. The strict pydicom settings of the test suite (values validated on reading, errors
raised) stay on, the harshest case for code that must not raise.
"""

from __future__ import annotations

from io import BytesIO

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset

from core.reasons import ReasonCode
from core.validation import InstanceFacts, Validator
from tests.corruptions import ct, write

KEYWORDS = [
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "SOPClassUID",
    "Modality",
    "AccessionNumber",
    "StudyDate",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "PlanarConfiguration",
    "NumberOfFrames",
    "PixelSpacing",
    "ImagerPixelSpacing",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "FrameOfReferenceUID",
    "EchoNumbers",
    "AcquisitionNumber",
    "PixelData",
    "FloatPixelData",
    "SpecificCharacterSet",
]
VRS = ["US", "UL", "SS", "FL", "FD", "IS", "DS", "CS", "UI", "LO", "SH", "PN", "OB", "OW", "UN", "DA", "AT"]
SYNTAXES = [
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.5",
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.201",
    "1.2.840.10008.1.2.4.100",
    "1.2.3.4.5",
    "not a uid",
    "",
]
CODES = {c.value for c in ReasonCode}

text_like = st.one_of(
    st.binary(max_size=70),
    st.sampled_from(
        [
            b"1",
            b"0",
            b"16",
            b"12",
            b"MONOCHROME2",
            b"RGB",
            b"CT",
            b"1.2.3",
            b"1\\0\\0\\0\\1\\0",
            b"0.5\\0.5",
            b"-1",
            b"65536",
            b"nan",
            b"1e999",
        ]
    ),
)
pixels_like = st.one_of(
    st.binary(max_size=300),
    st.builds(
        lambda n, body: b"\xfe\xff\x00\xe0" + n.to_bytes(4, "little") + body,
        st.integers(0, 2**32 - 1),
        st.binary(max_size=200),
    ),
)


@st.composite
def raw_datasets(draw):
    ds = Dataset()
    for keyword in draw(st.lists(st.sampled_from(KEYWORDS), unique=True, max_size=len(KEYWORDS))):
        tag = tag_for_keyword(keyword)
        vr = draw(st.sampled_from(VRS))
        value = draw(pixels_like if keyword.endswith("PixelData") else text_like)
        ds[tag] = RawDataElement(tag, vr, len(value), value, 0, False, draw(st.booleans()))
    if draw(st.booleans()):
        ds.file_meta = FileMetaDataset()
        ds.file_meta._dict[0x00020010] = RawDataElement(
            0x00020010, "UI", 0, draw(st.sampled_from(SYNTAXES)).encode(), 0, False, True
        )
    return ds


def _assert_well_formed(issues):
    for issue in issues:
        assert issue.code in CODES
        assert issue.message.strip()
        assert issue.level in ("instance", "series", "study")
        # No check crashed into the validator's last-resort catch: every finding is specific.
        assert not issue.message.startswith(("_check", "check_pixels")), issue.message


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw_datasets(), st.sampled_from(SYNTAXES), st.sampled_from(["", "1.2.3", "1.2.840.1"]))
def test_inspect_never_raises_on_arbitrary_raw_elements(ds, syntax, expected_uid):
    issues, facts = Validator().inspect(ds, syntax, expected_uid)
    _assert_well_formed(issues)
    assert isinstance(facts, InstanceFacts)
    _assert_well_formed(Validator().check_collection([facts, facts]))


VALID = BytesIO()
write(ct(5, n=1)[0], VALID)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, len(VALID.getvalue()) - 1), st.integers(0, 255)), max_size=8),
    st.integers(200, len(VALID.getvalue())),
)
def test_inspect_never_raises_on_damaged_files(flips, cut):
    data = bytearray(VALID.getvalue())
    for position, byte in flips:
        data[position] = byte
    try:
        ds = dcmread(BytesIO(bytes(data[:cut])), force=True)
    except Exception:  # noqa: BLE001 - unparseable bytes never reach the validator (UNREADABLE)
        return
    _assert_well_formed(Validator().inspect(ds)[0])


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.builds(
            InstanceFacts,
            st.sampled_from(["1.1", "1.2", "1.3"]),
            st.sampled_from(["2.1", "2.2"]),
            st.sampled_from(["3.1", ""]),
            st.sampled_from(["CT", "MR", ""]),
            st.sampled_from(["4.1", "4.2", ""]),
            st.none(),
            st.lists(st.sampled_from(["a", "b", ""]), max_size=5).map(tuple),
            st.lists(st.sampled_from(["a", "b", ""]), max_size=3).map(tuple),
        ),
        max_size=12,
    )
)
def test_collection_checks_never_raise(facts):
    _assert_well_formed(Validator().check_collection(facts))
