from __future__ import annotations

import pickle

import pytest

from core import errors

CASES = [
    errors.ConfigError("a.yaml", ["x: got 1; expected 2"]),
    errors.RejectedInput("bad", "1.2.3"),
    errors.TransientIOError("disk"),
    errors.OutOfResources("full"),
    errors.DependencyUnavailable("pacs", "refused"),
    errors.ModelError("nan"),
    errors.ModelWeightsError("missing w.pt"),
    errors.UndecodablePixels("Cannot decode Pixel Data of SOP Instance 1.2.3: truncated", "1.2.3"),
    errors.AccessDenied("alice", "override"),
    errors.LeaseLost(3, "owner"),
    errors.RecordError("JobRecord", "got schema 7; expected 1"),
    errors.MessageInvalid("PID-3: missing", "MSG1", "101", "PID^1^3"),
    errors.MessageRejected("MSH-9: got 'ORU^R01'", "MSG2", "200", "MSH^1^9"),
    errors.DimseRefused(
        "Performed Procedure Step Object may no longer be updated", "1.2.3", 0x0110, (0x00400252,), 0xA710
    ),
]


@pytest.mark.parametrize("exc", CASES, ids=lambda e: type(e).__name__)
def test_every_error_survives_a_pickle_round_trip(exc):
    """Errors cross Ray actor boundaries; Ray #50211 broke backpressure this way."""
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is type(exc)
    assert str(back) == str(exc)
    assert back.args == exc.args


def test_error_tree_groups_by_caller_action():
    assert issubclass(errors.OutOfResources, errors.TransientIOError)
    assert issubclass(errors.DependencyUnavailable, errors.TransientIOError)
    assert issubclass(errors.ModelWeightsError, errors.ModelError)
    assert issubclass(errors.UndecodablePixels, errors.ModelError)
    assert issubclass(errors.MessageRejected, errors.MessageInvalid)
    assert issubclass(errors.MessageInvalid, errors.RejectedInput)
    assert issubclass(errors.DimseRefused, errors.RejectedInput)
    assert all(issubclass(type(e), errors.PacsAIError) for e in CASES)
