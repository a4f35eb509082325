"""``make demo``: the whole product on one machine, then everything stops.

1. Start a private Orthanc as the PACS (temp config, its own storage, TCP_NODELAY=1).
2. Start the pipeline on a local Ray with the demo config (models on CPU, demo weights).
3. Send synthetic chest X-ray studies with known findings to our listener with dcmtk storescu.
4. Show each study's way through the stages (a bar per study on a terminal, a line per study
   as it finishes elsewhere) until every SR is stored in Orthanc; print study, findings with
   probabilities, SR UID, and seconds from the last instance received to the SR stored in the PACS.
5. Stop the pipeline, Ray and Orthanc.

The console gets the set-up steps, the progress and the table; the logs of the driver and of
every actor go to ``<storage.var_dir>/logs`` (``actors.adapters.logs``).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import highdicom as hd
from pydicom import dcmread
from pydicom.sr.codedict import codes
from rich import box
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from actors.adapters.logs import LogSettings, export_for_workers, install
from actors.pipeline import Pipeline, load_config, wait_until
from core.config import AppConfig
from core.types import JobState
from demo.dcmtk import storescu
from demo.orthanc import OrthancProcess
from state.ledger import Ledger, open_ledger

__all__ = ["DemoStudy", "run_demo"]

CASES: tuple[frozenset[str], ...] = (
    frozenset({"nodule"}),
    frozenset({"effusion", "cardiomegaly"}),
    frozenset(),
    frozenset({"pneumothorax"}),
    frozenset({"mass"}),
)
"""What the synthetic studies show, in order (ground truth of the demo table)."""


@dataclass(frozen=True, slots=True)
class DemoStudy:
    """One study sent in the demo and what came back."""

    study_uid: str
    truth: frozenset[str]
    sr_uid: str = ""
    findings: tuple[tuple[str, float, bool], ...] = ()
    seconds: float = float("nan")


def _send_studies(cfg: AppConfig, port: int, n: int, workdir: Path) -> list[DemoStudy]:
    from synthetic.synthetic_dicom import make_cxr_study, save_study

    sent = []
    for i in range(n):
        truth = CASES[i % len(CASES)]
        datasets = make_cxr_study(
            seed=1000 + i,
            findings=truth,
            n_images=1,
            patient_id=f"DEMO{i:04d}",
            patient_name=f"DEMO^PATIENT{i}",
            accession=f"DEMOACC{i:04d}",
        )
        files = save_study(datasets, workdir / f"study{i}")
        res = storescu(files, "127.0.0.1", port, cfg.listener.ae_title, "DEMO_MODALITY")
        if res.returncode != 0:
            raise RuntimeError(f"storescu failed: {res.stderr[-400:]}")
        sent.append(DemoStudy(str(datasets[0].StudyInstanceUID), truth))
    return sent


def _result(pacs: OrthancProcess, ledger: Ledger, study: DemoStudy) -> DemoStudy:
    [sr_meta] = pacs.instances_of_study(study.study_uid, modality="SR")
    ds = dcmread(BytesIO(pacs.file(sr_meta["ID"])))
    groups = hd.sr.Comprehensive3DSR.from_dataset(ds).content.get_image_measurement_groups()
    findings = []
    for g in groups:
        prob = g.get_measurements(name=codes.DCM.Probability)[0].value
        present = g.get_qualitative_evaluations(name=codes.DCM.PresenceOfProperty)[0].value
        findings.append((g.tracking_identifier.split(":")[-1], float(prob), present == codes.SCT.Present))
    events = ledger.audit.events(study.study_uid)
    last_received = max(e.at for e in events if e.type == "instance_received")
    stored = max(e.at for e in events if e.type == "sr_delivered")
    return DemoStudy(study.study_uid, study.truth, str(ds.SOPInstanceUID), tuple(findings), stored - last_received)


def _table(results: list[DemoStudy]) -> Table:
    t = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    t.add_column("study")
    t.add_column("truth (phantom)")
    t.add_column("AI findings (else: top 3)", overflow="fold")
    t.add_column("agree")
    t.add_column("SR UID")
    t.add_column("s", justify="right")
    for r in results:
        ranked = sorted(r.findings, key=lambda f: -f[1])
        positive = [f"{k} {p:.2f}" for k, p, present in ranked if present]
        top = [f"{k} {p:.2f}" for k, p, _ in ranked[:3]]
        shown = ", ".join(positive) if positive else "none; top: " + ", ".join(top)
        agree = {k for k, _, present in r.findings if present} == set(r.truth)
        t.add_row(
            f"...{r.study_uid[-11:]}",
            ", ".join(sorted(r.truth)) or "normal",
            shown,
            "yes" if agree else "[bold red]NO[/]",
            f"...{r.sr_uid[-12:]}",
            f"{r.seconds:.2f}",
        )
    return t


_PATH = (
    JobState.RECEIVING,
    JobState.COMPLETE,
    JobState.VALIDATED,
    JobState.ROUTED,
    JobState.LINKED,
    JobState.INFERRED,
    JobState.WRITTEN,
)
"""The stages a study with findings goes through before ``delivered``, in order."""


def _stage(ledger: Ledger, study_uid: str) -> JobState | None:
    """Where a study is: delivered once any version is, else its newest job's state."""
    jobs = ledger.jobs.for_study(study_uid)
    if any(j.state is JobState.DELIVERED for j in jobs):
        return JobState.DELIVERED
    return jobs[-1].state if jobs else None


def _watch(console: Console, ledger: Ledger, sent: list[DemoStudy], timeout_s: float) -> bool:
    """Follow every study to ``delivered``: a bar each on a terminal, else a line as each ends."""
    columns = (TextColumn("  {task.description}"), BarColumn(bar_width=24), TextColumn("{task.fields[stage]}"))
    with Progress(*columns, TimeElapsedColumn(), console=console, disable=not console.is_terminal) as bars:
        tasks = {
            s.study_uid: bars.add_task(f"study ...{s.study_uid[-11:]}", total=len(_PATH), stage="sent") for s in sent
        }
        ended: set[str] = set()
        t0 = time.monotonic()

        def all_delivered() -> bool:
            for uid, task in tasks.items():
                stage = _stage(ledger, uid)
                done = len(_PATH) if stage is JobState.DELIVERED else _PATH.index(stage) if stage in _PATH else 0
                bars.update(task, completed=done, stage=stage.value if stage else "sent")
                if stage is not None and stage.is_terminal and uid not in ended:
                    ended.add(uid)
                    if not console.is_terminal:
                        print(f"demo: study ...{uid[-11:]} {stage.value} ({time.monotonic() - t0:.1f} s)", flush=True)
            return all(_stage(ledger, uid) is JobState.DELIVERED for uid in tasks)

        return wait_until(all_delivered, timeout_s, 0.2)


def _quiet_logs(cfg: AppConfig, verbose: bool) -> None:
    """Log to files under the demo's var dir; the console keeps the demo's own lines."""
    settings = LogSettings.from_config(cfg.logging, cfg.storage, name="demo", verbose=verbose)
    install(settings)
    export_for_workers(settings)  # before Ray starts: its workers inherit it


def run_demo(config_path: Path, n_studies: int = 3, timeout_s: float = 300.0, *, verbose: bool = False) -> int:
    """Run the demo; return the exit status (0 when every study got its SR); ``verbose``: INFO
    on the console too."""
    import ray

    cfg = load_config(config_path)
    if cfg.pacs is None:
        raise SystemExit("the demo config needs a 'pacs' section (the demo's Orthanc)")
    var = Path(cfg.storage.var_dir)
    shutil.rmtree(var, ignore_errors=True)  # a fresh demo every time; weights live elsewhere
    _quiet_logs(cfg, verbose)
    console = Console() if sys.stdout.isatty() else Console(width=120)
    work = Path(tempfile.mkdtemp(prefix="pacsai-demo-"))
    pacs = OrthancProcess(
        work / "orthanc",
        aet=cfg.pacs.ae_title,
        dicom_port=cfg.pacs.port,
        modalities={"pacsai": (cfg.listener.ae_title, "127.0.0.1", cfg.listener.port)},
    )
    pipeline: Pipeline | None = None
    try:
        print(f"demo: starting Orthanc (DICOM {pacs.dicom_port}, REST {pacs.http_port})", flush=True)
        pacs.start()
        print("demo: starting the pipeline on a local Ray (models on CPU) ...", flush=True)
        t0 = time.time()
        with console.status("starting Ray, the actors and the model applications ...", spinner="dots"):
            pipeline = Pipeline(cfg).start()
        print(f"demo: pipeline up in {time.time() - t0:.1f} s; sending {n_studies} studies with storescu", flush=True)
        sent = _send_studies(cfg, pipeline.listener_port(), n_studies, work / "input")
        ledger = open_ledger(cfg.storage, pipeline.layout)
        if not _watch(console, ledger, sent, timeout_s):
            print("demo: not every study was reported in time; `pacsai status`:", flush=True)
            print(ledger.status.report(time.time()))
            return 1
        results = [_result(pacs, ledger, s) for s in sent]
        console.print()
        console.print(_table(results))
        console.print("Demo weights, trained on synthetic phantoms: not a clinical model.", highlight=False)
        print(f"demo: logs in {var / 'logs'}", flush=True)
        return 0
    finally:
        if pipeline is not None:
            pipeline.stop()
        ray.shutdown()
        pacs.stop()
        shutil.rmtree(work, ignore_errors=True)
        print("demo: everything stopped", flush=True)
