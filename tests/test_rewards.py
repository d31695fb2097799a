"""Reward registry, resolution, and failure accounting."""

import pytest

from rewards import RewardNotFound, RewardResult, Sample, resolve_reward, reward, score_locally
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
