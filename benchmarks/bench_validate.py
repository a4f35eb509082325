"""Validation cost per instance, next to a plain ``dcmread`` of the same file, in the same run.

The validator actor reads each spooled file with ``dcmread`` and then runs
``Validator.inspect`` on it, so the cost that validation adds is ``inspect / dcmread``. Both are
timed in the same loop iteration (a fresh data set each time, as the actor gets), alternating,
so that machine load hits both alike. Variants: native CT and radiograph sizes (our synthetic
files carry only the IOD's attributes; two pydicom fixtures carry real vendor headers), and compressed
syntaxes with the policy's decode modes (``all_frames`` decodes every frame, ``headers`` only
reads frame headers); for those, ``dcmread + pixel_array`` (the decode the model does anyway)
is timed as well, in a loop of its own. Goal: validation adds less than 20 % to dcmread.

``inspect`` gets the same file again and again, as a validator gets the slices of a series: after
the first, the checks of what a series shares answer from the remembered verdict
(``core._verdicts``). ``full_checks_p50_ms`` is the cost without it (a fresh validator each
time), what the first slice of every series pays.

    .venv/bin/python benchmarks/bench_validate.py [--n 200]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import emit, percentile  # benchmarks/ is on sys.path when run as a script
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from core.pixels import DecodeMode
from core.validation import ValidationPolicy, Validator
from synthetic.synthetic_dicom import make_ct_series, make_cxr_study


def _files(root: Path) -> dict[str, Path]:
    ct = make_ct_series(seed=3, n_slices=1, rows=512, cols=512)[0]
    dx = make_cxr_study(seed=3, size=2048)[0]
    files = {"native_ct_512": ct, "native_dx_2048": dx}
    for name, syntax in (
        ("rle_ct_512", RLELossless),
        ("jpegls_ct_512", JPEGLSLossless),
        ("j2k_ct_512", JPEG2000Lossless),
    ):
        compressed = make_ct_series(seed=3, n_slices=1, rows=512, cols=512)[0]
        compressed.compress(syntax)
        files[name] = compressed
    paths = {}
    for name, ds in files.items():
        paths[name] = root / f"{name}.dcm"
        ds.save_as(paths[name], enforce_file_format=True)
    # Real modality headers are larger than our synthetic ones (private groups, more modules):
    # pydicom's GE CT (258 elements) and a CT of its DICOMDIR set (184 elements).
    paths["native_ct_vendor_header_fixture"] = Path(get_testdata_file("CT_small.dcm"))
    paths["native_ct_dicomdir_fixture"] = Path(get_testdata_file("CT_small.dcm")).parent / (
        "dicomdirtests/77654033/CT2/17106"
    )
    paths["jpeg_extended_12bit_fixture"] = Path(get_testdata_file("JPGExtended.dcm"))
    paths["jpeg_baseline_rgb_fixture"] = Path(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"))
    return paths


def _time(func: Callable[[], Any]) -> float:
    started = time.perf_counter()
    func()
    return time.perf_counter() - started


def _measure(path: Path, validator: Validator, n: int, decode_baseline: bool) -> dict[str, list[float]]:
    """Per iteration: a fresh dcmread, then inspect of that data set (what the actor does)."""
    times: dict[str, list[float]] = {"dcmread": [], "inspect": [], "decode": [], "full": []}
    for _ in range(n):
        started = time.perf_counter()
        ds = dcmread(path)
        read = time.perf_counter()
        issues, _ = validator.inspect(ds, str(ds.file_meta.TransferSyntaxUID))
        done = time.perf_counter()
        if issues:
            raise RuntimeError(f"{path.name}: unexpected issues {issues}")
        times["dcmread"].append(read - started)
        times["inspect"].append(done - read)
        # The first slice of a series gets every check (no remembered verdict): a fresh validator.
        fresh = Validator(validator.policy)
        started = time.perf_counter()
        fresh.inspect(ds, str(ds.file_meta.TransferSyntaxUID))
        times["full"].append(time.perf_counter() - started)
    # The decode baseline has a loop of its own: a 20-30 ms decode between two iterations leaves
    # the caches cold and makes the next dcmread and inspect 2-3x slower than back to back, as
    # the validator actor runs them (its routed instances are decoded by a model replica).
    for _ in range(n if decode_baseline else 0):
        times["decode"].append(_time(lambda: dcmread(path).pixel_array))
    return times


def _ms(values: list[float], q: float) -> float:
    return round(percentile(values, q, "exclusive") * 1000, 4) if len(values) > 1 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-validate-") as tmp:
        paths = _files(Path(tmp))
        for variant, path in paths.items():
            native = variant.startswith("native")
            elements = len(dcmread(path, stop_before_pixels=True))
            modes = [DecodeMode.ALL_FRAMES] if native else [DecodeMode.ALL_FRAMES, DecodeMode.HEADERS]
            for mode in modes:
                validator = Validator(ValidationPolicy(decode=mode))
                times = _measure(path, validator, args.n, decode_baseline=not native)
                read50, check50 = statistics.median(times["dcmread"]), statistics.median(times["inspect"])
                record = {
                    "name": "validate",
                    "variant": variant,
                    "decode": mode.value,
                    "n": args.n,
                    "bytes": path.stat().st_size,
                    "elements": elements,
                    "p50_ms": round(check50 * 1000, 4),
                    "p95_ms": _ms(times["inspect"], 95),
                    "dcmread_p50_ms": round(read50 * 1000, 4),
                    "ratio": round(check50 / read50, 3),
                    "goal": "< 0.2",
                }
                record["full_checks_p50_ms"] = round(statistics.median(times["full"]) * 1000, 4)
                if times["decode"]:
                    record["dcmread_pixel_array_p50_ms"] = round(statistics.median(times["decode"]) * 1000, 4)
                emit(record)


if __name__ == "__main__":
    main()
