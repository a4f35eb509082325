"""The predictor turns DICOM bytes into a Prediction with every configured finding."""

from __future__ import annotations

from io import BytesIO

import numpy as np
import pytest
import torch

from core.codec import dump_record, load_record
from core.config import ModelEntry
from core.errors import ModelError
from core.findings import term_for
from core.records import InferenceRequest, ModelOutput, Prediction
from models.predictor import ChestXrayPredictor
from synthetic.phantoms import CXR_FINDINGS
from synthetic.synthetic_dicom import make_cxr_study


def _request(n_images: int = 1, family: str = "chest_xray") -> InferenceRequest:
    instances = []
    for ds in make_cxr_study(3, frozenset({"effusion"}), n_images=n_images, size=96):
        buffer = BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        instances.append((str(ds.SOPInstanceUID), buffer.getvalue()))
    return InferenceRequest(study_uid="1.2.3", family=family, instances=tuple(instances), job_id=1)


@pytest.fixture(scope="module")
def predictor(untrained_entry: ModelEntry) -> ChestXrayPredictor:
    return ChestXrayPredictor.load(untrained_entry)


def test_predict_returns_every_finding_as_a_probability(
    predictor: ChestXrayPredictor, untrained_entry: ModelEntry
) -> None:
    request = _request()
    output = predictor.predict(request)
    prediction = output.prediction
    assert isinstance(output, ModelOutput) and isinstance(prediction, Prediction)
    assert [f.key for f in prediction.findings] == list(CXR_FINDINGS)
    assert all(0.0 <= f.probability <= 1.0 for f in prediction.findings)
    assert prediction.source_uids == (request.instances[0][0],)
    assert (prediction.model_name, prediction.model_version) == ("cxr-unit", "0.0-test")
    assert prediction.demo is True and prediction.family == "chest_xray"
    tension = prediction.findings[-1]
    assert tension.critical and tension.term == term_for("tension_pneumothorax")
    assert load_record(Prediction, dump_record(prediction)) == prediction


def test_several_images_combine_by_maximum(predictor: ChestXrayPredictor) -> None:
    request = _request(n_images=3)
    batch, uids = predictor.preprocess(request)
    assert batch.shape == (3, 1, 64, 64) and batch.dtype == np.float32
    probs = predictor.forward(batch)
    prediction = predictor.to_prediction(probs, uids)
    assert [f.probability for f in prediction.findings] == pytest.approx(probs.max(axis=0))
    finished = predictor.finish(predictor.prepare(request), probs).prediction
    [effusion] = [f for f in finished.findings if f.key == "effusion"]
    assert effusion.evidence is not None
    assert effusion.evidence.sop_instance_uid == uids[int(probs[:, CXR_FINDINGS.index("effusion")].argmax())]


def test_bad_instance_is_named_in_the_model_error(predictor: ChestXrayPredictor) -> None:
    good = _request().instances[0]
    request = InferenceRequest("1.2.3", "chest_xray", (good, ("9.9.9", b"garbage")))
    with pytest.raises(ModelError, match=r"SOP Instance 9\.9\.9"):
        predictor.predict(request)


@pytest.mark.parametrize(
    ("request_", "match"),
    [
        (InferenceRequest("1.2.3", "chest_xray", ()), "no instances"),
        (InferenceRequest("1.2.3", "head_ct", (("1", b""),)), 'expected "chest_xray"'),
    ],
)
def test_unusable_requests_are_model_errors(
    predictor: ChestXrayPredictor, request_: InferenceRequest, match: str
) -> None:
    with pytest.raises(ModelError, match=match):
        predictor.predict(request_)


def test_forward_checks_the_batch_shape(predictor: ChestXrayPredictor) -> None:
    with pytest.raises(ModelError, match="expected"):
        predictor.forward(np.zeros((1, 1, 32, 32), dtype=np.float32))
    with pytest.raises(ModelError, match="expected"):
        predictor.to_prediction(np.zeros((2, 19)), ("only-one",))


class _NaNNetwork(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0], len(CXR_FINDINGS)), float("nan"))


def test_self_test_passes_and_catches_a_broken_network(
    predictor: ChestXrayPredictor, untrained_entry: ModelEntry
) -> None:
    predictor.self_test()
    with pytest.raises(ModelError, match="Self-test"):
        ChestXrayPredictor(untrained_entry, _NaNNetwork()).self_test()
