from __future__ import annotations

import json
from datetime import date

import pytest

from core.config import PriorsConfig
from core.errors import DependencyUnavailable
from core.priors import (
    CurrentStudy,
    PacsOutage,
    PatientIdentity,
    PriorFinder,
    PriorStatus,
    SeriesRecord,
    StudyRecord,
)
from tests.fakes import FakePacs

TODAY = date(2026, 6, 1)
JANE = PatientIdentity("P1", "", "DOE^JANE", "19600101")


def current(**kw):
    base = dict(study_uid="now", identity=JANE, study_date="20260601", modalities=("DX",), body_parts=("CHEST",))
    return CurrentStudy(**(base | kw))


def record(uid, when, who=JANE, modalities=("DX",)):
    return StudyRecord(uid, who, when, "080000", f"A-{uid}", "CHEST", modalities, 1)


def series(study, modality="DX", part="CHEST", n=1):
    return [SeriesRecord(study, f"{study}.1", modality, part, "", n)]


def pacs_with(*studies, parts=None):
    parts = parts or {}
    return FakePacs(
        studies=list(studies),
        series={s.study_uid: series(s.study_uid, s.modalities[0], parts.get(s.study_uid, "CHEST")) for s in studies},
    )


@pytest.mark.parametrize(
    ("other", "differing"),
    [
        (PatientIdentity("P1", "", "doe^jane^^", "19600101"), ()),  # case, empty components
        (PatientIdentity("P1", "", " DOE ^ JANE", ""), ()),  # a missing date is no disagreement
        (PatientIdentity("P1", "", "ROE^RICHARD", "19600101"), ("PatientName",)),
        (PatientIdentity("P1", "", "DOE^JANE", "19991231"), ("PatientBirthDate",)),
        (PatientIdentity("P1", "OTHER", "DOE^JANE", ""), ()),  # issuer only when both have one
        (PatientIdentity("P2", "", "DOE^JANE", ""), ("PatientID",)),
    ],
)
def test_identity_disagreements(other, differing):
    assert JANE.disagreements(other) == differing


def test_most_recent_same_modality_prior_is_chosen():
    pacs = pacs_with(record("old", "20220101"), record("mid", "20250101"), record("ct", "20260101", modalities=("CT",)))
    search = PriorFinder(PriorsConfig(), pacs).search(current(), TODAY)
    assert search.status is PriorStatus.FOUND and search.study.study_uid == "mid"
    assert [s.series_uid for s in search.series] == ["mid.1"]
    assert [c[0] for c in pacs.calls] == ["studies", "series"]  # one series query: no hammering


def test_another_patient_with_the_same_id_is_never_linked_but_reported():
    impostor = record("imp", "20260301", PatientIdentity("P1", "", "ROE^RICHARD", "19991231"))
    pacs = pacs_with(record("old", "20240101"), impostor)
    search = PriorFinder(PriorsConfig(), pacs).search(current(), TODAY)
    assert search.study.study_uid == "old"
    [conflict] = search.conflicts
    assert (conflict.study_uid, conflict.differing) == ("imp", ("PatientName", "PatientBirthDate"))
    assert ("series", "imp") not in pacs.calls
    only = PriorFinder(PriorsConfig(), pacs_with(impostor)).search(current(), TODAY)
    assert only.status is PriorStatus.NONE_FOUND and "another patient" in only.reason


def test_body_part_filter_and_ranking():
    pacs = pacs_with(record("abd", "20260101"), record("chest", "20250101"), parts={"abd": "ABDOMEN"})
    assert PriorFinder(PriorsConfig(), pacs).search(current(), TODAY).study.study_uid == "chest"
    loose = PriorsConfig(same_body_part=False)
    assert PriorFinder(loose, pacs).search(current(), TODAY).study.study_uid == "chest"  # full match first
    only_abd = pacs_with(record("abd", "20260101"), parts={"abd": "ABDOMEN"})
    assert PriorFinder(loose, only_abd).search(current(), TODAY).study.study_uid == "abd"
    assert PriorFinder(PriorsConfig(), only_abd).search(current(), TODAY).status is PriorStatus.NONE_FOUND


def test_window_issuer_and_the_current_study_itself_are_excluded():
    other_issuer = record("iss", "20250101", PatientIdentity("P1", "ELSEWHERE", "DOE^JANE", ""))
    pacs = pacs_with(record("now", "20260601"), record("ancient", "20100101"), other_issuer)
    me = current(identity=PatientIdentity("P1", "HOSP", "DOE^JANE", "19600101"))
    search = PriorFinder(PriorsConfig(lookback_days=3650), pacs).search(me, TODAY)
    assert search.status is PriorStatus.NONE_FOUND and search.considered == 0
    query = pacs.calls[0][1]
    assert (query.patient_id, query.issuer, query.modalities) == ("P1", "HOSP", ("DX",))
    assert (query.date_from, query.date_to) == ("20160603", "20260601")


def test_no_patient_id_means_no_query_and_a_down_pacs_raises():
    pacs = FakePacs(down=True)
    empty = current(identity=PatientIdentity(""))
    assert PriorFinder(PriorsConfig(), pacs).search(empty, TODAY).status is PriorStatus.NONE_FOUND
    assert pacs.calls == []
    with pytest.raises(DependencyUnavailable):
        PriorFinder(PriorsConfig(), pacs).search(current(), TODAY)


def test_search_json_carries_no_patient_identity():
    pacs = pacs_with(record("old", "20240101"), record("imp", "20250101", PatientIdentity("P1", "", "ROE^R", "")))
    text = json.dumps(PriorFinder(PriorsConfig(), pacs).search(current(), TODAY).to_json())
    assert "DOE" not in text and "ROE" not in text and "19600101" not in text and '"old"' in text


def test_outage_is_waited_out_once_per_outage():
    outage = PacsOutage(10.0)
    assert outage.keep_waiting(0.0) and outage.keep_waiting(9.9)
    assert not outage.keep_waiting(10.0) and not outage.keep_waiting(50.0)
    outage.succeeded()
    assert outage.keep_waiting(60.0)


# ------------------------------------------------ issue 18: priors that are truly earlier


def test_a_late_arriving_study_is_compared_with_an_older_study_not_a_newer_one():
    """Re-processed in 2026, a 2024 study must not be compared with the patient's 2025 study."""
    pacs = pacs_with(record("older", "20230101"), record("newer", "20250101"))
    late = current(study_date="20240301")
    search = PriorFinder(PriorsConfig(), pacs).search(late, TODAY)
    assert search.status is PriorStatus.FOUND and search.study.study_uid == "older"
    query = pacs.calls[0][1]
    assert query.date_to == "20240301"  # the look-back window ends at the current study, not today


def test_the_look_back_window_runs_from_the_current_study_date():
    pacs = pacs_with(record("old", "20230101"))
    late = current(study_date="20240301")
    search = PriorFinder(PriorsConfig(lookback_days=365), pacs).search(late, TODAY)
    assert search.status is PriorStatus.NONE_FOUND
    assert (pacs.calls[0][1].date_from, pacs.calls[0][1].date_to) == ("20230302", "20240301")


def test_same_day_studies_are_ordered_by_study_time():
    morning = StudyRecord("morning", JANE, "20260601", "073000", "A1", "CHEST", ("DX",), 1)
    evening = StudyRecord("evening", JANE, "20260601", "183000", "A2", "CHEST", ("DX",), 1)
    pacs = pacs_with(morning, evening)
    noon = current(study_time="120000")
    assert PriorFinder(PriorsConfig(), pacs).search(noon, TODAY).study.study_uid == "morning"
    dawn = current(study_time="060000")
    assert PriorFinder(PriorsConfig(), pacs).search(dawn, TODAY).status is PriorStatus.NONE_FOUND


def test_an_unidentified_emergency_registration_is_not_linked_on_patient_id_alone():
    """An empty name and birth date (trauma registration) leaves only the Patient ID."""
    anonymous = record("er", "20260101", PatientIdentity("P1", "", "", ""))
    search = PriorFinder(PriorsConfig(), pacs_with(anonymous)).search(current(), TODAY)
    assert search.status is PriorStatus.NONE_FOUND
    [refusal] = search.conflicts
    assert (refusal.study_uid, str(refusal.kind)) == ("er", "prior_unverified")
    assert set(refusal.differing) == {"PatientName", "PatientBirthDate"}


def test_a_different_issuer_returned_by_the_pacs_is_a_refusal_not_silence():
    elsewhere = record("iss", "20250101", PatientIdentity("P1", "ELSEWHERE", "DOE^JANE", "19600101"))
    pacs = pacs_with(elsewhere)
    pacs.match_issuer = False
    me = current(identity=PatientIdentity("P1", "HOSP", "DOE^JANE", "19600101"))
    search = PriorFinder(PriorsConfig(), pacs).search(me, TODAY)
    assert search.status is PriorStatus.NONE_FOUND
    [refusal] = search.conflicts
    assert (refusal.study_uid, str(refusal.kind), refusal.differing) == (
        "iss",
        "prior_issuer_mismatch",
        ("IssuerOfPatientID",),
    )


def test_an_issuer_the_pacs_does_not_return_is_unverified():
    no_issuer = record("noiss", "20250101", JANE)
    me = current(identity=PatientIdentity("P1", "HOSP", "DOE^JANE", "19600101"))
    search = PriorFinder(PriorsConfig(), pacs_with(no_issuer)).search(me, TODAY)
    assert search.status is PriorStatus.NONE_FOUND
    [refusal] = search.conflicts
    assert (str(refusal.kind), refusal.differing) == ("prior_unverified", ("IssuerOfPatientID",))


def test_unverified_studies_are_linked_only_when_configured_or_confirmed_by_a_reviewer():
    anonymous = record("er", "20260101", PatientIdentity("P1", "", "", ""))
    loose = PriorFinder(PriorsConfig(link_unverified=True), pacs_with(anonymous)).search(current(), TODAY)
    assert loose.status is PriorStatus.FOUND and loose.conflicts == ()
    reviewed = PriorFinder(PriorsConfig(), pacs_with(anonymous)).search(current(), TODAY, confirmed={"er"})
    assert reviewed.status is PriorStatus.FOUND and reviewed.study.study_uid == "er"


def test_a_confirmation_never_overrides_a_conflict():
    impostor = record("imp", "20260101", PatientIdentity("P1", "", "ROE^RICHARD", "19991231"))
    search = PriorFinder(PriorsConfig(link_unverified=True), pacs_with(impostor)).search(
        current(), TODAY, confirmed={"imp"}
    )
    assert search.status is PriorStatus.NONE_FOUND and str(search.conflicts[0].kind) == "prior_identity_conflict"


def test_an_unidentified_current_study_links_nothing_automatically():
    er_now = current(identity=PatientIdentity("P1", "", "", ""))
    search = PriorFinder(PriorsConfig(), pacs_with(record("old", "20250101"))).search(er_now, TODAY)
    assert search.status is PriorStatus.NONE_FOUND
    assert [str(c.kind) for c in search.conflicts] == ["prior_unverified"]
    assert "identity not verifiable (1)" in search.reason


def test_undated_studies_prove_nothing():
    pacs = pacs_with(record("undated", ""))
    assert PriorFinder(PriorsConfig(), pacs).search(current(), TODAY).status is PriorStatus.NONE_FOUND
    pacs = pacs_with(record("old", "20250101"))
    search = PriorFinder(PriorsConfig(), pacs).search(current(study_date=""), TODAY)
    assert search.status is PriorStatus.NONE_FOUND and "no valid Study Date" in search.reason
    assert pacs.calls == []  # nothing to compare with: no query


def test_closest_earlier_full_match_wins_and_refusals_are_in_the_json():
    pacs = pacs_with(
        record("far", "20220101"),
        record("near", "20260531"),
        record("er", "20260530", PatientIdentity("P1", "", "", "")),
    )
    search = PriorFinder(PriorsConfig(), pacs).search(current(), TODAY)
    assert search.study.study_uid == "near" and search.considered == 3
    [refused] = search.to_json()["conflicts"]
    assert refused["kind"] == "prior_unverified" and refused["study_uid"] == "er"


@pytest.mark.parametrize(
    ("candidate", "current_", "earlier"),
    [
        (("20250101", ""), ("20260601", ""), True),
        (("2025.01.01", ""), ("20260601", ""), True),  # ACR-NEMA style DA
        (("20260601", "07"), ("20260601", "07:30"), True),  # TM precision HH vs HH:MM
        (("20260601", "073000.5"), ("20260601", "073000.25"), False),
        (("20260601", "0730"), ("20260601", "0730"), False),  # same moment: not earlier
        (("20260602", "0000"), ("20260601", "2359"), False),
        (("20260601", ""), ("20260601", "1200"), False),
        (("2026xx01", ""), ("20260601", ""), False),
        (("20260601", "1160"), ("20260601", "12"), False),  # no 60th minute
        (("20260601", "2400"), ("20260602", "00"), True),  # a bad time matters only on the same day
        (("20260601", "1\u00b2"), ("20260601", "13"), False),  # "²" passes str.isdigit; int() raised
        (("20260601", "07"), ("20260601", "08.\u0663"), False),  # an Arabic-Indic digit in the fraction
    ],
)
def test_is_earlier(candidate, current_, earlier):
    from core.priors import is_earlier

    assert is_earlier(*candidate, *current_) is earlier
