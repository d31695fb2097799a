"""What a user reads per step: ``step i/N`` with an ETA, and a warning when no group carries signal."""

import logging

import torch

from posttrain.core.resume import format_duration, run_steps
from posttrain.core.rundir import RunDir
from specialists.loop import warn_without_signal, zero_variance_share


def test_zero_variance_share_counts_groups_whose_samples_all_scored_the_same():
    rewards_P_G = torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.5, 0.5, 0.4]])
    assert zero_variance_share(rewards_P_G) == 0.5


def test_a_step_without_any_signal_warns_once(caplog):
    with caplog.at_level(logging.WARNING, logger="posttrain.grpo"):
        warn_without_signal(3, torch.tensor([[1.0, 0.0], [1.0, 1.0]]))  # one group differs: signal
        assert not caplog.records
        warn_without_signal(4, torch.zeros(2, 4))
        warn_without_signal(5, torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
    first, second = (record.getMessage() for record in caplog.records)
    assert "step 4: all 2 groups have zero reward variance" in first and "scored 0" in first
    assert "step 5" in second and "scored the same" in second


def test_format_duration():
    assert [format_duration(s) for s in (0, 44.6, 200, 7500)] == ["0s", "45s", "3m20s", "2h05m"]


def test_step_lines_say_step_i_of_n_with_an_eta(tmp_path, caplog):
    run = RunDir(tmp_path, "run")
    with caplog.at_level(logging.INFO, logger="posttrain"):
        run_steps("GRPO", run, 1, 3, lambda step: {"x": float(step)}, lambda step, m: f"x {m['x']:.0f}", 0, lambda s: "")
    run.close()
    lines = [r.getMessage() for r in caplog.records if "GRPO step" in r.getMessage()]
    assert lines[0].startswith("GRPO step 2/3 (eta ") and lines[0].endswith("): x 1")
    assert lines[1] == "GRPO step 3/3 (eta 0s): x 2"
