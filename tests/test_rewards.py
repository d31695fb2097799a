"""Reward registry, resolution, and failure accounting."""

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
    assert time.perf_counter() - started < 5
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


@pytest.mark.integration
def test_ray_scoring_cancels_a_chunk_stuck_past_its_timeouts(ray_local):
    from rewards import score_batch

    samples = [Sample("p", "c", {"index": i}) for i in (0, 2, 1)]  # chunks: [0, 2] and [1]
    specs = [WeightedReward("test_stuck_in_c_on_odd", 1.0, 0.5), WeightedReward("test_sleeps_on_odd", 1.0, 0.5)]
    started = time.perf_counter()
    scored = score_batch(specs, samples, chunks=2, grace_s=2.0)
    assert time.perf_counter() - started < 20
    assert scored.scores == [2.0, 2.0, 0.0]
    assert scored.timeouts == {"test_stuck_in_c_on_odd": 1, "test_sleeps_on_odd": 1}
