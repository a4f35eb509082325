"""The durable intake: one received instance made durable in the spool and recorded in the ledger.

Both doors use it: the C-STORE SCP (``actors.adapters.dimse.Listener``) and STOW-RS
(``api.dicomweb``). The contract is the same for both (DESIGN.md, "Durability"): success only
after the bytes are written, fsynced, renamed into place, the directory fsynced and the ledger
row committed; a SOP Instance UID already held is acknowledged and not processed again.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian

from core.audit import AuditEvent
from core.completeness import CompletenessPolicy
from core.config import AssemblyConfig
from core.errors import OutOfResources, RejectedInput
from core.identifiers import hash_identifier
from core.ledger import RecordResult
from core.limits import InflateCapExceeded, Quota, inflate_capped
from core.part10 import part10_header
from core.ports import Clock
from core.types import AuditEventType, InstanceMeta
from core.validation import attribute_text
from state.files import check_free_space, fsync_dirs, publish, rename_many
from state.group_commit import GroupCommit
from state.ledger import Ledger
from state.ledger.intake import Arrival
from state.sealed_files import copy_sealed, write_sealed
from state.spill import directory_usage, read_blocks, read_head

__all__ = ["Ingested", "SpoolIntake", "StudyMismatch", "read_preamble_and_meta", "safe_name"]

logger = logging.getLogger(__name__)

_UID = re.compile(r"^[0-9.]{1,64}$")
_LAST_RECORDED_TAG = 0x0020000E
"""Series Instance UID: every attribute the ledger records comes before it."""
_PARSE_HEAD = 16 << 20
"""Most bytes of a data set (inflated, if deflated) read to parse what the ledger records."""


def safe_name(uid: str) -> str:
    """A file-system-safe name for a UID (hash anything that is not a plain UID).

    >>> safe_name("1.2.3"), safe_name("../etc")[:2]
    ('1.2.3', 'x-')
    """
    return uid if _UID.match(uid) and ".." not in uid else "x-" + hashlib.sha1(uid.encode()).hexdigest()


class StudyMismatch(RejectedInput):
    """A STOW-RS instance posted to ``/studies/{study}`` belongs to another study (PS3.18
    10.5.3: Failure Reason 0xA900); nothing was stored."""


@dataclass(frozen=True, slots=True)
class Ingested:
    """What the intake did with one instance."""

    meta: InstanceMeta
    duplicate: bool
    """The SOP Instance UID was already held: acknowledged, not processed again."""


@dataclass(frozen=True, slots=True)
class _Staged:
    """An instance written and fsynced under a temporary name, waiting for its group."""

    arrival: Arrival
    temp: Path


def read_preamble_and_meta(fp: BytesIO) -> FileMetaDataset:
    """Read the preamble and File Meta Information; leave ``fp`` at the data set.

    The group is read element by element (pydicom's own File Meta reader), so a file whose
    sender left out the group length (0002,0000) reads as it does in every viewer.

    Raises:
        ValueError: The file has no Part 10 preamble and ``DICM`` prefix (PS3.10 7.1), or no
            Transfer Syntax UID.
    """
    if read_preamble(fp, False) is None:
        raise ValueError("no DICM prefix")
    meta = _read_file_meta_info(fp)
    if not meta.get("TransferSyntaxUID"):
        raise ValueError("no Transfer Syntax UID (0002,0010) in the File Meta Information")
    return meta


class SpoolIntake:
    """Writes received instances into one cell's spool and records them in its ledger."""

    def __init__(
        self,
        spool_dir: Path,
        rejected_dir: Path,
        ledger: Ledger,
        quiet_period_s: float,
        clock: Clock,
        hash_key: bytes,
        *,
        actor: str,
        min_free_bytes: int,
        workers: int = 4,
        assembly: AssemblyConfig | None = None,
        group_max: int = 32,
        max_inflated_bytes: int = 1 << 30,
        rejected_quota: tuple[int, int] = (8 << 30, 10_000),
    ) -> None:
        """Prepare the intake.

        Args:
            spool_dir: Where received instances are kept.
            rejected_dir: Where unparseable data is kept for inspection.
            ledger: The ledger of this process.
            quiet_period_s: Study quiet period, to schedule the assembler.
            clock: Wall clock.
            hash_key: Key for hashed patient identifiers.
            actor: Who records (audit): ``listener:<AE>`` or ``stow-rs``.
            min_free_bytes: Below this much free space on the spool disk, refuse (0xA700).
            workers: Threads writing files while the caller parses.
            assembly: Per-sender completion rules; when given, a sender's own quiet period
                schedules the assembler instead of ``quiet_period_s``.
            group_max: Most instances made durable by one group commit (1: each alone).
            max_inflated_bytes: Most bytes a deflated data set may inflate to (0xA700 beyond).
            rejected_quota: ``(bytes, files)`` that ``rejected_dir`` may hold; over it,
                unparseable data is answered 0xA700 and not kept.
        """
        self._spool = spool_dir
        self._rejected = rejected_dir
        self._ledger = ledger
        self._ring = getattr(ledger, "keyring", None)  # seals the files at rest (state.sealed_files)
        self._quiet = quiet_period_s
        self._clock = clock
        self._hash_key = hash_key
        self._actor = actor
        self._min_free = min_free_bytes
        self._policy = CompletenessPolicy(assembly) if assembly is not None else None
        self._writer = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="spool")
        self._syncer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spool-sync")  # one group at a time
        self._incoming = spool_dir / ".incoming"
        self._inflate_cap = max_inflated_bytes
        used_bytes, used_files = directory_usage(rejected_dir)
        self._rejected_quota = Quota(rejected_quota[0], rejected_quota[1], used_bytes, used_files)
        self._quota_lock = threading.Lock()
        self.groups: GroupCommit[_Staged, RecordResult] = GroupCommit(self._commit, group_max)
        """The group commit of this process's intake (``commits``, ``items``: group sizes)."""

    @property
    def spool_dir(self) -> Path:
        """Where received instances are kept."""
        return self._spool

    def close(self) -> None:
        """Wait for the file writes in progress."""
        self._writer.shutdown(wait=True)
        self._syncer.shutdown(wait=True)

    def ingest(
        self,
        sop_uid: str,
        sop_class: str,
        dataset: bytes | Path,
        transfer_syntax: str,
        calling_ae: str,
        expected_study: str | None = None,
        actor: str | None = None,
    ) -> Ingested:
        """Make one received instance durable and record it.

        The file (Part 10 header + the data set exactly as received) is written and fsynced
        in a worker thread while this thread hashes and parses it; the OS calls and hashlib
        release the GIL, so the work overlaps. Then the instance joins a group commit
        (``state.group_commit``) with whatever else this process received meanwhile: one
        duplicate check, the renames, one fsync per spool directory and one ledger transaction
        for all of them. It returns only after the rename, the directory fsync and the ledger
        commit of its own instance.

        Args:
            sop_uid: Affected SOP Instance UID (C-STORE request, or the file meta).
            sop_class: Affected SOP Class UID.
            dataset: The data set as received (no file meta), or the file it was received
                to (a large one: it is copied and read in blocks, never held in memory).
            transfer_syntax: Its transfer syntax.
            calling_ae: The sender (AE title, or ``stow:<subject>``).
            expected_study: STOW-RS to ``/studies/{study}``: the study it must belong to.
            actor: Who sent it, for the audit (default: this intake's actor).

        Raises:
            OutOfResources: The spool disk is below its floor or full, a deflated data set
                inflates past ``max_inflated_bytes``, or ``rejected/`` is over its quota.
            RejectedInput: The data set cannot be parsed (audited, bytes kept aside).
            StudyMismatch: ``expected_study`` is given and differs (nothing stored).
            DependencyUnavailable: The ledger cannot be read or cannot commit the record.
        """
        staged = self._stage(sop_uid, sop_class, dataset, transfer_syntax, calling_ae, expected_study, actor)
        result = self.groups.submit(staged)
        if result is RecordResult.DUPLICATE:
            logger.info("duplicate SOP Instance UID %s acknowledged, not reprocessed", sop_uid)
        return Ingested(staged.arrival.meta, result is RecordResult.DUPLICATE)

    def _stage(
        self,
        sop_uid: str,
        sop_class: str,
        dataset: bytes | Path,
        transfer_syntax: str,
        calling_ae: str,
        expected_study: str | None,
        actor: str | None,
    ) -> _Staged:
        """Write and fsync the instance under a temporary name; parse what the ledger records."""
        now = self._clock.now()
        check_free_space(self._spool, self._min_free)
        header = part10_header(sop_class, sop_uid, transfer_syntax, calling_ae)
        writing = self._start_write(safe_name(sop_uid), header, dataset)
        digest = hashlib.sha256(header)
        for block in read_blocks(dataset) if isinstance(dataset, Path) else (dataset,):
            digest.update(block)
        try:
            ds = self._parse_header(dataset, transfer_syntax, sop_uid, self._inflate_cap)
        except InflateCapExceeded:
            writing.result().unlink(missing_ok=True)
            raise
        except RejectedInput as exc:
            self._reject(writing, header, _size(dataset), digest.hexdigest(), sop_uid, calling_ae, now, exc.reason)
            raise
        size = len(header) + _size(dataset)
        meta = self._meta(ds, sop_uid, sop_class, transfer_syntax, digest.hexdigest(), size, calling_ae, now)
        if expected_study is not None and meta.study_instance_uid != expected_study:
            writing.result().unlink(missing_ok=True)
            raise StudyMismatch(f"instance belongs to study {meta.study_instance_uid}, not {expected_study}", sop_uid)
        quiet = self._policy.quiet_period_for(calling_ae, [meta.modality]) if self._policy else self._quiet
        return _Staged(Arrival(meta, now, now + quiet, actor or self._actor), writing.result())

    def _start_write(self, name: str, header: bytes, dataset: bytes | Path) -> Future[Path]:
        """Write the Part 10 file under a temporary name in a worker thread."""
        if isinstance(dataset, Path):
            return self._writer.submit(copy_sealed, self._incoming, name, header, dataset, self._ring)
        return self._writer.submit(write_sealed, self._incoming, name, [header, dataset], self._ring)

    def _commit(self, group: list[_Staged]) -> list[RecordResult | BaseException]:
        """Make a group durable in one ledger transaction: learn what is held, rename the rest
        into the spool, fsync each directory once, record every instance (committed after the
        fsyncs).

        An instance already held (or a second copy in the group) keeps the file it has: its
        temporary file is removed and the ledger audits the duplicate. While the ledger cannot
        be read nothing is moved into the spool; if the commit fails, the files moved stay (a
        lost connection may hide a commit that happened; a re-send writes the same path).

        The held check is the transaction's own first read (``record_many(place=...)``), not a
        read of its own before it: one query less per group, on the path every association of
        a busy listener waits behind (it took 0.6-0.9 ms a group of the ~4.8 under load).
        """
        placed: list[dict[str, BaseException]] = []  # once placed, the same answer (a retried transaction)
        syncing: list[Future[None]] = []

        def place(held: set[str]) -> set[str]:
            if placed:
                return set(placed[0])
            moving: dict[str, int] = {}  # SOP Instance UID -> the group's item that brings its file
            for k, staged in enumerate(group):
                uid = staged.arrival.meta.sop_instance_uid
                if uid in held or uid in moving:
                    staged.temp.unlink(missing_ok=True)
                else:
                    moving[uid] = k
            moves = [(group[k].temp, Path(group[k].arrival.meta.path)) for k in moving.values()]
            errors = rename_many(moves)
            placed.append({uid: e for uid, e in zip(moving, errors, strict=True) if e is not None})
            # The directories are fsynced while the ledger runs the group's statements; the
            # commit waits for them (before_commit), so no row is durable before its file's entry.
            dirs = [f.parent for (_, f), e in zip(moves, errors, strict=True) if not e]
            syncing.append(self._syncer.submit(fsync_dirs, dirs))
            return set(placed[0])

        arrivals = [s.arrival for s in group]
        try:
            results = iter(self._ledger.intake.record_many(arrivals, lambda: syncing[0].result(), place))
        except BaseException:
            if not placed:  # the ledger could not be read: nothing was moved into the spool
                for staged in group:
                    staged.temp.unlink(missing_ok=True)
            raise
        failed = placed[0]
        return [failed.get(s.arrival.meta.sop_instance_uid) or next(results) for s in group]

    def ingest_file(
        self, raw: bytes, calling_ae: str, expected_study: str | None = None, actor: str | None = None
    ) -> Ingested:
        """Ingest a whole DICOM Part 10 file (STOW-RS, or a test) as if C-STOREd.

        Raises:
            OutOfResources: The spool disk is below its floor or full.
            RejectedInput: The file meta or the data set cannot be parsed.
            StudyMismatch: ``expected_study`` is given and differs.
            DependencyUnavailable: The ledger cannot commit.
        """
        try:
            fp = BytesIO(raw)
            meta = read_preamble_and_meta(fp)
        except Exception as exc:  # an unreadable header is "cannot understand"
            raise RejectedInput(f"file meta cannot be parsed: {type(exc).__name__}: {str(exc)[:200]}") from exc
        missing = [k for k in ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID") if not meta.get(k)]
        if missing:  # what a C-STORE request always names; a sender cannot leave it out
            raise RejectedInput(f"file meta has no {' and no '.join(missing)}")
        return self.ingest(
            str(meta.get("MediaStorageSOPInstanceUID", "")),
            str(meta.get("MediaStorageSOPClassUID", "")),
            raw[fp.tell() :],
            str(meta.get("TransferSyntaxUID", "")),
            calling_ae,
            expected_study,
            actor,
        )

    @staticmethod
    def _parse_header(dataset: bytes | Path, transfer_syntax: str, sop_uid: str, inflate_cap: int) -> Dataset:
        """Parse the data set up to the attributes the ledger records (Series Instance UID).

        Only its head is read (``_PARSE_HEAD``); a deflated one is inflated in bounded steps,
        all of it (to know it stays under ``inflate_cap``: every later reader inflates it
        whole), keeping only the head.

        Raises:
            InflateCapExceeded: A deflated data set inflates past ``inflate_cap``.
            RejectedInput: The data set cannot be parsed.
        """
        try:
            if transfer_syntax == DeflatedExplicitVRLittleEndian:
                chunks: Iterable[bytes] = read_blocks(dataset) if isinstance(dataset, Path) else (dataset,)
                head, _ = inflate_capped(chunks, inflate_cap, _PARSE_HEAD)
            else:
                head = read_head(dataset, _PARSE_HEAD) if isinstance(dataset, Path) else dataset
            return read_dataset(
                BytesIO(head),
                is_implicit_VR=transfer_syntax == ImplicitVRLittleEndian,
                is_little_endian=transfer_syntax != ExplicitVRBigEndian,
                stop_when=lambda tag, _vr, _length: tag > _LAST_RECORDED_TAG,
            )
        except InflateCapExceeded:
            raise
        except Exception as exc:  # any parser failure means "cannot understand"
            reason = f"data set cannot be parsed: {type(exc).__name__}: {str(exc)[:200]}"
            raise RejectedInput(reason, sop_uid) from exc

    def _reject(
        self,
        writing: Future[Path],
        header: bytes,
        size: int,
        digest: str,
        sop_uid: str,
        calling_ae: str,
        now: float,
        reason: str,
    ) -> None:
        """Keep unparseable data aside for inspection and audit the rejection.

        Raises:
            OutOfResources: ``rejected/`` is over its quota: nothing is kept (logged, audited).
        """
        kept = self._rejected / f"{digest}.dcm"
        with self._quota_lock:
            fits = self._rejected_quota.take(len(header) + size)
            usage = self._rejected_quota.describe()
        if not fits:
            writing.result().unlink(missing_ok=True)
            logger.warning("rejected/ over quota (%s): data set sha256 %s not kept", usage, digest)
            reason = f"{reason}; not kept: rejected/ over quota"
        else:
            publish(writing.result(), kept)
        event = AuditEvent(
            AuditEventType.INSTANCE_REJECTED,
            self._actor,
            sop_instance_uid=sop_uid,
            detail={"reason": reason, "calling_ae": calling_ae, "sha256": digest},
        )
        self._ledger.audit.append([event], now)
        if not fits:
            raise OutOfResources(f"unparseable data set not kept: rejected/ over quota ({usage})")

    def _meta(
        self,
        ds: Dataset,
        sop_uid: str,
        sop_class: str,
        transfer_syntax: str,
        digest: str,
        size: int,
        calling_ae: str,
        now: float,
    ) -> InstanceMeta:
        # attribute_text never raises: invalid values are filed here and flagged by the validator.
        study = attribute_text(ds, "StudyInstanceUID") or f"unknown-study:{sop_uid}"
        series = attribute_text(ds, "SeriesInstanceUID") or f"unknown-series:{sop_uid}"
        path = self._spool / safe_name(study) / f"{safe_name(sop_uid)}.dcm"
        return InstanceMeta(
            sop_instance_uid=sop_uid,
            sop_class_uid=sop_class,
            study_instance_uid=study,
            series_instance_uid=series,
            modality=attribute_text(ds, "Modality"),
            transfer_syntax_uid=transfer_syntax,
            path=str(path),
            sha256=digest,
            size=size,
            received_at=now,
            calling_ae=calling_ae,
            body_part=attribute_text(ds, "BodyPartExamined"),
            series_description=attribute_text(ds, "SeriesDescription"),
            patient_key=hash_identifier(attribute_text(ds, "PatientID"), self._hash_key),
            accession_key=hash_identifier(attribute_text(ds, "AccessionNumber"), self._hash_key),
        )


def _size(dataset: bytes | Path) -> int:
    return dataset.stat().st_size if isinstance(dataset, Path) else len(dataset)
