"""The load generator: synthetic studies of a mix of modalities and sizes, sent over N associations.

A *mix* names study kinds with a size and a weight (``cxr:1=6,headct:24=2,fracture=2``); study
``k`` of a run gets its kind from a seeded draw, so a run is reproducible. Every study is built
(and encoded) before the clock starts. ``N`` worker threads take studies in order; each study
goes over its own association (a modality opens one per study) as pynetdicom C-STOREs, or as one
STOW-RS request (``multipart/related``, PS3.18 10.5) when the transport is ``stowrs``. With a
target ``rate`` (studies/s) study ``k`` starts no earlier than ``k / rate`` seconds after the
first; without one the workers send as fast as the receiver answers.
"""

from __future__ import annotations

import queue
import random
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

from demo.dcmtk import storescu

__all__ = [
    "DEFAULT_MIX",
    "KINDS",
    "LoadGenerator",
    "MixEntry",
    "SendRecord",
    "Study",
    "build_studies",
    "multipart",
    "parse_mix",
    "plan",
    "send_storescu",
    "send_storescu_all",
]

DEFAULT_MIX = "cxr:1=6,headct:24=2,fracture=2"
"""Six one-image chest radiographs to two 24-slice head CTs and two forearm radiographs."""


@dataclass(frozen=True, slots=True)
class Kind:
    """A study kind: the model family its routing rule picks, the default size, the builder."""

    family: str
    default_size: int
    build: Callable[[int, int], list[Any]]
    """``build(seed, size)`` -> the datasets."""


def _cxr(seed: int, size: int) -> list[Any]:
    from synthetic.synthetic_dicom import make_cxr_study

    return make_cxr_study(seed, n_images=size, patient_id=f"BN{seed}", accession=f"BN{seed}")


def _fracture(seed: int, size: int) -> list[Any]:
    from synthetic.synthetic_studies import fracture_study

    return fracture_study(seed, seed % 2 == 0, patient_id=f"BN{seed}", accession=f"BN{seed}").datasets


def _headct(seed: int, size: int) -> list[Any]:
    from synthetic.synthetic_studies import head_ct_study

    return head_ct_study(seed, n_slices=size, patient_id=f"BN{seed}", accession=f"BN{seed}").datasets


def _brainmr(seed: int, size: int) -> list[Any]:
    from synthetic.synthetic_studies import BRAIN_SHAPE, brain_mr_study

    shape = (size, *BRAIN_SHAPE[1:])
    return brain_mr_study(seed, seed % 2 == 0, shape=shape, patient_id=f"BN{seed}", accession=f"BN{seed}").datasets


def _cta(seed: int, size: int) -> list[Any]:
    from synthetic.synthetic_studies import CTA_SHAPE, chest_cta_study

    shape = (size, *CTA_SHAPE[1:])
    return chest_cta_study(seed, seed % 2 == 0, shape=shape, patient_id=f"BN{seed}", accession=f"BN{seed}").datasets


def _ct(seed: int, size: int) -> list[Any]:
    from synthetic.synthetic_dicom import make_ct_series

    return make_ct_series(seed, n_slices=size, rows=128, cols=128, patient_id=f"BN{seed}", accession=f"BN{seed}")


KINDS: dict[str, Kind] = {
    "cxr": Kind("chest_xray", 1, _cxr),
    "fracture": Kind("bone_fracture", 1, _fracture),
    "headct": Kind("head_ct_haemorrhage", 24, _headct),
    "brainmr": Kind("brain_mri_tumour", 32, _brainmr),
    "cta": Kind("chest_cta", 40, _cta),
    "ct": Kind("", 50, _ct),
}
"""Study kinds by mix name. ``ct`` matches no routing rule (ingest, assembly, validation and a
SKIPPED job); ``fracture`` is always one image."""


@dataclass(frozen=True, slots=True)
class MixEntry:
    """One kind of a mix: its size (instances, slices) and relative weight."""

    kind: str
    size: int
    weight: float


def parse_mix(text: str) -> list[MixEntry]:
    """Parse ``kind[:size][=weight],...``.

    Raises:
        ValueError: An unknown kind, or a size or weight that is not a positive number.

    >>> parse_mix("cxr=3,headct:12")
    [MixEntry(kind='cxr', size=1, weight=3.0), MixEntry(kind='headct', size=12, weight=1.0)]
    """
    out = []
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        head, _, weight = item.partition("=")
        kind, _, size = head.partition(":")
        if kind not in KINDS:
            raise ValueError(f"Got study kind {kind!r} in --mix; expected one of {', '.join(KINDS)}")
        try:
            entry = MixEntry(kind, int(size) if size else KINDS[kind].default_size, float(weight) if weight else 1.0)
        except ValueError as exc:
            raise ValueError(f"Got {item!r} in --mix; expected kind[:size][=weight]") from exc
        if entry.size < 1 or entry.weight <= 0:
            raise ValueError(f"Got {item!r} in --mix; expected a size >= 1 and a weight > 0")
        out.append(entry)
    if not out:
        raise ValueError(f"Got an empty --mix {text!r}; expected kind[:size][=weight],...")
    return out


def plan(mix: Sequence[MixEntry], n: int, seed: int = 20_000) -> list[MixEntry]:
    """The kind of each of ``n`` studies: a seeded weighted draw (the same run, the same plan)."""
    rng = random.Random(seed)
    return rng.choices(list(mix), weights=[e.weight for e in mix], k=n)


@dataclass(frozen=True, slots=True)
class Study:
    """One study ready to send: its UID, kind, family, and its instances encoded (Part 10)."""

    index: int
    study_uid: str
    kind: str
    family: str
    datasets: tuple[Dataset, ...] = field(repr=False)
    encoded: tuple[bytes, ...] = field(repr=False)

    @property
    def instances(self) -> int:
        """How many instances it has."""
        return len(self.datasets)


def build_studies(entries: Sequence[MixEntry], first_seed: int = 30_000) -> list[Study]:
    """Build and encode every planned study (before any clock starts)."""
    out = []
    for index, entry in enumerate(entries):
        datasets = KINDS[entry.kind].build(first_seed + index, entry.size)
        encoded = []
        for ds in datasets:
            buffer = BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            encoded.append(buffer.getvalue())
        uid = str(datasets[0].StudyInstanceUID)
        # Read back: a dataset sent as written (its encoding matches its file meta).
        sent = tuple(dcmread(BytesIO(b)) for b in encoded)
        out.append(Study(index, uid, entry.kind, KINDS[entry.kind].family, sent, tuple(encoded)))
    return out


@dataclass(frozen=True, slots=True)
class SendRecord:
    """When one study was sent (wall clock, s) and how it went."""

    index: int
    study_uid: str
    kind: str
    family: str
    instances: int
    start_ts: float
    end_ts: float
    ok: bool
    error: str = ""


def multipart(parts: Sequence[bytes]) -> tuple[bytes, str]:
    """A multipart/related body of DICOM parts and its Content-Type (PS3.18 8.6.1.2)."""
    boundary = uuid.uuid4().hex
    head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    body = b"".join(head + p + b"\r\n" for p in parts) + f"--{boundary}--\r\n".encode()
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


@dataclass
class LoadGenerator:
    """Send studies to one receiver over ``associations`` concurrent workers.

    Attributes:
        port: The receiver's DICOM port (``dimse``).
        called_ae: Its AE title.
        calling_ae: Ours.
        associations: Concurrent workers (associations or HTTP connections).
        rate: Target studies/s; ``None`` sends as fast as possible.
        stow_url: The STOW-RS endpoint (``.../dicomweb/studies``); set it to send by STOW-RS.
        headers: HTTP headers of each STOW-RS request (the bearer token).
        verify: What httpx trusts (a CA file, or ``False`` for plain http).
        on_sent: Called with each record as it completes (a progress bar).
    """

    port: int = 0
    called_ae: str = "PACSAI"
    calling_ae: str = "BENCHMOD"
    associations: int = 4
    rate: float | None = None
    stow_url: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    verify: str | bool = False
    on_sent: Callable[[SendRecord], None] | None = None

    def run(self, studies: Sequence[Study]) -> list[SendRecord]:
        """Send every study; return their records in study order (failures recorded, not raised)."""
        todo: queue.SimpleQueue[Study] = queue.SimpleQueue()
        for study in studies:
            todo.put(study)
        records: list[SendRecord] = []
        lock = threading.Lock()
        started = time.monotonic()

        def worker() -> None:
            client = self._http() if self.stow_url else None
            try:
                while True:
                    try:
                        study = todo.get_nowait()
                    except queue.Empty:
                        return
                    if self.rate:
                        time.sleep(max(0.0, started + study.index / self.rate - time.monotonic()))
                    record = self._send(study, client)
                    with lock:
                        records.append(record)
                    if self.on_sent is not None:
                        self.on_sent(record)
            finally:
                if client is not None:
                    client.close()

        with ThreadPoolExecutor(max_workers=self.associations, thread_name_prefix="bench-load") as pool:
            for future in [pool.submit(worker) for _ in range(self.associations)]:
                future.result()
        return sorted(records, key=lambda r: r.index)

    def _http(self) -> Any:
        import httpx

        return httpx.Client(verify=self.verify, timeout=300, trust_env=False)

    def _send(self, study: Study, client: Any) -> SendRecord:
        start = time.time()
        try:
            error = self._stow(study, client) if client is not None else self._cstore(study)
        except Exception as exc:  # noqa: BLE001  (one study's failure is a record, not the end of the run)
            error = f"{type(exc).__name__}: {exc}"
        return SendRecord(
            study.index,
            study.study_uid,
            study.kind,
            study.family,
            study.instances,
            start,
            time.time(),
            not error,
            error,
        )

    def _cstore(self, study: Study) -> str:
        ae = AE(ae_title=self.calling_ae)
        for sop_class in sorted({str(ds.SOPClassUID) for ds in study.datasets}):
            ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        assoc = ae.associate("127.0.0.1", self.port, ae_title=self.called_ae)
        if not assoc.is_established:
            return "association not established"
        try:
            for ds in study.datasets:
                status = assoc.send_c_store(ds)
                if not status or int(status.Status) != 0:
                    return f"C-STORE status {getattr(status, 'Status', None)}"
            return ""
        finally:
            assoc.release()

    def _stow(self, study: Study, client: Any) -> str:
        body, ctype = multipart(study.encoded)
        response = client.post(self.stow_url, content=body, headers={**self.headers, "Content-Type": ctype})
        return "" if response.status_code == 200 else f"STOW-RS {response.status_code}: {response.text[:200]}"


def send_storescu(files: Sequence[Path], port: int, called_ae: str = "PACSAI", timeout_s: float = 900) -> float:
    """Wall seconds for dcmtk ``storescu`` to send ``files`` over one association.

    Raises:
        RuntimeError: storescu failed (not every instance was acknowledged).
    """
    started = time.perf_counter()
    res = storescu(files, "127.0.0.1", port, called_ae, timeout_s=timeout_s)
    seconds = time.perf_counter() - started
    if res.returncode != 0:
        raise RuntimeError(f"storescu to port {port} failed ({res.returncode}): {res.stderr[-600:]}")
    return seconds


def send_storescu_all(
    jobs: Sequence[tuple[Sequence[Path], int]], senders: int, called_ae: str = "PACSAI"
) -> list[float]:
    """Run ``storescu`` for each ``(files, port)``, ``senders`` at once; each one's wall seconds.

    Raises:
        RuntimeError: A storescu failed.
    """
    with ThreadPoolExecutor(max_workers=senders) as pool:
        return list(pool.map(lambda job: send_storescu(job[0], job[1], called_ae), jobs))
