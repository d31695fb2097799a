"""Length shaping: DAPO's soft overlong punishment and the L1-style target-length penalty."""

import pytest
import torch

from posttrain.core.schema import EffortMode
from rollout.engine import Completion
from specialists.shaping import length_penalties_B, mode_metrics, overlong_penalty_B, target_length_penalty_B


def test_overlong_is_zero_before_the_buffer_then_linear_to_the_penalty():
    lengths_B = torch.tensor([0, 60, 64, 72, 80, 100])
    penalty_B = overlong_penalty_B(lengths_B, 80, torch.full((6,), 16), 0.5)
    assert penalty_B.tolist() == pytest.approx([0, 0, 0, -0.25, -0.5, -0.5])


def test_overlong_with_zero_buffer_is_off():
    assert overlong_penalty_B(torch.tensor([80, 81]), 80, torch.tensor([0, 0]), 1.0).tolist() == [0, 0]


def test_target_length_penalises_both_sides():
    penalty_B = target_length_penalty_B(torch.tensor([50, 100, 150]), 100, 0.01)
    assert penalty_B.tolist() == pytest.approx([-0.5, 0.0, -0.5])


def test_each_sample_uses_its_own_modes_parameters():
    short = EffortMode(max_tokens=64, overlong_buffer=16, overlong_penalty=1.0)
    long = EffortMode(thinking=True, thinking_budget=64, max_tokens=128, target_length=100, length_coef=0.01)
    penalty_B = length_penalties_B(torch.tensor([64, 64, 120]), [short, long, long])
    assert penalty_B.tolist() == pytest.approx([-1.0, -0.36, -0.2])


def test_mode_metrics_are_per_mode_means():
    completions = [
        Completion(0, [1, 2, 3], [0.0] * 3, "abc", False),
        Completion(1, [1, 2, 3, 4, 5, 6], [0.0] * 6, "t</think>a", False, thinking_tokens=3, forced_close=True,
                   loss_mask=[1, 1, 1, 0, 1, 1]),
    ]
    metrics = mode_metrics(["plain", "think"], completions, torch.tensor([1.0, 0.0]), torch.tensor([0.0, -0.5]))
    assert metrics["mode/plain/thinking_tokens"] == 0 and metrics["mode/plain/answer_tokens"] == 3
    assert metrics["mode/think/thinking_tokens"] == 3 and metrics["mode/think/answer_tokens"] == 2
    assert metrics["mode/think/reward"] == -0.5 and metrics["mode/think/forced_close_share"] == 1.0
