from __future__ import annotations

import pytest

from core.config import RetryConfig
from core.ledger import NEXT_STATES, RetryPolicy, can_transition, instance_state
from core.types import InstanceState, JobState


def test_happy_path_is_allowed_in_order():
    path = [
        JobState.RECEIVING,
        JobState.COMPLETE,
        JobState.VALIDATED,
        JobState.ROUTED,
        JobState.LINKED,
        JobState.INFERRED,
        JobState.WRITTEN,
        JobState.DELIVERED,
    ]
    for a, b in zip(path, path[1:], strict=False):
        assert can_transition(a, b), (a, b)


@pytest.mark.parametrize("state", [s for s in JobState if not s.is_terminal])
def test_dead_is_reachable_from_every_working_state(state):
    assert can_transition(state, JobState.DEAD)


@pytest.mark.parametrize("state", [JobState.DELIVERED, JobState.SKIPPED, JobState.DEAD])
def test_terminal_states_go_nowhere(state):
    assert not any(can_transition(state, s) for s in JobState)


def test_no_skipping_stages():
    assert not can_transition(JobState.COMPLETE, JobState.INFERRED)
    assert not can_transition(JobState.RECEIVING, JobState.VALIDATED)
    assert set(NEXT_STATES) == set(JobState)


def test_instance_state_follows_job_unless_set_aside():
    assert instance_state(JobState.DELIVERED, None) is InstanceState.REPORTED
    assert instance_state(JobState.SKIPPED, None) is InstanceState.SKIPPED
    assert instance_state(JobState.DEAD, None) is InstanceState.DEAD
    assert instance_state(JobState.QUARANTINED, None) is InstanceState.QUARANTINED
    assert instance_state(JobState.INFERRED, None) is InstanceState.PENDING
    assert instance_state(JobState.DELIVERED, "quarantined") is InstanceState.QUARANTINED
    assert instance_state(JobState.DELIVERED, "skipped") is InstanceState.SKIPPED


def test_backoff_grows_exponentially_to_the_cap():
    policy = RetryPolicy.from_config(RetryConfig(base_delay_s=0.5, multiplier=3, max_delay_s=10))
    assert [policy.delay_after(n) for n in (1, 2, 3, 4)] == [0.5, 1.5, 4.5, 10.0]


def test_retry_budget():
    policy = RetryPolicy.from_config(RetryConfig(max_attempts=3))
    assert not policy.is_exhausted(2)
    assert policy.is_exhausted(3)


def test_unavailable_wait_grows_gently_and_is_capped():
    policy = RetryPolicy.from_config(RetryConfig(unavailable_delay_s=2.0, max_delay_s=5.0))
    waits = [policy.unavailable_delay(n) for n in range(1, 6)]
    assert waits[0] == 2.0
    assert waits == sorted(waits)
    assert waits[-1] == 5.0
