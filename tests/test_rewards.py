"""Reward registry, resolution, and failure accounting."""

import sys
import time

import pytest

from rewards import (
    RewardNotFound,
    RewardResult,
    Sample,
    WeightedReward,
    as_weighted,
    resolve_reward,
    reward,
    score_locally,
)
from rewards.math import math_verify


def test_math_verify_accepts_equivalent_answers():
    assert math_verify("", "7 + 5 = 12, so the answer is 12.", answer="12") == 1.0
    assert math_verify("", "The answer is \\boxed{\\frac{1}{2}}", answer="0.5") == 1.0
    assert math_verify("", "I think it is 13", answer="12") == 0.0
    assert math_verify("", "no number here", answer="12") == 0.0


def test_duplicate_names_are_refused():
    @reward("test_dup_once")
    def first(prompt, completion, **_):
        return 1.0

    with pytest.raises(ValueError, match="already registered"):

        @reward("test_dup_once")
        def second(prompt, completion, **_):
            return 0.0


def test_resolution_by_name_and_module_path():
    assert resolve_reward("math_verify") is math_verify
    assert resolve_reward("rewards.math:math_verify") is math_verify
    with pytest.raises(RewardNotFound, match="no reward named"):
        resolve_reward("does_not_exist")
    with pytest.raises(RewardNotFound, match="cannot import"):
        resolve_reward("no_such_module:fn")


@reward("test_crashes_on_odd")
def crashes_on_odd(prompt, completion, *, index, **_):
    if index % 2:
        raise RuntimeError("plugin bug")
    return RewardResult(score=1.0, components={"ok": 1.0})


@reward("test_async_half")
async def async_half(prompt, completion, **_):
    return 0.5


def test_crashing_reward_is_counted_not_fatal_and_weights_combine():
    samples = [Sample("p", "c", {"index": i}) for i in range(4)]
    scored = score_locally([("test_crashes_on_odd", 2.0), ("test_async_half", 1.0)], samples)
    assert scored.failures == {"test_crashes_on_odd": 2, "test_async_half": 0}
    assert scored.scores == [2.5, 0.5, 2.5, 0.5]
    assert "plugin bug" in scored.errors[0]


@reward("test_sleeps_on_odd")
def sleeps_on_odd(prompt, completion, *, index, **_):
    if index % 2:
        import time

        time.sleep(60)
    return 1.0


@reward("test_async_sleeps_on_odd")
async def async_sleeps_on_odd(prompt, completion, *, index, **_):
    import asyncio

    await asyncio.sleep(60 if index % 2 else 0)
    return 1.0


@reward("test_returns_garbage")
def returns_garbage(prompt, completion, **_):
    return "not a number"


def test_slow_rewards_time_out_and_are_counted():
    samples = [Sample("p", "c", {"index": i}) for i in range(4)]
    specs = [WeightedReward("test_sleeps_on_odd", 1.0, 0.2), WeightedReward("test_async_sleeps_on_odd", 1.0, 0.2)]
    started = time.perf_counter()
    scored = score_locally(specs, samples)
    assert time.perf_counter() - started < 30  # the sleeps are 60 s: they were cut at their 0.2 s timeout
    assert scored.scores == [2.0, 0.0, 2.0, 0.0]
    assert scored.timeouts == {"test_sleeps_on_odd": 2, "test_async_sleeps_on_odd": 2}
    assert scored.failures == scored.timeouts


def test_a_reward_returning_garbage_is_a_failure_and_components_are_kept():
    samples = [Sample("p", "c", {"index": 0})]
    scored = score_locally([("test_returns_garbage", 1.0), ("test_crashes_on_odd", 1.0)], samples)
    assert scored.failures["test_returns_garbage"] == 1 and "not a number" in scored.errors[0]
    assert scored.components == {"test_crashes_on_odd/ok": [1.0]}


def test_recipe_reward_specs_carry_their_timeout():
    from posttrain.core.schema import RewardSpec

    assert as_weighted([RewardSpec(name="math_verify", timeout_s=2)]) == [WeightedReward("math_verify", 1.0, 2)]


@reward("test_stuck_in_c_on_odd")
def stuck_in_c_on_odd(prompt, completion, *, index, **_):
    if index % 2:  # blocks the alarm, as a call stuck in C code would ignore it
        import signal

        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM])
        time.sleep(120)
    return 1.0


def test_a_call_stuck_in_c_is_killed_and_the_rest_of_its_batch_scored():
    from rewards import score_batch

    samples = [Sample("p", "c", {"index": i}) for i in (0, 2, 1)]
    specs = [WeightedReward("test_stuck_in_c_on_odd", 1.0, 0.5), WeightedReward("test_sleeps_on_odd", 1.0, 0.5)]
    started = time.perf_counter()
    scored = score_batch(specs, samples, grace_s=1.0)
    assert time.perf_counter() - started < 20
    assert scored.scores == [2.0, 2.0, 0.0]
    assert scored.timeouts == {"test_stuck_in_c_on_odd": 1, "test_sleeps_on_odd": 1}
    assert "worker killed" in scored.errors[0]


_IN_FLIGHT = [0]  # this worker's async_slow calls awaiting at once


@reward("test_async_slow")
async def async_slow(prompt, completion, **_):
    import asyncio

    _IN_FLIGHT[0] += 1
    await asyncio.sleep(0.5)
    overlapping = _IN_FLIGHT[0]  # the calls still in flight when this one wakes: itself and its peers
    _IN_FLIGHT[0] -= 1
    return RewardResult(score=1.0, components={"overlapping": float(overlapping)})


def test_async_rewards_run_concurrently_inside_the_workers():
    """Counted, not timed: an async reward's calls in one worker await together (sequential calls see 1)."""
    samples = [Sample("p", "c", {"index": i}) for i in range(16)]
    scored = score_locally([("test_async_slow", 1.0)], samples)
    assert scored.scores == [1.0] * 16
    overlapping = next(values for key, values in scored.components.items() if key.endswith("overlapping"))
    assert max(overlapping) > 1


@reward("test_exits_on_odd")
def exits_on_odd(prompt, completion, *, index, **_):
    if index % 2:
        import os

        os._exit(1)
    return 1.0


def test_workers_live_across_batches_and_a_dead_one_is_replaced():
    from rewards.pool import shared_pool

    samples = [Sample("p", "c", {"index": i}) for i in range(8)]
    score_locally([("test_async_half", 1.0)], samples)
    pool = shared_pool()
    before = pool.pids()
    score_locally([("test_async_half", 1.0)], samples)
    assert pool.pids() == before  # long-lived: warm imports, no start-up per batch
    scored = score_locally([("test_exits_on_odd", 1.0)], samples)
    assert scored.scores == [1.0, 0.0] * 4 and scored.reasons["test_exits_on_odd"] == {"crashed": 4}
    assert "exit code 1" in scored.errors[0]
    assert len(pool.pids()) == pool.size and len(set(pool.pids()) - set(before)) >= 1
    assert score_locally([("test_async_half", 1.0)], samples).scores == [0.5] * 8


def test_functions_that_are_not_importable_travel_by_value_or_fail_as_unloadable():
    import types

    samples = [Sample("p", "abc", {})]
    anonymous = lambda prompt, completion, **_: len(completion)  # noqa: E731 - the point: no importable name
    scored = score_locally([("anonymous", 1.0)], samples, fns={"anonymous": anonymous})
    assert scored.scores == [3.0]
    module = types.ModuleType("test_rewards_only_in_this_process")  # importable here, nowhere else
    exec("def fn(prompt, completion, **_):\n    return 1.0\n", module.__dict__)
    sys.modules[module.__name__] = module
    try:
        scored = score_locally([("fn", 1.0)], samples, fns={"fn": module.fn})
    finally:
        del sys.modules[module.__name__]
    assert scored.reasons["fn"] == {"unloadable": 1} and "No module named" in scored.errors[0]


def test_no_rewards_still_give_a_score_per_sample():
    assert score_locally([], [Sample("p", "c", {})] * 3).scores == [0.0, 0.0, 0.0]


def test_the_rest_of_a_dead_workers_job_is_scored_elsewhere(monkeypatch):
    import rewards.pool

    pool = rewards.pool.WorkerPool(1)  # one worker: jobs of two calls, the crashing one first in its job
    monkeypatch.setattr(rewards.pool, "_POOL", pool)
    try:
        samples = [Sample("p", "c", {"index": i}) for i in (1, 0, 3, 2)]
        scored = score_locally([("test_exits_on_odd", 1.0), ("test_sleeps_on_odd", 1.0, 0.3)], samples, grace_s=0.5)
        assert scored.per_reward == {"test_exits_on_odd": [0.0, 1.0] * 2, "test_sleeps_on_odd": [0.0, 1.0] * 2}
        assert scored.reasons == {"test_exits_on_odd": {"crashed": 2}, "test_sleeps_on_odd": {"timeout": 2}}
    finally:
        pool.close()
