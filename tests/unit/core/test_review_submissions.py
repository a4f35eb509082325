"""Reviews on their way back to the PACS (core.review_submissions) and which findings get key
images (core.key_images.plan_key_images)."""

from __future__ import annotations

from core.findings import term_for
from core.key_images import plan_key_images
from core.records import (
    AxisScale,
    BlobRef,
    Finding,
    FrameRef,
    HeatmapRef,
    PlanarRegion,
    PlaneGrid,
    Prediction,
    VolumeGrid,
    VolumetricRegion,
)
from core.review_submissions import (
    ReviewDecision,
    ReviewSubmission,
    finding_reviews,
    newest_per_reader,
    reader_of,
    refusal_is_final,
)
from core.sr_verified import Assessment
from core.types import CodedTerm

CT = "1.2.840.10008.5.1.4.1.1.2"
A = FrameRef("1.2.3.1", CT)
B = FrameRef("1.2.3.2", CT)
BLOB = BlobRef("0" * 64, 10)
SQUARE = ((1.0, 1.0), (5.0, 1.0), (5.0, 5.0), (1.0, 5.0), (1.0, 1.0))


def _submission(sid: int, reader: str = "rita", version: int = 1, sr: str = "1.2.9", **kw) -> ReviewSubmission:
    fields = {
        "study_uid": "1.2.3",
        "family": "cxr",
        "model_version": "cxr@1.0",
        "reader_name": "",
        "final_diagnosis": "",
        "submitted_at": float(sid),
        "decisions": (),
        **kw,
    }
    return ReviewSubmission(sid, sr, version=version, reader=reader, **fields)  # type: ignore[arg-type]


def _finding(key: str, p: float, **kw) -> Finding:
    return Finding(key, term_for(key), p, 0.5, **kw)


def _plane(frame: FrameRef, key: str) -> HeatmapRef:
    grid = PlaneGrid(frame, 8, 8, AxisScale(2.0, 0.5), AxisScale(2.0, 0.5))
    return HeatmapRef(key, grid, (4, 4), BLOB)


def test_decisions_carry_the_ai_srs_own_codes_and_unknown_predictions_fall_back_to_the_catalogue() -> None:
    own = CodedTerm("X1", "99LOCAL", "Site nodule")
    prediction = Prediction("cxr", "m", "1", (Finding("mass", own, 0.9, 0.5),), ())
    decisions = (
        ReviewDecision("mass", "override", False, "old scar"),
        ReviewDecision("pneumothorax", "agree", True),
    )
    s = _submission(1, decisions=decisions)
    [mass, ptx] = finding_reviews(s, prediction)
    assert mass.term == own and mass.assessment is Assessment.OVERRIDE and not mass.present
    assert mass.comment == "old scar"
    assert ptx.term == term_for("pneumothorax") and ptx.assessment is Assessment.AGREE and ptx.present
    assert [r.term for r in finding_reviews(s, None)] == [term_for("mass"), term_for("pneumothorax")]


def test_the_verifying_observer_is_the_name_given_else_the_user_name() -> None:
    assert reader_of(_submission(1, reader_name="Reader^Rita"), "GH").name == "Reader^Rita"
    named = reader_of(_submission(1, reader_name="  "), "GH")
    assert (named.user_id, named.name, named.organization) == ("rita", "rita", "GH")


def test_only_each_readers_newest_submission_per_ai_sr_is_sent() -> None:
    subs = [
        _submission(1, "rita", 1),
        _submission(2, "omar", 1),
        _submission(3, "rita", 2),
        _submission(4, "rita", 1, sr="1.2.10"),
    ]
    assert [s.submission_id for s in newest_per_reader(subs)] == [2, 3, 4]
    assert newest_per_reader([]) == []


def test_refusals_end_dead_at_the_retry_budget() -> None:
    assert [refusal_is_final(n, 3) for n in range(4)] == [False, False, True, True]
    assert refusal_is_final(0, 1)


def test_key_images_only_for_positive_findings_with_a_heatmap_or_a_region() -> None:
    findings = (
        _finding("nodule", 0.9, evidence=A, region=PlanarRegion(A, SQUARE, (3.0, 3.0))),
        _finding("mass", 0.2, evidence=A, region=PlanarRegion(A, SQUARE, (3.0, 3.0))),  # negative
        _finding("effusion", 0.8, evidence=B),  # positive, but nothing to show
        _finding("edema", 0.7, evidence=A),  # positive with a plane heatmap on B
    )
    prediction = Prediction(
        "cxr", "m", "1", findings, ("1.2.3.1", "1.2.3.2"), heatmaps=(_plane(A, "nodule"), _plane(B, "edema"))
    )
    plans = {p.finding.key: p for p in plan_key_images(prediction)}
    assert set(plans) == {"nodule", "edema"}
    assert plans["nodule"].frame == A and plans["nodule"].outline == SQUARE
    assert plans["nodule"].heatmap is not None and plans["nodule"].heatmap.finding == "nodule"
    assert plans["edema"].frame == B and plans["edema"].outline == () and plans["edema"].heatmap is not None


def test_a_region_on_another_frame_than_the_heatmap_is_shown_without_the_heatmap() -> None:
    volume = HeatmapRef(
        "bleed", VolumeGrid(((1, 0, 0, 0), (0, 1, 0, 0), (0, 0, 1, 0), (0, 0, 0, 1)), "1.2.4"), (2, 2, 2), BLOB
    )
    ellipsoid = VolumetricRegion(B, "1.2.4", ((0.0, 0.0, 0.0),) * 6, (0.0, 0.0, 0.0))
    findings = (
        _finding("nodule", 0.9, region=PlanarRegion(B, SQUARE, (3.0, 3.0))),
        _finding("bleed", 0.9, evidence=A, region=ellipsoid),
        _finding("mass", 0.9, evidence=A),
    )
    heatmaps = (_plane(A, "nodule"), volume, HeatmapRef("mass", volume.grid, (2, 2, 2), BLOB))
    plans = {p.finding.key: p for p in plan_key_images(Prediction("ct", "m", "1", findings, (), heatmaps=heatmaps))}
    assert plans["nodule"].frame == B and plans["nodule"].heatmap is None and plans["nodule"].outline == SQUARE
    assert plans["bleed"].frame == B and plans["bleed"].heatmap is None and plans["bleed"].outline == ()
    assert plans["mass"].frame == A and plans["mass"].heatmap is None  # a volume map: evidence frame, no blend


def test_a_key_images_uid_follows_the_results_inputs_like_the_parametric_maps() -> None:
    from datetime import datetime

    from pydicom import dcmread
    from pydicom.data import get_testdata_file

    from core.key_images import KeyImageFinding, key_image

    source = dcmread(get_testdata_file("CT_small.dcm"))
    when = datetime(2026, 12, 6, 11, 0, 0)

    def uid(*inputs: str) -> str:
        finding = KeyImageFinding("nodule", "Nodule", 0.9, "m 1", inputs=inputs)
        return str(key_image(source, finding, "PACS-AI Bridge", 9902, when).SOPInstanceUID)

    assert uid("1.2.3.1", "1.2.3.2") == uid("1.2.3.2", "1.2.3.1") != uid("1.2.3.1", "1.2.3.2", "1.2.3.3")
