"""Red-team reward plugins: each misbehaves on sample 1 of a three-sample batch.

Beside every one runs a healthy reward whose scores (and components) must come
back exactly; the bad plugin's samples 0 and 2 must keep their score too. What
the bad plugin costs is its own sample 1: scored 0, counted as failures with a
reason, and a bounded line in the log. Timeouts are small so the file runs in
seconds; the worker pool is shared by the whole test session.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import sys
import time

import pytest

from rewards import RewardResult, Sample, WeightedReward, reward, score_batch, score_locally

TIMEOUT_S = 0.3  # for the plugins that hang; the others get SLACK_S, so a loaded machine cannot time them out
SLACK_S = 5.0
GRACE_S = 0.5
HUGE = 50 * 1024 * 1024
HEALTHY = [0.5 + index / 8 for index in range(3)]  # sample 1 is the one the bad plugins misbehave on


@reward("redteam_healthy")
def healthy(prompt, completion, *, index, **_):
    return RewardResult(0.5 + index / 8, components={"index": float(index)})


@reward("redteam_sys_exit")
def calls_sys_exit(prompt, completion, *, index, **_):
    if index % 2:
        sys.exit(3)
    return 0.25


@reward("redteam_os_exit")
def calls_os_exit(prompt, completion, *, index, **_):
    if index % 2:
        os._exit(7)
    return 0.25


@reward("redteam_keyboard_interrupt")
def raises_keyboard_interrupt(prompt, completion, *, index, **_):
    if index % 2:
        raise KeyboardInterrupt
    return 0.25


@reward("redteam_segfault")
def segfaults(prompt, completion, *, index, **_):
    if index % 2:
        ctypes.string_at(0)  # reads address 0: SIGSEGV, the interpreter dies
    return 0.25


@reward("redteam_swallows_timeout_python")
def swallows_timeout_in_python(prompt, completion, *, index, **_):
    if index % 2:
        while True:  # catches whatever interrupts it, then keeps spinning
            try:
                while True:
                    pass
            except BaseException:  # noqa: BLE001, S110 - the point of the test
                pass
    return 0.25


@reward("redteam_swallows_timeout_in_c")
def swallows_timeout_in_c(prompt, completion, *, index, **_):
    if index % 2:
        try:
            time.sleep(30)
        except BaseException:  # noqa: BLE001 - swallows the timeout, then blocks in C
            time.sleep(30)
    return 0.25


@reward("redteam_async_blocks_loop")
async def async_blocks_its_loop(prompt, completion, *, index, **_):
    await asyncio.sleep(0.01)
    if index % 2:
        try:
            time.sleep(30)  # a blocking call inside `async def`: no await, wait_for cannot fire
        except BaseException:  # noqa: BLE001
            time.sleep(30)
    return 0.25


@reward("redteam_nan")
def returns_nan(prompt, completion, *, index, **_):
    return float("nan") if index % 2 else 0.25


@reward("redteam_inf")
def returns_inf(prompt, completion, *, index, **_):
    return RewardResult(float("-inf")) if index % 2 else RewardResult(0.25)


@reward("redteam_string")
def returns_string(prompt, completion, *, index, **_):
    return "1.0" if index % 2 else 0.25  # float("1.0") would accept it: a string is not a score


@reward("redteam_none")
def returns_none(prompt, completion, *, index, **_):
    return None if index % 2 else 0.25


@reward("redteam_huge_error")
def raises_huge_error(prompt, completion, *, index, **_):
    if index % 2:
        raise ValueError("x" * HUGE)
    return 0.25


CASES = [
    ("redteam_sys_exit", "exit"),
    ("redteam_os_exit", "crashed"),
    ("redteam_keyboard_interrupt", "interrupt"),
    ("redteam_segfault", "crashed"),
    ("redteam_swallows_timeout_python", "timeout"),
    ("redteam_swallows_timeout_in_c", "timeout"),
    ("redteam_async_blocks_loop", "timeout"),
    ("redteam_nan", "non_finite"),
    ("redteam_inf", "non_finite"),
    ("redteam_string", "not_a_number"),
    ("redteam_none", "not_a_number"),
    ("redteam_huge_error", "raised"),
]


def _samples() -> list[Sample]:
    return [Sample("p", "c", {"index": index}) for index in range(3)]


def _specs(bad: str, timeout_s: float = SLACK_S) -> list[WeightedReward]:
    return [WeightedReward(bad, 1.0, timeout_s), WeightedReward("redteam_healthy", 2.0, SLACK_S)]


@pytest.fixture(scope="module", autouse=True)
def warm_pool():
    """Start the shared pool before any case is timed: its one-time start imports torch (via ``rewards``)."""
    score_batch([("redteam_healthy", 1.0)], _samples())


@pytest.mark.parametrize(("bad", "reason"), CASES, ids=[name.removeprefix("redteam_") for name, _ in CASES])
def test_a_misbehaving_plugin_costs_only_its_own_samples(bad, reason, caplog):
    caplog.set_level(logging.WARNING, logger="rewards")
    started = time.perf_counter()
    scored = score_batch(_specs(bad, TIMEOUT_S if reason == "timeout" else SLACK_S), _samples(), grace_s=GRACE_S)
    assert time.perf_counter() - started < 10
    assert scored.per_reward["redteam_healthy"] == HEALTHY
    assert scored.components == {"redteam_healthy/index": [0.0, 1.0, 2.0]}
    assert scored.per_reward[bad] == [0.25, 0.0, 0.25]
    assert scored.scores == [bad_score + 2 * good for bad_score, good in zip([0.25, 0.0, 0.25], HEALTHY)]
    assert scored.failures == {bad: 1, "redteam_healthy": 0}
    assert scored.timeouts == {bad: 1 if reason == "timeout" else 0, "redteam_healthy": 0}
    lines = [record.getMessage() for record in caplog.records]
    assert lines and all(len(line) < 20_000 for line in lines)
    assert all(len(error) < 10_000 for error in scored.errors)
    assert scored.reasons == {bad: {reason: 1}, "redteam_healthy": {}}


def test_a_huge_error_message_is_truncated_with_its_size(caplog):
    scored = score_batch(_specs("redteam_huge_error"), _samples()[:2], grace_s=GRACE_S)
    assert "ValueError" in scored.errors[0] and f"{HUGE:,}" in scored.errors[0]
    assert "truncated" in scored.errors[0]


def test_score_locally_survives_exit_and_hangs_in_the_caller():
    specs = [WeightedReward("redteam_sys_exit", 1.0, TIMEOUT_S),
             WeightedReward("redteam_swallows_timeout_in_c", 1.0, TIMEOUT_S),
             WeightedReward("redteam_healthy", 1.0, SLACK_S)]
    scored = score_locally(specs, _samples())
    assert scored.per_reward["redteam_healthy"] == HEALTHY
    assert scored.failures == {"redteam_sys_exit": 1, "redteam_swallows_timeout_in_c": 1, "redteam_healthy": 0}
