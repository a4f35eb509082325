"""core.mpps: N-CREATE / N-SET of Modality Performed Procedure Steps (PS3.4 F.7.2)."""

from __future__ import annotations

import json

import pytest
from pydicom.dataset import Dataset

from core.errors import DimseRefused
from core.mpps import (
    MAY_NO_LONGER_BE_UPDATED,
    NStatus,
    PerformedSeries,
    ProcedureStep,
    StepsState,
    StepStatus,
    create_step,
    judge_steps,
    set_step,
)

STEP = "1.2.826.0.1.3680043.10.1.1"
STUDY = "1.2.826.0.1.3680043.10.2.1"
OTHER_STUDY = "1.2.826.0.1.3680043.10.2.2"
CT = "1.2.840.10008.5.1.4.1.1.2"
DOSE_SR = "1.2.840.10008.5.1.4.1.1.88.67"


def scheduled(*studies):
    items = []
    for uid in studies:
        item = Dataset()
        item.StudyInstanceUID = uid
        item.AccessionNumber = "A1"
        items.append(item)
    return items


def ref(uid, sop_class=CT):
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = uid
    return item


def performed(series_uid, images=(), non_images=()):
    item = Dataset()
    item.SeriesInstanceUID = series_uid
    item.ProtocolName = "HEAD"
    item.RetrieveAETitle = "PACS"
    item.ReferencedImageSequence = [ref(u) for u in images]
    item.ReferencedNonImageCompositeSOPInstanceSequence = [ref(u, DOSE_SR) for u in non_images]
    return item


def n_create(status="IN PROGRESS", studies=(STUDY,), series=()):
    ds = Dataset()
    if status is not None:
        ds.PerformedProcedureStepStatus = status
    if studies is not None:
        ds.ScheduledStepAttributesSequence = scheduled(*studies)
    ds.PatientName = "DOE^JANE"  # PHI the record must not keep
    ds.Modality = "CT"
    ds.PerformedStationAETitle = "CT_SCANNER_1"
    ds.PerformedProcedureStepStartDate = "20260601"
    ds.PerformedSeriesSequence = list(series)
    return ds


def n_set(status=None, series=None, **extra):
    ds = Dataset()
    if status is not None:
        ds.PerformedProcedureStepStatus = status
    if series is not None:
        ds.PerformedSeriesSequence = list(series)
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    return ds


def created(**kw):
    return create_step(n_create(**kw), STEP, "CT_SCANNER_1 ", 10.0)


def refused(call) -> DimseRefused:
    with pytest.raises(DimseRefused) as info:
        call()
    return info.value


def test_n_create_keeps_uids_codes_and_aes_only():
    step = created(studies=(STUDY, STUDY), series=[performed("1.2.3.1", ["1.2.3.1.1"])])
    assert (step.status, step.study_uids, step.calling_ae, step.modality, step.station_ae) == (
        StepStatus.IN_PROGRESS,
        (STUDY,),
        "CT_SCANNER_1",
        "CT",
        "CT_SCANNER_1",
    )
    assert step.series == (PerformedSeries("1.2.3.1", ("1.2.3.1.1",), "PACS"),)
    text = json.dumps(step.to_json())
    assert "DOE" not in text and ProcedureStep.from_json(json.loads(text)) == step


@pytest.mark.parametrize(
    ("kw", "status", "offending"),
    [
        ({"status": "COMPLETED"}, NStatus.INVALID_ATTRIBUTE_VALUE, (0x00400252,)),  # F.7.2.1.3
        ({"status": "DISCONTINUED"}, NStatus.INVALID_ATTRIBUTE_VALUE, (0x00400252,)),
        ({"status": "DONE"}, NStatus.INVALID_ATTRIBUTE_VALUE, (0x00400252,)),
        ({"status": None}, NStatus.MISSING_ATTRIBUTE, (0x00400252,)),
        ({"studies": None}, NStatus.MISSING_ATTRIBUTE, (0x00400270,)),
        ({"studies": ("",)}, NStatus.MISSING_ATTRIBUTE_VALUE, (0x0020000D,)),
    ],
)
def test_n_create_refusals(kw, status, offending):
    err = refused(lambda: created(**kw))
    assert (err.status, err.offending, err.subject) == (status, offending, STEP)


def test_n_create_of_an_existing_step_is_a_duplicate_and_a_uid_is_required():
    step = created()
    assert refused(lambda: create_step(n_create(), STEP, "CT", 11.0, step)).status == NStatus.DUPLICATE_SOP_INSTANCE
    assert refused(lambda: create_step(n_create(), "", "CT", 11.0)).status == NStatus.MISSING_ATTRIBUTE_VALUE


def test_n_set_completes_with_the_performed_series_listing_images_and_non_images():
    step = set_step(
        created(), n_set("COMPLETED", [performed("1.2.3.1", ["1.2.3.1.1", "1.2.3.1.2"], ["1.2.3.1.9"])]), STEP, 20.0
    )
    assert step.status is StepStatus.COMPLETED and step.updated_at == 20.0 and step.created_at == 10.0
    assert step.expected == {"1.2.3.1.1", "1.2.3.1.2", "1.2.3.1.9"}


@pytest.mark.parametrize("final", ["COMPLETED", "DISCONTINUED"])
def test_a_final_step_may_no_longer_be_updated(final):
    """PS3.4 F.7.2.2.3 and Table F.7.2-2: 0110H, Error ID A710H."""
    step = set_step(created(), n_set(final, [performed("1.2.3.1", ["1.2.3.1.1"])]), STEP, 20.0)
    for attempt in (
        n_set("IN PROGRESS"),
        n_set("COMPLETED", [performed("1.2.3.1", ["1.2.3.1.1", "1.2.3.1.2"])]),
        n_set(),
    ):
        err = refused(lambda a=attempt: set_step(step, a, STEP, 30.0))
        assert (err.status, err.error_id) == (NStatus.PROCESSING_FAILURE, MAY_NO_LONGER_BE_UPDATED)
        assert MAY_NO_LONGER_BE_UPDATED == 0xA710
        assert err.error_comment == "Performed Procedure Step Object may no longer be updated"


def test_n_set_of_an_unknown_step_and_an_undefined_status():
    assert refused(lambda: set_step(None, n_set("COMPLETED"), STEP, 1.0)).status == NStatus.NO_SUCH_SOP_INSTANCE
    err = refused(lambda: set_step(created(), n_set("FINISHED"), STEP, 1.0))
    assert (err.status, err.offending) == (NStatus.INVALID_ATTRIBUTE_VALUE, (0x00400252,))


def test_n_set_may_repeat_but_not_change_the_scheduled_step():
    same = set_step(created(), n_set(ScheduledStepAttributesSequence=scheduled(STUDY)), STEP, 2.0)
    assert same.study_uids == (STUDY,)
    err = refused(lambda: set_step(created(), n_set(ScheduledStepAttributesSequence=scheduled(OTHER_STUDY)), STEP, 2.0))
    assert (err.status, err.offending) == (NStatus.INVALID_ATTRIBUTE_VALUE, (0x00400270,))


def test_the_final_state_needs_a_performed_series():
    err = refused(lambda: set_step(created(), n_set("COMPLETED"), STEP, 2.0))
    assert (err.status, err.offending) == (NStatus.MISSING_ATTRIBUTE, (0x00400340,))
    bad = performed("1.2.3.1", ["1.2.3.1.1"])
    bad.SeriesInstanceUID = ""
    assert (
        refused(lambda: set_step(created(), n_set("COMPLETED", [bad]), STEP, 2.0)).status
        == NStatus.MISSING_ATTRIBUTE_VALUE
    )
    no_sop = performed("1.2.3.1")
    no_sop.ReferencedImageSequence = [Dataset()]
    assert refused(lambda: set_step(created(), n_set(series=[no_sop]), STEP, 2.0)).offending == (0x00081155,)


def test_a_sequence_in_an_n_set_replaces_the_stored_one_whole():
    step = set_step(
        created(series=[performed("1.2.3.1", ["1.2.3.1.1"])]),
        n_set(series=[performed("1.2.3.2", ["1.2.3.2.1"])]),
        STEP,
        2.0,
    )
    assert [s.series_uid for s in step.series] == ["1.2.3.2"] and step.status is StepStatus.IN_PROGRESS
    kept = set_step(step, n_set(), STEP, 3.0)
    assert kept.series == step.series


def test_discontinued_with_a_reason():
    reason = Dataset()
    reason.CodeValue, reason.CodingSchemeDesignator, reason.CodeMeaning = (
        "110514",
        "DCM",
        "Incorrect worklist entry selected",
    )
    step = set_step(
        created(),
        n_set(
            "DISCONTINUED",
            [performed("1.2.3.1", ["1.2.3.1.1"])],
            PerformedProcedureStepDiscontinuationReasonCodeSequence=[reason],
        ),
        STEP,
        5.0,
    )
    assert step.discontinued_reason == "110514 (Incorrect worklist entry selected)"


def step_of(status, *series, studies=(STUDY,), uid=STEP):
    return ProcedureStep(uid, status, studies, tuple(PerformedSeries(s, tuple(i)) for s, i in series))


def test_judge_steps():
    done = step_of(StepStatus.COMPLETED, ("1.2.3.1", ["1.2.3.1.1", "1.2.3.1.2"]), ("1.2.3.2", ["1.2.3.2.1"]))
    verdict = judge_steps([done], STUDY, {"1.2.3.1.1"})
    assert verdict.state is StepsState.MISSING and verdict.missing == {"1.2.3.1.2", "1.2.3.2.1"}
    assert verdict.missing_series == ("1.2.3.1", "1.2.3.2") and verdict.expected == 3
    assert judge_steps([done], STUDY, {"1.2.3.1.1", "1.2.3.1.2", "1.2.3.2.1", "1.2.3.1.7"}).state is StepsState.COMPLETE
    running = step_of(StepStatus.IN_PROGRESS, ("1.2.3.3", []), uid="1.2.3.99")
    assert judge_steps([done, running], STUDY, {"1.2.3.1.1", "1.2.3.1.2", "1.2.3.2.1"}).state is StepsState.IN_PROGRESS
    assert judge_steps([done], OTHER_STUDY, set()).state is StepsState.NONE  # names another study
    assert judge_steps([], STUDY, set()).state is StepsState.NONE


def test_discontinued_steps_and_steps_that_list_nothing():
    stopped = step_of(StepStatus.DISCONTINUED, ("1.2.3.1", ["1.2.3.1.1"]))
    verdict = judge_steps([stopped], STUDY, {"1.2.3.1.1"})
    assert verdict.state is StepsState.COMPLETE and verdict.discontinued
    empty = step_of(StepStatus.DISCONTINUED, ("1.2.3.1", []))
    verdict = judge_steps([empty], STUDY, set())
    assert verdict.state is StepsState.NONE and verdict.discontinued  # weaker evidence decides


def test_group_case_expects_instances_across_the_studies_it_names():
    group = step_of(StepStatus.COMPLETED, ("1.2.3.1", ["1.2.3.1.1", "1.2.3.1.5"]), studies=(STUDY, OTHER_STUDY))
    assert judge_steps([group], STUDY, {"1.2.3.1.1"}).state is StepsState.MISSING
    assert judge_steps([group], OTHER_STUDY, {"1.2.3.1.1", "1.2.3.1.5"}).state is StepsState.COMPLETE


def test_series_scope_expects_only_the_series_routed_to_us():
    done = step_of(StepStatus.COMPLETED, ("1.2.3.1", ["1.2.3.1.1"]), ("1.2.3.2", ["1.2.3.2.1"]))
    assert judge_steps([done], STUDY, {"1.2.3.1.1"}, {"1.2.3.1"}).state is StepsState.COMPLETE
    assert judge_steps([done], STUDY, {"1.2.3.1.1"}).state is StepsState.MISSING
