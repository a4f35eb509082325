"""``make demo``: the whole product on one machine, then everything stops.

1. Start a private Orthanc as the PACS (temp config, its own storage, TCP_NODELAY=1).
2. Start the pipeline on a local Ray with the demo config (models on CPU, demo weights).
3. Send synthetic chest X-ray studies with known findings to our listener with dcmtk storescu.
4. Wait until every SR is stored in Orthanc; print study, findings with probabilities, SR UID,
   and seconds from the last instance received to the SR stored in the PACS.
5. Stop the pipeline, Ray and Orthanc.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import highdicom as hd
from pydicom import dcmread
from pydicom.sr.codedict import codes

from actors.pipeline import Pipeline, load_config, wait_until
from core.config import AppConfig
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


def _table(results: list[DemoStudy]) -> str:
    lines = [
        f"{'study':<14} {'truth (phantom)':<24} {'AI findings (p >= threshold), top probabilities':<52} "
        f"{'agree':<6}{'SR UID':<22} {'s':>6}",
        "-" * 128,
    ]
    for r in results:
        positive = [f"{k} {p:.2f}" for k, p, present in sorted(r.findings, key=lambda f: -f[1]) if present]
        top = [f"{k} {p:.2f}" for k, p, _ in sorted(r.findings, key=lambda f: -f[1])[:3]]
        shown = ", ".join(positive) if positive else "none; top: " + ", ".join(top)
        agree = "yes" if {k for k, _, present in r.findings if present} == set(r.truth) else "NO"
        lines.append(
            f"...{r.study_uid[-11:]:<11} {', '.join(sorted(r.truth)) or 'normal':<24} {shown[:52]:<52} "
            f"{agree:<6}...{r.sr_uid[-19:]:<19} {r.seconds:6.2f}"
        )
    return "\n".join(lines)


def run_demo(config_path: Path, n_studies: int = 3, timeout_s: float = 300.0) -> int:
    """Run the demo; return the exit status (0 when every study got its SR)."""
    import ray

    cfg = load_config(config_path)
    if cfg.pacs is None:
        raise SystemExit("the demo config needs a 'pacs' section (the demo's Orthanc)")
    var = Path(cfg.storage.var_dir)
    shutil.rmtree(var, ignore_errors=True)  # a fresh demo every time; weights live elsewhere
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
        pipeline = Pipeline(cfg).start()
        print(f"demo: pipeline up in {time.time() - t0:.1f} s; sending {n_studies} studies with storescu", flush=True)
        sent = _send_studies(cfg, pipeline.listener_port(), n_studies, work / "input")
        ledger = open_ledger(cfg.storage, pipeline.layout)

        def all_delivered() -> bool:
            return all(any(j.state.value == "delivered" for j in ledger.jobs.for_study(s.study_uid)) for s in sent)

        if not wait_until(all_delivered, timeout_s, 0.2):
            print("demo: not every study was reported in time; `pacsai status`:", flush=True)
            print(ledger.status.report(time.time()))
            return 1
        results = [_result(pacs, ledger, s) for s in sent]
        print("\n" + _table(results) + "\n", flush=True)
        print("Demo weights, trained on synthetic phantoms: not a clinical model.")
        return 0
    finally:
        if pipeline is not None:
            pipeline.stop()
        ray.shutdown()
        pacs.stop()
        shutil.rmtree(work, ignore_errors=True)
        print("demo: everything stopped", flush=True)
