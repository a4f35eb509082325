"""The PostgreSQL server restarts under a running bridge (the cluster issue).

While the ledger cannot commit, C-STORE is answered 0xA700 (refused: out of resources; the
sender keeps the data and retries), never success, and at once; every actor and every loop
stays up and says the ledger is down; when the server is back, stages reconnect and go on.
Nothing accepted is lost and nothing is reported twice.

Each test crashes a PostgreSQL server of its own (``pg_ctl stop -m immediate``, then ``start``
on the same data directory and port): the session's server is shared and must not stop.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path

import pytest

from actors.adapters.dimse import Listener
from actors.pipeline import wait_until
from actors.stage import StageRunner, StageRuntime
from actors.supervisor import Supervisor
from core.config import LedgerConfig, ListenerConfig, RetryConfig, StageConfig, StorageConfig
from core.health import ActorHealth, HealthStatus
from core.job import Job
from core.types import AuditEventType, InstanceMeta, JobState
from demo.modality import send_paced
from demo.postgres import PostgresServer, postgres_bindir
from state.layout import VarLayout
from state.ledger import Ledger, open_ledger
from synthetic.synthetic_dicom import make_cxr_study, save_study
from tests.integration.conftest import ledger_of, needs_peers, send_files

pytestmark = pytest.mark.integration

PG_ENV = "PACSAI_RESTART_TEST_PG_DSN"
REFUSED = 0xA700  # PS3.4 B.2.3 "Refused: Out of Resources": the sender keeps the data and retries
ANSWER_WITHIN_S = 5.0
"""Longest a C-STORE may wait for its answer while the ledger is down (no hang)."""
TERMINAL = {"delivered", "skipped", "quarantined", "dead"}
IN_FLIGHT = {"complete", "validated", "routed", "linked", "inferred", "written"}


@pytest.fixture
def pg(monkeypatch: pytest.MonkeyPatch):
    """A PostgreSQL server of this test's own, whose DSN is in ``PG_ENV``."""
    if postgres_bindir() is None:
        pytest.skip("PostgreSQL is installed by `make test` (Debian package postgresql)")
    server = PostgresServer().start()
    monkeypatch.setenv(PG_ENV, server.dsn)
    yield server
    server.stop()


def ledger_section(prefix: str) -> dict[str, str]:
    """``storage.ledger`` on the test's private server."""
    return {"backend": "postgresql", "dsn_env": PG_ENV, "schema_prefix": prefix}


def storage(tmp_path: Path, prefix: str) -> StorageConfig:
    return StorageConfig(var_dir=str(tmp_path / "var"), ledger=LedgerConfig(**ledger_section(prefix)))


def crash(pg: PostgresServer) -> float:
    """Every server process quits at once, as in a crash; returns when it happened."""
    pg.stop("immediate", remove=False)
    return time.monotonic()


def restart(pg: PostgresServer) -> float:
    """Start the same cluster again (it recovers from its WAL); returns when it accepts
    connections."""
    pg.start()
    return time.monotonic()


def cxr(tmp_path: Path, seed: int, n: int) -> tuple[list, list[Path]]:
    datasets = make_cxr_study(seed=seed, n_images=n, patient_id=f"P{seed}", accession=f"A{seed}")
    return datasets, save_study(datasets, tmp_path / f"in{seed}")


def timed_send(files: list[Path], port: int) -> tuple[list[int], list[float]]:
    """C-STORE each file on an association of its own; each status and how long it took."""
    statuses, waits = [], []
    for f in files:
        t0 = time.monotonic()
        [status] = send_paced([f], port, "PACSAI", "MODALITY", 0.0)
        statuses.append(status)
        waits.append(time.monotonic() - t0)
    return statuses, waits


def meta(uid: str, study: str) -> InstanceMeta:
    return InstanceMeta(
        uid, "1.2.840.10008.5.1.4.1.1.2", study, study + ".1", "CT", "1.2.840.10008.1.2.1", f"/{uid}.dcm", "a", 1, 0.0
    )


def test_the_listener_refuses_while_postgres_is_down_and_takes_the_resend(pg, tmp_path):
    """No Ray: the SCP alone. A refused instance leaves no ledger row and no spool file, and
    its re-send after the restart is new, not a duplicate."""
    st = storage(tmp_path, "lst")
    ledger = open_ledger(st)
    layout = VarLayout.at(st.var_dir)
    listener = Listener(ListenerConfig(port=0, min_free_bytes=0), layout.spool, layout.rejected, ledger, 60.0)
    listener.start()
    try:
        datasets, files = cxr(tmp_path, 71, 3)
        study = str(datasets[0].StudyInstanceUID)
        assert timed_send(files[:1], listener.port)[0] == [0x0000]

        crash(pg)
        statuses, waits = timed_send(files, listener.port)
        print(f"\nC-STORE while PostgreSQL is down: {[hex(s) for s in statuses]}, answered in {waits} s")
        assert statuses == [REFUSED] * 3  # the one already held too: the ledger cannot say so
        assert max(waits) < ANSWER_WITHIN_S
        assert listener.serving and listener.failed == 3
        spooled = {p.name for p in layout.spool.rglob("*.dcm")}
        assert spooled == {f"{datasets[0].SOPInstanceUID}.dcm"}  # refused: nothing written

        up = restart(pg)
        statuses, _ = timed_send(files, listener.port)  # the first C-STORE after the restart succeeds
        print(f"C-STORE after the restart: {[hex(s) for s in statuses]} ({time.monotonic() - up:.2f} s)")
        assert statuses == [0x0000] * 3
        events = Counter(e.type for e in ledger.audit.events(study))
        assert events[AuditEventType.INSTANCE_RECEIVED] == 3
        assert events[AuditEventType.INSTANCE_DUPLICATE] == 1  # only the one held before the crash
        assert set(ledger.intake.states(study)) == {str(d.SOPInstanceUID) for d in datasets}
        assert {p.name for p in layout.spool.rglob("*.dcm")} == {f"{d.SOPInstanceUID}.dcm" for d in datasets}
        assert ledger.audit.verify() is None
    finally:
        listener.stop()
        ledger.close()


def test_a_stage_loop_and_the_supervisor_outlive_a_postgres_restart(pg, tmp_path, caplog):
    """No Ray: a stage's lease loop (LISTEN/NOTIFY idle waits) and the supervision loop of
    ``pacsai up`` fail rounds while the server is down, log it, and go on afterwards."""
    caplog.set_level(logging.WARNING)
    st = storage(tmp_path, "loops")
    ledger = open_ledger(st)
    leased: list[str] = []

    def work(job: Job) -> None:
        leased.append(job.study_instance_uid)
        ledger.jobs.transition(job, JobState.COMPLETE, time.time())

    runtime = StageRuntime(st, StageConfig(), lease_s=30, poll_interval_s=0.05, retry=RetryConfig(), notify_wait_s=0.2)
    runner = StageRunner("assembler", JobState.RECEIVING, runtime, ledger, work)

    class Unanswered:
        """A pipeline one of whose actors does not answer: the supervisor records it down."""

        def health(self) -> dict[str, ActorHealth]:
            return {"router": ActorHealth.unreachable("router", "ActorDiedError")}

    supervision = Supervisor(Unanswered(), ledger).start(period_s=0.2)
    runner.start()
    try:
        ledger.intake.record(meta("1.9.1.1", "1.9.1"), time.time(), time.time(), "test")
        assert wait_until(lambda: leased == ["1.9.1"], 20)

        crash(pg)
        assert wait_until(lambda: runner.loop.health().failures >= 3 and supervision.health().failures >= 3, 30)
        for loop in (runner.loop, supervision):
            health = loop.health()
            assert health.alive and "postgresql" in health.last_error, health
        assert "round failed" in caplog.text

        up = restart(pg)
        ledger.intake.record(meta("1.9.2.1", "1.9.2"), time.time(), time.time(), "test")
        assert wait_until(lambda: "1.9.2" in leased, 30), runner.loop.health()
        print(f"\nstage leased new work {time.monotonic() - up:.2f} s after the restart")
        rounds = supervision.health().rounds
        assert wait_until(lambda: supervision.health().rounds > rounds + 2 and not supervision.health().last_error, 20)
        assert runner.loop.health().alive and leased == ["1.9.1", "1.9.2"]
        [stage] = ledger.controls.stages()
        assert stage.status is HealthStatus.DOWN and stage.heartbeat_at > time.time() - 10
    finally:
        supervision.stop()
        runner.stop()
        ledger.close()


@needs_peers
def test_the_pipeline_survives_a_postgres_restart(pg, tmp_path, orthanc, make_pipeline, caplog):
    """Study 1 is in flight when the server crashes; study 2 is refused while it is down and
    sent again after; both are reported once each, and no actor was restarted."""
    caplog.set_level(logging.INFO, logger="actors.supervisor")
    pipeline, cfg = make_pipeline(orthanc, storage={"ledger": ledger_section("e2e")})
    ledger = ledger_of(pipeline)
    assert ledger.backend == "postgresql"
    pids = {name: h.pid for name, h in pipeline.health().items()}
    supervision = Supervisor(pipeline, ledger).start(period_s=0.5)
    one, one_files = cxr(tmp_path, 81, 2)
    two, two_files = cxr(tmp_path, 82, 3)
    uid1, uid2 = str(one[0].StudyInstanceUID), str(two[0].StudyInstanceUID)
    try:
        send_files(one_files, pipeline, cfg)  # storescu: every instance acknowledged 0x0000
        seen: list[str] = []

        def in_flight() -> bool:
            jobs = ledger.jobs.for_study(uid1)
            seen.append(jobs[-1].state.value if jobs else "")
            return seen[-1] in IN_FLIGHT | TERMINAL

        assert wait_until(in_flight, 60, 0.02)
        down = crash(pg)
        print(f"\nPostgreSQL crashed with study 1 in state {seen[-1]}")
        assert seen[-1] in IN_FLIGHT

        statuses, waits = timed_send(two_files, pipeline.listener_port())
        print(f"C-STORE while PostgreSQL is down: {[hex(s) for s in statuses]}, answered in {waits} s")
        assert statuses == [REFUSED] * len(two_files)
        assert max(waits) < ANSWER_WITHIN_S
        time.sleep(max(0.0, 5.0 - (time.monotonic() - down)))  # several failed rounds everywhere
        during = pipeline.health()
        for name, h in during.items():  # every actor answers, no loop ended, none restarted
            assert h.pid == pids[name] and h.alive, (name, h)
        stages = ("assembler", "validator", "router", "prior_linker", "inference", "sr_writer", "delivery")
        assert all(during[name].status is HealthStatus.FAILING for name in stages), during  # the ledger is down
        assert during["listener"].status is HealthStatus.FAILING, during["listener"]  # its heartbeat says so
        assert supervision.health().alive

        up = restart(pg)
        acked: list[float] = []
        partial = False  # an attempt taken in part while the server came back
        while not acked and time.monotonic() - up < 60:
            statuses, _ = timed_send(two_files, pipeline.listener_port())
            if statuses == [0x0000] * len(two_files):
                acked.append(time.monotonic() - up)
            else:  # a sender retries what was refused
                partial = partial or 0x0000 in statuses
                time.sleep(0.5)
        assert acked, statuses
        assert wait_for_delivered(ledger, [uid1, uid2], 180), ledger.status.report(time.time())
        delivered = time.monotonic() - up
        assert wait_until(lambda: all(h.status is HealthStatus.OK for h in pipeline.health().values()), 30), {
            n: h.last_error for n, h in pipeline.health().items()
        }
        healthy = time.monotonic() - up
        print(
            f"recovery after the restart: study 2 acknowledged in {acked[0]:.1f} s, both studies "
            f"delivered in {delivered:.1f} s, every actor ok in {healthy:.1f} s"
        )

        send_files(two_files, pipeline, cfg)  # a late re-send is acknowledged, not reported again
        time.sleep(2.0)
        for uid, datasets in ((uid1, one), (uid2, two)):
            jobs = ledger.jobs.for_study(uid)
            # Study 2, re-sent as the server came back, may have been completed on its first
            # instances: when an attempt was taken in part, or when the first commits after the
            # restart took longer than the 0.5 s quiet period between two instances. The rest
            # then opened a newer version that superseded it: never two reports.
            superseded = ["skipped"] * (len(jobs) - 1) if uid == uid2 else []
            assert [j.state.value for j in jobs] == [*superseded, "delivered"], (uid, partial, jobs)
            assert all(j.reason.startswith("superseded") for j in jobs[:-1]), jobs
            states = ledger.intake.states(uid)
            assert states == {str(d.SOPInstanceUID): "reported" for d in datasets}
            events = Counter(e.type for e in ledger.audit.events(uid))
            assert events[AuditEventType.INSTANCE_RECEIVED] == len(datasets)
            assert events[AuditEventType.SR_DELIVERED] == 1
            assert len(orthanc.instances_of_study(uid, modality="SR")) == 1
        assert ledger.audit.verify() is None
        assert {name: h.pid for name, h in pipeline.health().items()} == pids  # no actor restarted
        assert supervision.health().alive
        assert "actor delivery is failing" in caplog.text and "actor delivery is ok" in caplog.text
    finally:
        supervision.stop()


def wait_for_delivered(ledger: Ledger, uids: list[str], timeout_s: float) -> bool:
    def done() -> bool:
        try:
            return all([j.state.value for j in ledger.jobs.for_study(uid)][-1:] == ["delivered"] for uid in uids)
        except Exception:  # noqa: BLE001 - the test's own ledger reconnects like the actors'
            return False

    return wait_until(done, timeout_s, 0.2)
