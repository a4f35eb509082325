"""DICOM radiograph to network input: decode, Modality LUT, polarity, window, resize.

The steps follow PS3.3 C.11 ("Grayscale transformations") up to the VOI stage:

1. Decode the bytes (every transfer syntax pydicom and its pylibjpeg / pyjpegls plugins decode),
   with :func:`core.pixels.decode_frames`, the validator's plugin order.
2. Only grayscale: Samples per Pixel (0028,0002) must be 1 and Photometric Interpretation
   (0028,0004) MONOCHROME1 or MONOCHROME2. A multi-frame image gives its first frame.
3. Modality LUT (PS3.3 C.11.1): Rescale Slope / Intercept or a Modality LUT Sequence.
4. MONOCHROME1 is negated, so that bright always means dense (as MONOCHROME2).
5. Resize to the network's ``spatial_size`` (area averaging to shrink, bilinear to enlarge). The
   aspect ratio is not kept, as in the public chest X-ray training sets.
6. Instead of the VOI LUT, which differs between vendors, a robust percentile window maps
   ``[p0.5, p99.5]`` to ``[0, 1]``. Any shift or positive scale of the pixel values, and so the
   Modality LUT's arithmetic and MONOCHROME1's inversion, gives the same result.

Training (:mod:`training.training`) sends phantoms through steps 5 and 6 too, so that the network
sees the same distribution at training and at inference time.
"""

from __future__ import annotations

import logging
from io import BytesIO

import numpy as np
import pydicom
import torch
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut

import core.pixels
from core.errors import ModelError, RejectedInput

__all__ = [
    "PERCENTILE_WINDOW",
    "decode",
    "grayscale_pixels",
    "normalise_intensity",
    "prepare_pixels",
    "radiograph_to_array",
    "resize",
]

logger = logging.getLogger(__name__)

PERCENTILE_WINDOW = (0.5, 99.5)
"""Percentiles mapped to 0 and 1 by :func:`normalise_intensity`."""

_MAX_PERCENTILE_PIXELS = 1 << 20
"""Larger images estimate the percentiles on a regular subsample (exact enough, much faster)."""

_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")


def decode(data: bytes) -> Dataset:
    """Parse DICOM file bytes (with or without the File Meta Information).

    Args:
        data: The bytes of a DICOM Part 10 file, as received and spooled.

    Returns:
        The dataset; pixel data is decoded later, on access.

    Raises:
        ModelError: If the bytes are not DICOM.
    """
    try:
        return pydicom.dcmread(BytesIO(data))
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(
            f"Got {len(data)} bytes that pydicom cannot parse ({type(exc).__name__}: {exc}); "
            "expected a DICOM Part 10 file"
        ) from exc


def grayscale_pixels(ds: Dataset) -> np.ndarray:
    """Return the first frame as float64 ``(rows, columns)`` after the Modality LUT, bright = dense.

    Args:
        ds: A dataset with Pixel Data.

    Returns:
        Modality values; MONOCHROME1 comes back negated.

    Raises:
        ModelError: If the image is not single-sample grayscale or cannot be decoded.
    """
    _check_grayscale(ds)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        logger.info("SOP Instance %s has %d frames; using the first", ds.get("SOPInstanceUID"), frames)
    try:
        stored = core.pixels.decode_frames(ds, [0])[0]
    except RejectedInput as exc:
        meta = getattr(ds, "file_meta", None)
        syntax = meta.get("TransferSyntaxUID", "?") if meta is not None else "?"
        raise ModelError(
            f"Cannot decode Pixel Data of SOP Instance {ds.get('SOPInstanceUID', '?')} "
            f"(Transfer Syntax {_syntax_name(syntax)}): {exc.reason}"
        ) from exc
    if stored.ndim != 2:
        raise ModelError(f"Got decoded pixels of shape {stored.shape}; expected one 2D frame (rows, columns)")
    values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    return -values if ds.PhotometricInterpretation == "MONOCHROME1" else values


def _check_grayscale(ds: Dataset) -> None:
    if "PixelData" not in ds:
        raise ModelError(
            f"SOP Instance {ds.get('SOPInstanceUID', '?')} has no Pixel Data (7FE0,0010); expected an image"
        )
    samples = ds.get("SamplesPerPixel", 1)
    if samples != 1:
        raise ModelError(f"Got SamplesPerPixel (0028,0002) = {samples}; expected 1 (grayscale)")
    photometric = ds.get("PhotometricInterpretation", "")
    if photometric not in _MONOCHROME:
        raise ModelError(
            f'Got PhotometricInterpretation (0028,0004) = "{photometric}"; expected MONOCHROME1 or MONOCHROME2'
        )


def _syntax_name(uid: str) -> str:
    name = getattr(pydicom.uid.UID(uid), "name", "")
    return f"{uid} {name}" if name and name != uid else str(uid)


def resize(pixels: np.ndarray, spatial_size: tuple[int, int]) -> np.ndarray:
    """Resize a 2D array: area averaging where it shrinks, bilinear where it grows.

    Args:
        pixels: ``(rows, columns)`` values.
        spatial_size: ``(H, W)`` wanted.

    Returns:
        float32 ``(H, W)``.
    """
    out_h, out_w = spatial_size
    tensor = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))[None, None]
    if tensor.shape[2:] == (out_h, out_w):
        return tensor[0, 0].numpy()
    if out_h <= tensor.shape[2] and out_w <= tensor.shape[3]:
        tensor = torch.nn.functional.interpolate(tensor, size=(out_h, out_w), mode="area")
    else:
        tensor = torch.nn.functional.interpolate(tensor, size=(out_h, out_w), mode="bilinear", align_corners=False)
    return tensor[0, 0].numpy()


def normalise_intensity(pixels: np.ndarray, window: tuple[float, float] = PERCENTILE_WINDOW) -> np.ndarray:
    """Map the ``window`` percentiles of ``pixels`` to 0 and 1, clipping outside.

    Args:
        pixels: 2D values (any offset and positive scale).
        window: Lower and upper percentile.

    Returns:
        float32 values in [0, 1].

    Raises:
        ModelError: If the image has no contrast inside the window (a blank image).
    """
    values = pixels.astype(np.float64, copy=False)
    sample = values
    if values.size > _MAX_PERCENTILE_PIXELS:
        stride = int(np.ceil(np.sqrt(values.size / _MAX_PERCENTILE_PIXELS)))
        sample = values[::stride, ::stride]
    low, high = np.percentile(sample, window)
    if not np.isfinite(low) or not np.isfinite(high) or high - low <= 1e-6 * max(1.0, abs(high)):
        raise ModelError(
            f"Got an image without contrast (percentiles {window} are {low:g} and {high:g}); expected a radiograph"
        )
    return np.clip((values - low) / (high - low), 0.0, 1.0).astype(np.float32)


def prepare_pixels(pixels: np.ndarray, spatial_size: tuple[int, ...]) -> np.ndarray:
    """Resize and window grayscale values into the network's input: float32 ``(1, H, W)``.

    Args:
        pixels: 2D values, bright = dense.
        spatial_size: The model's ``(H, W)``.

    Returns:
        float32 ``(1, H, W)`` in [0, 1].

    Raises:
        ModelError: If ``spatial_size`` is not 2D or the image is blank.
    """
    if len(spatial_size) != 2:
        raise ModelError(f"Got spatial_size {tuple(spatial_size)}; expected (H, W) for 2D images")
    if pixels.ndim != 2:
        raise ModelError(f"Got pixels of shape {pixels.shape}; expected (rows, columns)")
    size = (int(spatial_size[0]), int(spatial_size[1]))
    return normalise_intensity(resize(pixels, size))[None]


def radiograph_to_array(source: bytes | Dataset, spatial_size: tuple[int, ...]) -> np.ndarray:
    """Turn one DICOM radiograph (file bytes or dataset) into network input.

    Args:
        source: DICOM Part 10 bytes, or a dataset already read.
        spatial_size: The model's ``(H, W)``.

    Returns:
        float32 ``(1, H, W)`` in [0, 1].

    Raises:
        ModelError: If the data is not DICOM, not grayscale, cannot be decoded, or is blank.
    """
    ds = source if isinstance(source, Dataset) else decode(source)
    return prepare_pixels(grayscale_pixels(ds), spatial_size)
