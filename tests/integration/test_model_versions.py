"""Issue 17 end to end: a MONAI bundle and an ONNX export deployed as a new family on the running
Ray, into Orthanc; two versions side by side (canary, shadow); promote and rollback while studies
flow.

The family ``chest_bundle`` is version 1.2.0 from a real MONAI bundle (``init_bundle``,
``ckpt_export``: TorchScript) and version 2.0.0 from an ONNX export with its spec YAML, run by
onnxruntime. Their output biases make their results tell them apart on any radiograph: 1.2.0
finds ``effusion`` (RadLex RID34539), 2.0.0 finds ``nodule`` (SNOMED CT 27925004). Both are
deployed once for the module; each test's pipeline sets the traffic.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from actors.pipeline import deploy_models, remove_models, wait_until
from api.operations import Operations, RayModelControl
from core.bundles import expand_models
from core.config import AppConfig, parse_config
from core.rollout import RolloutState, StudyFacts, assign
from demo.dcmtk import dciodvfy
from synthetic.bundles import RADIOGRAPH_BUNDLE
from synthetic.synthetic_dicom import make_cxr_study, save_study
from tests.integration.conftest import base_config, ledger_of, needs_peers, send_files, wait_for_states
from tests.unit.models.bundle_material import make_bundle, make_exported

pytestmark = [pytest.mark.integration, needs_peers]

FAMILY = "chest_bundle"
V1, V2 = RADIOGRAPH_BUNDLE.version, "2.0.0"
V2_DESIGN = dataclasses.replace(RADIOGRAPH_BUNDLE, version=V2, output_bias=(-4.0, 4.0))
FOUND = {V1: ("RID34539", "RADLEX"), V2: ("27925004", "SCT")}
"""What each version finds on any radiograph: the code of its one positive finding."""
RULES = [{"name": "chest-bundle", "family": FAMILY, "modalities": ["DX", "CR"]}]


@pytest.fixture(scope="module")
def bundle_models(tmp_path_factory: pytest.TempPathFactory, model_app: AppConfig) -> Iterator[dict[str, Any]]:
    """Both versions deployed on the session's Ray; the raw ``models:`` item, files read."""
    root = tmp_path_factory.mktemp("bundles")
    bundle = make_bundle(root / "bundle", RADIOGRAPH_BUNDLE, "ts")
    onnx, spec = make_exported(root / "onnx", V2_DESIGN, "onnx")
    item = {
        "bundle": str(bundle),
        "demo": True,  # synthetic networks, no sha256 pinned (issue 13): their sidecars are trusted
        "serve": {"num_cpus": 0.1, "max_batch_size": 4, "batch_wait_timeout_s": 0.01},
        "versions": {V2: {"weights": str(onnx), "spec": str(spec), "demo": True}},
    }
    cfg = _config(item, "off")
    deploy_models(cfg, [FAMILY])
    yield item
    remove_models([FAMILY])


def _expanded(item: dict[str, Any], traffic: dict[str, Any]) -> dict[str, Any]:
    raw = {FAMILY: {**item, "versions": {V2: {**item["versions"][V2], "traffic": traffic}}}}
    return expand_models({"models": raw}, lambda f: Path(f).read_text(), lambda f: Path(f).is_file(), "test")["models"]


def _config(item: dict[str, Any], mode: str) -> AppConfig:
    raw = base_config()
    raw["models"].update(_expanded(item, {"mode": mode}))
    return parse_config(raw)


def _start(make_pipeline, orthanc, item: dict[str, Any], traffic: dict[str, Any]):
    return make_pipeline(orthanc, models=_expanded(item, traffic), routing={"rules": RULES})


def _send(tmp_path: Path, pipeline, cfg: AppConfig, seeds: range) -> list[str]:
    uids = []
    for seed in seeds:
        datasets = make_cxr_study(seed=seed, patient_id=f"MV{seed}", accession=f"MV{seed}", size=128)
        send_files(save_study(datasets, tmp_path / f"s{seed}"), pipeline, cfg)
        uids.append(str(datasets[0].StudyInstanceUID))
    return uids


def _codes(ds: Dataset) -> set[tuple[str, str]]:
    """Every coded concept value in the SR content tree."""
    found: set[tuple[str, str]] = set()
    for item in ds.get("ContentSequence", []):
        for code in item.get("ConceptCodeSequence", []):
            found.add((str(code.CodeValue), str(code.CodingSchemeDesignator)))
        found |= _codes(item)
    return found


def _texts(ds: Dataset) -> dict[str, str]:
    """TEXT content items by concept code value, anywhere in the tree."""
    found: dict[str, str] = {}
    for item in ds.get("ContentSequence", []):
        if item.ValueType == "TEXT":
            found[str(item.ConceptNameCodeSequence[0].CodeValue)] = str(item.TextValue)
        found.update(_texts(item))
    return found


def _reports(orthanc, uid: str) -> list[Dataset]:
    return [dcmread(BytesIO(orthanc.file(m["ID"]))) for m in orthanc.instances_of_study(uid, modality="SR")]


def _version_of(sr: Dataset) -> str:
    """The model version an SR names (TID 4019), checked against what that version finds."""
    texts = _texts(sr)
    version = texts["111003"]
    assert texts["111001"] == RADIOGRAPH_BUNDLE.name
    assert FOUND[version] in _codes(sr)
    return version


def test_bundle_and_onnx_versions_split_by_canary_into_the_pacs(tmp_path, orthanc, make_pipeline, bundle_models):
    pipeline, cfg = _start(make_pipeline, orthanc, bundle_models, {"mode": "canary", "percent": 50})
    ledger = ledger_of(pipeline)
    uids = _send(tmp_path, pipeline, cfg, range(1700, 1716))
    assert wait_for_states(ledger, uids, {"delivered"}, timeout_s=240), ledger.status.report(time.time())

    entry = cfg.models[FAMILY]
    seen: dict[str, list[str]] = {V1: [], V2: []}
    for uid in uids:
        [sr] = _reports(orthanc, uid)
        version = _version_of(sr)
        expected = assign(FAMILY, entry, RolloutState(FAMILY), StudyFacts(uid, frozenset({"DX"})))
        assert version == expected.version, uid  # the split is the pure rule's, study by study
        seen[version].append(uid)
        [inferred] = [e.detail for e in ledger.audit.events(uid) if e.type == "inferred"]
        assert (inferred["version"], inferred["traffic"]) == (version, expected.reason.value)
    assert seen[V1] and seen[V2], seen  # 16 studies: both halves served (p of one empty = 2**-15)
    for version, (sr_uid, *_) in seen.items():
        path = tmp_path / f"sr-{version}.dcm"
        path.write_bytes(orthanc.file(orthanc.instances_of_study(sr_uid, modality="SR")[0]["ID"]))
        assert dciodvfy(path)[0] == [], version


def test_shadow_never_reaches_the_pacs_then_promote_and_rollback_while_studies_flow_lose_none(
    tmp_path, orthanc, make_pipeline, bundle_models
):
    pipeline, cfg = _start(make_pipeline, orthanc, bundle_models, {"mode": "shadow"})
    ledger = ledger_of(pipeline)
    ops = Operations(cfg, ledger, RayModelControl(cfg))

    shadowed = _send(tmp_path, pipeline, cfg, range(1800, 1804))
    assert wait_for_states(ledger, shadowed, {"delivered"}, timeout_s=240), ledger.status.report(time.time())
    for uid in shadowed:
        assert [_version_of(sr) for sr in _reports(orthanc, uid)] == [V1]  # the shadow's never sent
        [shadow] = ledger.models.shadow_predictions(FAMILY, V2, uid)
        assert shadow.model_version == V2 and [f.key for f in shadow.findings if f.present] == ["nodule"]
    summary = ledger.models.shadow_summary(FAMILY, V2)
    assert (summary.n, summary.live_versions) == (len(shadowed), (V1,))
    agreement = {f.key: f.agreement_rate for f in summary.findings}
    assert agreement == {"effusion": 0.0, "nodule": 0.0}  # each finds what the other does not

    ops.models_promote(FAMILY, V2, "user:test", "shadow agrees well enough")
    promoted = _send(tmp_path, pipeline, cfg, range(1810, 1814))
    ops.models_rollback(FAMILY, V1, "user:test", "back to the known version")  # while those flow
    after = _send(tmp_path, pipeline, cfg, range(1820, 1824))

    everything = shadowed + promoted + after
    assert wait_for_states(ledger, everything, {"delivered"}, timeout_s=240), ledger.status.report(time.time())
    assert wait_until(lambda: all(len(_reports(orthanc, u)) == 1 for u in everything), 30, 0.5)
    versions = {uid: _version_of(_reports(orthanc, uid)[0]) for uid in everything}
    assert {versions[u] for u in after} == {V1}  # rolled back: 2.0.0 halted, its shadow too
    assert all(not ledger.models.shadow_predictions(FAMILY, V2, u) for u in after)
    assert all(len(ledger.jobs.for_study(u)) == 1 for u in everything)  # none lost, none doubled
    events = [e.type for e in ledger.audit.events(None, limit=10_000)]
    assert events.count("model_promoted") == 1 and events.count("model_rolled_back") == 1
    state = ledger.models.rollout(FAMILY)
    assert state.live is not None and state.live.version == V1 and state.halt_of(V2) is not None
    card = ops.models_show(FAMILY)
    by_version = {v.version: v for v in card.versions}
    assert card.live == V1 and by_version[V2].halted is not None and by_version[V1].deployed
    assert by_version[V1].card.intended_use and by_version[V1].observed.studies >= len(shadowed + after)
    assert by_version[V1].observed.positive_rate_by_finding["effusion"] == 1.0
    assert by_version[V2].observed.shadow is not None and by_version[V2].observed.reader_agreement is None
