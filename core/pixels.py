"""Pixel Data consistent with its description (PS3.3 C.7.6.3, PS3.5 8 and A.4), and decodable.

- The description must be complete and coherent: Rows, Columns, Samples per Pixel, Bits
  Allocated / Stored, High Bit, Pixel Representation, Photometric Interpretation, Planar
  Configuration and Number of Frames.
- Native Pixel Data must be exactly ``Rows x Columns x Samples x Frames x Bits Allocated / 8``
  bytes (padded to even; YBR_FULL_422 holds two samples per pixel, PS3.3 C.7.6.3.1.2).
- Encapsulated Pixel Data must hold one frame per declared frame, each frame's own header must
  agree with the description, and (unless the policy says otherwise) every frame must decode to
  the described shape. Decoding uses pydicom's decoders with the maintained plugins first:
  pylibjpeg (libjpeg, openjpeg, rle), then pyjpegls, pydicom's own, GDCM, and Pillow last (pydicom
  advises against Pillow; it cannot do 12-bit JPEG Extended).

:func:`decode_frames` is the project's one way to decode Pixel Data: the validator's decode
check here, serving (``models.preprocessing``, ``models.volumes``) and so the demo training's
held-out evaluation all call it, so that a frame reaches a model through the plugin that
decoded it when the validator accepted it.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder
from pydicom.uid import UID

from core._elements import Attributes, describe
from core._pixel_frames import header_problems, split_frames
from core.errors import RejectedInput
from core.reasons import Problem, ReasonCode

__all__ = [
    "DecodeMode",
    "NATIVE_SYNTAXES",
    "PREFERRED_PLUGINS",
    "PixelDescription",
    "check_pixel_data",
    "check_pixels",
    "decode_frames",
    "decode_plugins",
    "describe_pixels",
]

NATIVE_SYNTAXES = frozenset(
    {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"}
)
"""Transfer syntaxes whose Pixel Data is native (not encapsulated)."""
PREFERRED_PLUGINS = ("pylibjpeg", "pyjpegls", "pydicom", "gdcm", "pillow")
"""Decoding plugins in the order they are tried (standards.md 5.2)."""

_PHOTOMETRIC_SAMPLES = {
    "MONOCHROME1": 1,
    "MONOCHROME2": 1,
    "PALETTE COLOR": 1,
    "RGB": 3,
    "YBR_FULL": 3,
    "YBR_FULL_422": 3,
    "YBR_PARTIAL_420": 3,
    "YBR_ICT": 3,
    "YBR_RCT": 3,
    "XYB": 3,
}
"""PS3.3 C.7.6.3.1.2 defined terms and the Samples per Pixel each needs."""
_INTEGER_DESCRIPTION = (
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "SamplesPerPixel",
)
_FLOAT_DESCRIPTION = ("Rows", "Columns", "BitsAllocated", "SamplesPerPixel")
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


class DecodeMode(enum.StrEnum):
    """How much of encapsulated Pixel Data the validator decodes."""

    ALL_FRAMES = "all_frames"
    """Decode every frame: finds any corrupt frame (costs a full decode)."""
    FIRST_FRAME = "first_frame"
    """Decode the first frame; the other frames get the header checks only."""
    HEADERS = "headers"
    """Decode nothing: check every frame's header (dimensions, components, end marker) only."""


@dataclass(frozen=True, slots=True)
class PixelDescription:
    """The Image Pixel module's description of the pixels (PS3.3 C.7.6.3)."""

    rows: int
    columns: int
    samples: int
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    photometric: str
    frames: int


@functools.lru_cache(maxsize=64)
def decode_plugins(transfer_syntax_uid: str) -> tuple[str, ...]:
    """Return the installed plugins that decode this syntax, in the order they are tried.

    Remembered per syntax: the installed plugins do not change while the process runs, and
    asking pydicom costs more than a frame-header check.

    Returns:
        Empty when pydicom has no decoder for it or no plugin for it is installed.
    """
    try:
        available = get_decoder(UID(transfer_syntax_uid)).available_plugins
    except NotImplementedError:
        return ()
    return tuple(p for p in PREFERRED_PLUGINS if p in available) + tuple(
        p for p in available if p not in PREFERRED_PLUGINS
    )


def decode_frames(
    ds: Dataset,
    indices: Sequence[int] | None = None,
    *,
    transfer_syntax_uid: str | None = None,
    raw: bool = False,
) -> np.ndarray:
    """Decode frames of the Pixel Data, trying the installed plugins in :data:`PREFERRED_PLUGINS` order.

    Args:
        ds: A data set with Pixel Data.
        indices: 0-based frame indices to decode; ``None`` decodes every frame.
        transfer_syntax_uid: The syntax the Pixel Data is encoded in; ``None`` takes the File
            Meta Information's Transfer Syntax UID (0002,0010).
        raw: Return the samples as stored, without pydicom's colour-space conversion (the
            validator checks them so); grayscale images are the same either way.

    Returns:
        ``(frames, rows, columns)``, or ``(frames, rows, columns, samples)`` for colour.

    Raises:
        RejectedInput: The transfer syntax is missing or has no installed decoder, or no
            plugin decodes the frames (the reason names each plugin's failure).

    >>> from pydicom import dcmread
    >>> from pydicom.data import get_testdata_file
    >>> decode_frames(dcmread(get_testdata_file("MR_small_RLE.dcm"))).shape
    (1, 64, 64)
    """
    subject = str(ds.get("SOPInstanceUID", "") or "")
    if transfer_syntax_uid is None:
        meta = getattr(ds, "file_meta", None)
        transfer_syntax_uid = str(meta.get("TransferSyntaxUID", "") or "") if meta is not None else ""
    if not transfer_syntax_uid:
        raise RejectedInput(
            "TransferSyntaxUID (0002,0010): missing; expected the transfer syntax the Pixel Data is encoded in", subject
        )
    uid = UID(transfer_syntax_uid)
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        decoder = None
    plugins = decode_plugins(uid) if decoder is not None and decoder.is_encapsulated else ("",)
    if decoder is None or not plugins:
        raise RejectedInput(
            f"TransferSyntaxUID (0002,0010): {uid} ({uid.name}) has no installed "
            "decoder; expected a syntax pydicom and its plugins decode",
            subject,
        )
    count = len(indices) if indices is not None else int(ds.get("NumberOfFrames", 1) or 1)
    errors = []
    for plugin in plugins:
        try:
            frames = decoder.iter_array(ds, indices=indices, raw=raw, decoding_plugin=plugin)
            return _stacked(frames, count)
        except BaseException as exc:  # noqa: BLE001 - a plugin failing is a finding; try the next
            if not _plugin_failure(exc):
                raise
            detail = (str(exc).strip().splitlines() or [""])[-1][:160]
            errors.append(f"{plugin or 'native'}: {type(exc).__name__}: {detail}")
    raise RejectedInput(f"{describe('PixelData')}: does not decode as {uid.name} ({'; '.join(errors)})", subject)


def _plugin_failure(exc: BaseException) -> bool:
    """Whether a decoding plugin failed on the data: any Exception, and a panic of a Rust plugin
    (pyo3's ``PanicException`` derives from BaseException: pylibjpeg-rle panics on an RLE frame
    with fewer Columns than its segments hold). Interrupts and exits are not failures."""
    return isinstance(exc, Exception) or type(exc).__name__ == "PanicException"


def _stacked(frames: Iterator[tuple[np.ndarray, Any]], count: int) -> np.ndarray:
    """Copy ``count`` decoded frames into one array as they come (no second copy of them all)."""
    out: np.ndarray | None = None
    n = 0
    for n, (frame, _) in enumerate(frames, start=1):
        if out is None:
            out = np.empty((count, *frame.shape), dtype=frame.dtype)
        if n > count or frame.shape != out.shape[1:]:
            raise ValueError(
                f"frame {n} decodes to shape {frame.shape}; expected {count} frames of shape {out.shape[1:]}"
            )
        out[n - 1] = frame
    if out is None or n != count:
        raise ValueError(f"decoded {n} frame(s); expected {count}")
    return out


def check_pixels(attrs: Attributes, transfer_syntax_uid: str, mode: DecodeMode) -> list[Problem]:
    """Return the problems of an image's pixel description and Pixel Data (none for non-images).

    Args:
        attrs: The dataset's attributes.
        transfer_syntax_uid: The transfer syntax the data set is encoded in.
        mode: How much encapsulated Pixel Data to decode.
    """
    keyword, desc, problems = describe_pixels(attrs)
    if keyword is None or desc is None:
        return problems
    return check_pixel_data(attrs, keyword, desc, transfer_syntax_uid, mode)


def describe_pixels(attrs: Attributes) -> tuple[str | None, PixelDescription | None, list[Problem]]:
    """Return ``(pixel keyword, description, problems)``: the part of :func:`check_pixels` that
    reads only the Image Pixel description (the same for every slice of a series, so the
    validator may remember it). Keyword and description are ``None`` for a non-image or when
    there are problems."""
    keyword = next((k for k in _PIXEL_KEYWORDS if attrs.present(k)), None)
    described = any(attrs.present(k) for k in (*_INTEGER_DESCRIPTION, "PhotometricInterpretation"))
    if keyword is None and not described:
        return None, None, []  # not an image (SR, KOS, waveform...): nothing to check here
    desc, problems = _description(attrs, float_pixels=keyword not in (None, "PixelData"))
    if problems or desc is None:
        return None, None, problems
    if keyword is None:
        return (
            None,
            None,
            [
                Problem(
                    ReasonCode.PIXEL_DATA_MISSING,
                    f"{describe('PixelData')}: missing; expected the image data that Rows, "
                    "Columns and the other Image Pixel attributes describe",
                )
            ],
        )
    return keyword, desc, []


def check_pixel_data(
    attrs: Attributes, keyword: str, desc: PixelDescription, transfer_syntax_uid: str, mode: DecodeMode
) -> list[Problem]:
    """Return the problems of the Pixel Data itself (length, frames, frame headers, decoding)
    against a coherent description: the part of :func:`check_pixels` that differs per instance."""
    ts = str(transfer_syntax_uid)
    if keyword != "PixelData" or not ts or ts in NATIVE_SYNTAXES:  # no syntax known: as native
        return _native_length(attrs, keyword, desc)
    if not _is_encapsulated_syntax(ts):
        return []  # unknown syntax: the transfer syntax check reports it
    return _encapsulated(attrs.ds, ts, desc, mode)


@functools.lru_cache(maxsize=64)
def _is_encapsulated_syntax(ts: str) -> bool:
    return bool(UID(ts).is_transfer_syntax and UID(ts).is_encapsulated)


def _description(attrs: Attributes, *, float_pixels: bool) -> tuple[PixelDescription | None, list[Problem]]:
    required = _FLOAT_DESCRIPTION if float_pixels else _INTEGER_DESCRIPTION
    missing = [
        Problem(ReasonCode.MISSING_ATTRIBUTE, f"{describe(k)}: missing; expected a value")
        for k in (*required, "PhotometricInterpretation")
        if not attrs.present(k)
    ]
    values = {k: attrs.integer(k) for k in required}
    if missing or None in values.values():
        return None, missing + [p for p in attrs.problems if p not in missing]
    allocated = int(values["BitsAllocated"] or 0)
    frames = attrs.integer("NumberOfFrames") if attrs.present("NumberOfFrames") else 1
    if frames is None:
        return None, []  # Number of Frames unreadable as IS: already flagged as invalid_vr
    desc = PixelDescription(
        rows=int(values["Rows"] or 0),
        columns=int(values["Columns"] or 0),
        samples=int(values["SamplesPerPixel"] or 0),
        bits_allocated=allocated,
        bits_stored=int(values.get("BitsStored", allocated) or 0),
        pixel_representation=int(values.get("PixelRepresentation", 0) or 0),
        photometric=attrs.text("PhotometricInterpretation"),
        frames=frames,
    )
    high_bit = values.get("HighBit", desc.bits_stored - 1)
    return desc, _coherence(desc, high_bit, attrs)


def _coherence(desc: PixelDescription, high_bit: int | None, attrs: Attributes) -> list[Problem]:
    problems = []
    bad, odd = ReasonCode.INVALID_VALUE, ReasonCode.PIXEL_ATTRIBUTES_INCONSISTENT
    if desc.rows < 1 or desc.columns < 1:
        problems.append(
            Problem(bad, f"Rows/Columns (0028,0010/0011): got {desc.rows} x {desc.columns}; expected both >= 1")
        )
    if not (desc.bits_allocated == 1 or (desc.bits_allocated % 8 == 0 and 8 <= desc.bits_allocated <= 64)):
        problems.append(
            Problem(bad, f"{describe('BitsAllocated')}: got {desc.bits_allocated}; expected 1 or 8/16/32/64")
        )
    if not 1 <= desc.bits_stored <= desc.bits_allocated:
        problems.append(
            Problem(
                odd,
                f"{describe('BitsStored')}: got {desc.bits_stored}; expected 1..BitsAllocated ({desc.bits_allocated})",
            )
        )
    if high_bit != desc.bits_stored - 1:
        problems.append(
            Problem(
                odd,
                f"{describe('HighBit')}: got {high_bit}; expected BitsStored - 1 ({desc.bits_stored - 1}, PS3.5 8.1.1)",
            )
        )
    if desc.pixel_representation not in (0, 1):
        problems.append(
            Problem(bad, f"{describe('PixelRepresentation')}: got {desc.pixel_representation}; expected 0 or 1")
        )
    if desc.photometric not in _PHOTOMETRIC_SAMPLES:
        problems.append(
            Problem(
                bad,
                f"{describe('PhotometricInterpretation')}: got "
                f"{desc.photometric[:40]!r}; expected a PS3.3 C.7.6.3.1.2 defined term",
            )
        )
    if desc.frames < 1:
        problems.append(Problem(bad, f"{describe('NumberOfFrames')}: got {desc.frames}; expected an integer >= 1"))
    return problems + _samples(desc, attrs)


def _samples(desc: PixelDescription, attrs: Attributes) -> list[Problem]:
    needed = _PHOTOMETRIC_SAMPLES.get(desc.photometric)
    if needed is not None and desc.samples != needed:
        return [
            Problem(
                ReasonCode.PIXEL_ATTRIBUTES_INCONSISTENT,
                f"{describe('SamplesPerPixel')}: got {desc.samples}; expected {needed} "
                f"for PhotometricInterpretation {desc.photometric}",
            )
        ]
    if desc.samples > 1:
        planar = attrs.integer("PlanarConfiguration")
        if planar is None:
            return [
                Problem(
                    ReasonCode.MISSING_ATTRIBUTE,
                    f"{describe('PlanarConfiguration')}: missing; expected 0 or 1 when "
                    f"SamplesPerPixel is {desc.samples} (Type 1C)",
                )
            ]
        if planar not in (0, 1):
            return [
                Problem(ReasonCode.INVALID_VALUE, f"{describe('PlanarConfiguration')}: got {planar}; expected 0 or 1")
            ]
    return []


def _native_length(attrs: Attributes, keyword: str, desc: PixelDescription) -> list[Problem]:
    elem = attrs.get(keyword)
    got = 0 if elem is None else elem.length
    if got == 0:
        return [Problem(ReasonCode.PIXEL_DATA_MISSING, f"{describe(keyword)}: empty; expected image data")]
    samples = 2 if desc.photometric == "YBR_FULL_422" else desc.samples
    bits = desc.rows * desc.columns * samples * desc.frames * desc.bits_allocated
    expected = (bits + 7) // 8
    if got not in (expected, expected + expected % 2):  # PS3.5 8.1.1: padded to even
        return [
            Problem(
                ReasonCode.PIXEL_LENGTH_MISMATCH,
                f"{describe(keyword)}: got {got} bytes; expected {expected} (Rows "
                f"{desc.rows} x Columns {desc.columns} x Samples {samples} x Frames "
                f"{desc.frames} x BitsAllocated {desc.bits_allocated} / 8)",
            )
        ]
    return []


def _encapsulated(ds: Dataset, ts: str, desc: PixelDescription, mode: DecodeMode) -> list[Problem]:
    if not decode_plugins(ts):
        return [
            Problem(
                ReasonCode.UNSUPPORTED_TRANSFER_SYNTAX,
                f"TransferSyntaxUID (0002,0010): {ts} ({UID(ts).name}) has no installed "
                "decoder; the pixels cannot reach a model",
            )
        ]
    frames, problems = split_frames(ds, ts, desc)
    if problems:
        return problems
    problems = header_problems(ts, frames, desc)
    if problems or mode is DecodeMode.HEADERS:
        return problems
    return _decode(ds, ts, desc, None if mode is DecodeMode.ALL_FRAMES else [0])


def _decode(ds: Dataset, ts: str, desc: PixelDescription, indices: Sequence[int] | None) -> list[Problem]:
    shape = (desc.rows, desc.columns) if desc.samples == 1 else (desc.rows, desc.columns, desc.samples)
    try:
        frames = decode_frames(ds, indices, transfer_syntax_uid=ts, raw=True)
    except RejectedInput as exc:
        return [Problem(ReasonCode.PIXEL_DATA_UNDECODABLE, exc.reason)]
    if tuple(frames.shape[1:]) != shape:
        return [
            Problem(
                ReasonCode.PIXEL_DATA_UNDECODABLE,
                f"{describe('PixelData')}: decodes to shape {tuple(frames.shape[1:])}; "
                f"expected {shape} from Rows, Columns, SamplesPerPixel",
            )
        ]
    return []
