"""The Denoiser's step scheduler as pure code: plain data in, plain data out."""

from __future__ import annotations

import pytest

from tessera.serving.step_scheduling import BatchPolicy, PendingStep, RunBatch, WaitUntil, next_batch, urgency

POLICY = BatchPolicy(max_batch_items=4, max_wait_s=0.01, aging_s=1.0)
A, B = ("shape-a",), ("shape-b",)


def step(id, key=A, priority=0, ready_at=0.0, fresh=False):
    return PendingStep(id=id, key=key, priority=priority, ready_at=ready_at, fresh=fresh)


def test_nothing_pending_is_no_decision():
    assert next_batch([], 0.0, POLICY) is None


def test_compatible_steps_of_different_jobs_share_one_forward():
    pending = [step(1), step(2, B), step(3), step(4)]
    assert next_batch(pending, 1.0, POLICY) == RunBatch((1, 3, 4))


def test_interactive_steps_go_first_when_the_batch_is_full():
    pending = [step(i, priority=-1, ready_at=0.0) for i in range(4)] + [step(10 + i, priority=0, ready_at=0.5) for i in range(3)]
    assert next_batch(pending, 0.6, POLICY) == RunBatch((10, 11, 12)), "a forward holds one class"
    mixing = BatchPolicy(max_batch_items=4, max_wait_s=0.01, aging_s=1.0, mix_classes=True)
    decision = next_batch(pending, 0.6, mixing)
    assert decision.ids[:3] == (10, 11, 12)
    assert len(decision.ids) == 4 and decision.ids[3] in range(4)


def test_the_head_decides_the_shape_so_higher_priority_work_of_another_shape_goes_first():
    pending = [step(1, A, priority=-1, ready_at=0.0), step(2, A, priority=-1, ready_at=0.0), step(3, B, priority=0, ready_at=0.1)]
    assert next_batch(pending, 0.2, POLICY) == RunBatch((3,))


def test_batch_work_goes_first_only_when_the_replica_ran_no_batch_forward_for_the_starvation_bound():
    policy = BatchPolicy(max_batch_items=4, max_wait_s=0.01, aging_s=1.0, starvation_s=5.0)
    old_batch = step(1, A, priority=-2, ready_at=0.0)
    new_interactive = step(2, B, priority=0, ready_at=4.9)
    assert urgency(old_batch, 3.0, policy) == pytest.approx(1.0)  # aging ranks within a class only
    assert next_batch([old_batch, new_interactive], 4.9, policy) == RunBatch((2,))
    assert next_batch([old_batch, new_interactive], 5.0, policy) == RunBatch((1,))  # starved: one batch forward
    # A batch forward ran at 3.0: the batch class was served, so interactive goes first again.
    assert next_batch([old_batch, new_interactive], 6.0, policy, batch_run_at=3.0) == RunBatch((2,))


def test_batch_steps_that_waited_behind_batch_forwards_do_not_pass_fresh_interactive_steps():
    """Seconds-long forwards: batch steps left out of the last (batch) forward have waited a
    whole forward; a fresh interactive step still goes first."""
    policy = BatchPolicy(max_batch_items=2, max_wait_s=0.0, aging_s=1.0, starvation_s=10.0)
    waited = [step(i, A, priority=-1, ready_at=0.0, fresh=False) for i in (1, 2, 3)]
    fresh = step(9, B, priority=0, ready_at=4.0)
    assert next_batch([*waited, fresh], 4.0, policy, batch_run_at=0.5) == RunBatch((9,))


def test_a_saturating_interactive_stream_still_lets_batch_work_through():
    """Simulate a replica that runs one forward per second, each new interactive step fresh at
    the start of that second: batch steps still run, one forward every ``starvation_s``."""
    policy = BatchPolicy(max_batch_items=1, max_wait_s=0.0, aging_s=1.0, starvation_s=3.0)
    batch_ids, interactive_id = [100, 101, 102], 0
    pending = [step(i, priority=-3, ready_at=0.0) for i in batch_ids]
    ran_batch_at, batch_run_at = [], None
    for second in range(20):
        interactive_id += 1
        pending.append(step(interactive_id, priority=0, ready_at=float(second)))
        (chosen,) = next_batch(pending, float(second), policy, batch_run_at=batch_run_at).ids
        pending = [p for p in pending if p.id != chosen]
        if chosen >= 100:
            ran_batch_at.append(second)
            batch_run_at = float(second)
    assert ran_batch_at == [3, 6, 9]  # starved 3 s: one batch forward, then interactive again


def test_capacity_from_the_memory_model_caps_the_batch():
    pending = [step(i) for i in range(6)]
    assert len(next_batch(pending, 1.0, POLICY, {A: 2}).ids) == 2
    assert len(next_batch(pending, 1.0, POLICY, {A: None}).ids) == 4
    assert len(next_batch(pending, 1.0, POLICY, {A: 0}).ids) == 1, "a window always runs, alone if need be"


def test_an_idle_replica_waits_briefly_for_company_but_work_in_flight_never_waits():
    fresh = [step(1, ready_at=1.0, fresh=True)]
    assert next_batch(fresh, 1.0, POLICY) == WaitUntil(pytest.approx(1.01))
    assert next_batch(fresh, 1.02, POLICY) == RunBatch((1,))
    in_flight = fresh + [step(2, ready_at=1.0, fresh=False)]
    assert next_batch(in_flight, 1.0, POLICY) == RunBatch((1, 2))
    full = [step(i, ready_at=1.0, fresh=True) for i in range(4)]
    assert next_batch(full, 1.0, POLICY) == RunBatch((0, 1, 2, 3)), "a full batch does not wait"


def test_equal_urgency_runs_the_oldest_first():
    pending = [step(2, ready_at=0.5), step(1, ready_at=0.2), step(3, ready_at=0.9)]
    policy = BatchPolicy(max_batch_items=2, max_wait_s=0.0, aging_s=1e9)
    assert next_batch(pending, 1.0, policy) == RunBatch((1, 2))


@pytest.mark.parametrize("kwargs, message", [
    ({"max_batch_items": 0, "max_wait_s": 0, "aging_s": 1}, "max_batch_items"),
    ({"max_batch_items": 1, "max_wait_s": -1, "aging_s": 1}, "max_wait_s"),
    ({"max_batch_items": 1, "max_wait_s": 0, "aging_s": 0}, "aging_s"),
    ({"max_batch_items": 1, "max_wait_s": 0, "aging_s": 1, "starvation_s": 0}, "starvation_s"),
])
def test_policy_is_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BatchPolicy(**kwargs)


def test_a_forward_holds_one_class_unless_classes_may_mix():
    pending = [step(1, priority=0, ready_at=0.5), step(2, priority=-1, ready_at=0.0), step(3, priority=0, ready_at=0.6)]
    assert next_batch(pending, 0.7, POLICY) == RunBatch((1, 3))
    mixing = BatchPolicy(max_batch_items=4, max_wait_s=0.01, aging_s=1.0, mix_classes=True)
    assert next_batch(pending, 0.7, mixing) == RunBatch((1, 3, 2))
    aged = [step(2, priority=-1, ready_at=0.0), step(4, priority=-2, ready_at=0.0), step(1, priority=0, ready_at=9.5)]
    assert next_batch(aged, 10.0, POLICY) == RunBatch((2, 4)), "aged batch work runs among its own class"
