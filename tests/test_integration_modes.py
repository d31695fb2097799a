"""A multi-mode recipe end to end through the CLI on the real engine (tiny model): per-mode
metrics, per-mode eval with thinking/answer tokens, and the budget sweep's JSON and plot."""

import json
from pathlib import Path

import pytest

from posttrain.cli import main

pytestmark = pytest.mark.integration
MATH_MODES = Path(__file__).resolve().parents[1] / "recipes" / "math_modes.yaml"


def test_math_modes_recipe_trains_and_evaluates_per_mode(tmp_path, ray_local, tiny_model_path):
    overrides = [
        "model.path=tiny-random",
        f"run.output_dir={tmp_path}",
        "run.name=modes",
        "grpo.steps=2",
        "grpo.prompts_per_step=4",
        "grpo.samples_per_prompt=2",
        "eval.num_problems=4",
        "eval.budget_sweep=[4, 16]",
        "engine.kv_cache_gib=0.25",
    ]
    assert main(["run", str(MATH_MODES), *overrides]) == 0
    run = tmp_path / "modes"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for mode in ("non_think", "high"):
        assert {f"mode/{mode}/{key}" for key in ("reward", "length", "thinking_tokens", "shaping_penalty")} <= set(rows[0])
    assert rows[0]["mode/non_think/thinking_tokens"] == 0 < rows[0]["mode/high/thinking_tokens"] <= 48
    report = json.loads((run / "eval" / "after.json").read_text())
    assert {entry["mode"] for entry in report.values()} == {"non_think", "high"}
    high = next(entry for entry in report.values() if entry["mode"] == "high")
    assert 0 < high["mean_thinking_tokens"] <= 48 and high["mean_answer_tokens"] >= 1
    sweep = json.loads((run / "eval" / "after_budget_sweep.json").read_text())
    assert [point["budget"] for point in sweep["points"]] == [4, 16] and sweep["mode"] == "high"
    assert all(point["mean_thinking_tokens"] <= point["budget"] for point in sweep["points"])
    assert (run / "eval" / "budget_sweep.png").stat().st_size > 0
    modes_logged = {json.loads(line)["mode"] for line in (run / "samples.jsonl").read_text().splitlines()}
    assert modes_logged == {"non_think", "high"}
