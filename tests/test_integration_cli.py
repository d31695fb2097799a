"""The README's entry point, end to end on the real engine with the tiny model."""

import json
from pathlib import Path

import pytest

from posttrain.cli import main

pytestmark = pytest.mark.integration
QUICKSTART = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml"


def test_posttrain_run_writes_a_complete_run_directory(tmp_path, ray_local, tiny_model_path):
    overrides = [
        "model.path=tiny-random",
        f"run.output_dir={tmp_path}",
        "run.name=e2e",
        "grpo.steps=2",
        "grpo.prompts_per_step=2",
        "grpo.samples_per_prompt=4",
        "grpo.max_tokens=16",
        "grpo.checkpoint_every=1",
        "grpo.kl_coef=0.01",
        "grpo.minibatches=2",
        "eval.num_problems=4",
        "eval.pass_k=2",
        "eval.every=1",
        "engine.kv_cache_gib=0.25",
    ]
    assert main(["run", str(QUICKSTART), *overrides]) == 0
    run = tmp_path / "e2e"
    assert "steps: 2" in (run / "recipe.yaml").read_text()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [0, 1]
    for phase in ("generate", "reward", "logprobs", "update", "weight_sync"):
        assert rows[0][f"time/{phase}"] >= 0
    assert {"reward/mean", "reward/std", "response/length_mean", "response/truncated_share", "loss/kl"} <= set(rows[0])
    assert rows[0]["memory/trainer_peak_gib"] > 0
    assert list((run / "tb").glob("events.out.tfevents.*"))
    assert (run / "samples.jsonl").read_text().strip()
    for tag in ("before", "after"):
        report = json.loads((run / "eval" / f"{tag}.json").read_text())
        suite = next(iter(report.values()))
        assert suite["problems"] == 4 and 0 <= suite["accuracy"] <= 1 and "pass@2" in suite
    for step in (1, 2):
        assert (run / "checkpoints" / f"step_{step}" / "adapter_model.safetensors").exists()  # quickstart is LoRA
    assert {"reward/zero_variance_groups", "optim/lr", "reward_raw/math_verify"} <= set(rows[0])
    assert (run / "eval" / "step_1.json").exists() and "time/eval" in rows[1]  # eval.every=1; step 2's is "after"
    section = json.loads((run / "report.json").read_text())["sections"][0]
    assert [step for step, _ in next(iter(section["eval_curve"].values()))] == [0, 1, 2]
    assert main(["export", str(run), "--out", str(tmp_path / "exported")]) == 0
    assert (tmp_path / "exported" / "config.json").exists() and (tmp_path / "exported" / "chat_template.jinja").exists()


def test_malformed_recipe_fails_before_any_work(tmp_path, capsys):
    assert main(["run", str(QUICKSTART), "grpo.samples_per_prompt=1", f"run.output_dir={tmp_path}"]) == 2
    assert "grpo.samples_per_prompt" in capsys.readouterr().err
    assert not any(tmp_path.iterdir()), "a bad recipe must not create a run directory"
