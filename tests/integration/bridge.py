"""The listener and the stages up to routing, in this process and without Ray.

The Ray actors are thin shells around the same work objects (``AssemblyWork``,
``ValidationWork``, ``RoutingWork``); driving those directly proves the entry point's behaviour
in seconds. One end-to-end test per concern still goes through the Ray pipeline.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from io import BytesIO
from pathlib import Path

from pydicom.filereader import read_file_meta_info
from pynetdicom import AE, _config
from pynetdicom.dsutils import split_dataset

from actors.adapters.dimse import Listener
from actors.assembler import Assembly, AssemblyWork, Evidence
from actors.polling import SystemClock
from actors.router import RoutingWork
from actors.validator import ValidationWork
from core.completeness import CompletenessPolicy
from core.config import AssemblyConfig, ListenerConfig, RoutingConfig, StorageConfig, parse_config
from core.envelope import Keyring, is_sealed
from core.job import Job
from core.routing import Router
from core.types import JobState
from core.validation import Validator
from demo.dcmtk import storescu
from state.ledger import Ledger, open_ledger
from state.sealed_files import read_plain
from state.spool import read_preamble_and_meta
from tests.integration.conftest import base_config

__all__ = ["Bridge", "dataset_bytes", "query", "send_raw"]


def query(ledger: Ledger, sql: str, args: Sequence[object] = ()) -> list[dict]:
    """A read-only SQL query for assertions (tests may look at tables directly)."""
    with ledger.db.read() as tx:
        return tx.all(sql, args)


class Bridge:
    """A listener on a free port and the assembler, validator and router working its ledger."""

    def __init__(self, root: Path, routing: RoutingConfig | None = None) -> None:
        self.root = root
        self.ledger = open_ledger(StorageConfig(var_dir=str(root)))
        self.listener = Listener(
            ListenerConfig(port=0, min_free_bytes=0), root / "spool", root / "rejected", self.ledger, quiet_period_s=0.0
        )
        self.listener.start()
        self.quarantine = self.ledger.quarantine
        routing = routing or parse_config(base_config()).routing
        self._stages = [
            (JobState.RECEIVING, AssemblyWork(_quiet_assembly(self.ledger), SystemClock())),
            (JobState.COMPLETE, ValidationWork(self.ledger, Validator(), "stage:validator")),
            (JobState.VALIDATED, RoutingWork(self.ledger, Router(routing, ["chest_xray"]), "stage:router")),
        ]

    @property
    def port(self) -> int:
        """The listener's port."""
        return self.listener.port

    def storescu(self, files: Sequence[Path], **kw) -> int:
        """Send with dcmtk storescu (each file in its own transfer syntax); return its exit code."""
        return storescu(list(files), "127.0.0.1", self.port, "PACSAI", propose_own_syntax=True, **kw).returncode

    def drain(self, max_rounds: int = 100) -> None:
        """Run the stages until no job is due in a state they work on."""
        for _ in range(max_rounds):
            busy = False
            for state, work in self._stages:
                for job in self.ledger.jobs.lease(state, "test", 1000, 60.0, time.time()):
                    work(job)
                    busy = True
            if not busy:
                return
        raise AssertionError("the stages did not settle")

    def latest_job(self, study_uid: str) -> Job:
        """The newest job version of a study."""
        return self.ledger.jobs.for_study(study_uid)[-1]

    def stop(self) -> None:
        """Close the port and the ledger."""
        self.listener.stop()
        self.ledger.close()


def _quiet_assembly(ledger: Ledger) -> Assembly:
    """Completion on a zero quiet period, no PACS to ask (issue #5's evidence left out); a
    sender that completes early is recorded but its quiet period stays zero (tighten_factor 1),
    so ``drain`` completes every study it is given."""
    policy = CompletenessPolicy(AssemblyConfig(quiet_period_s=0.0, quiet_period_by_modality={}, tighten_factor=1.0))
    return Assembly(ledger, Evidence(policy, None, ledger), "stage:assembler", SystemClock())


def send_raw(paths: Iterable[Path], port: int, *, ae_title: str = "RAWSCU") -> list[int]:
    """C-STORE files with a pynetdicom SCU that sends each file's data set bytes unchanged.

    ``STORE_SEND_CHUNKED_DATASET`` makes pynetdicom stream the bytes after the File Meta
    Information as they are on disk, in the file's own transfer syntax, with the SOP Class and
    Instance UIDs of the File Meta in the C-STORE request. One association per file, so a
    refused one does not stop the others. Returns the statuses (-1: no association).
    """
    statuses = []
    saved = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        for path in paths:
            meta = read_file_meta_info(path)
            ae = AE(ae_title=ae_title)
            ae.add_requested_context(str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))
            assoc = ae.associate("127.0.0.1", port, ae_title="PACSAI")
            if not assoc.is_established:
                statuses.append(-1)
                continue
            try:
                status = assoc.send_c_store(path)
                statuses.append(int(status.Status) if status and "Status" in status else -2)
            finally:
                assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = saved
    return statuses


def dataset_bytes(path: Path, keyring: Keyring | None = None) -> bytes:
    """The data set part of a Part 10 file: after the preamble and the group 0002 elements
    (found by parsing them, as pynetdicom's sender does, not by trusting the group length);
    a spool file sealed at rest is opened with ``keyring`` (the ledger's) first."""
    with path.open("rb") as f:
        sealed = is_sealed(f.read(5))
    if not sealed:
        _, offset = split_dataset(path)
        return path.read_bytes()[offset:]
    fp = BytesIO(read_plain(path, keyring))
    read_preamble_and_meta(fp)
    return fp.getvalue()[fp.tell() :]
