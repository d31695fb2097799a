"""``posttrain eval`` on the real engine with the tiny model: a LoRA checkpoint as ``PolicyTrainer.save``
writes it, and a built-in model under a recipe's effort modes with a budget sweep; then the report."""

import json

import pytest
import torch
from transformers import AutoTokenizer

from posttrain.cli import main

pytestmark = pytest.mark.integration
SLICE = "arithmetic(max=15,ops=+-,terms=2)"
SMALL = ["--set", "engine.kv_cache_gib=0.25", "model.max_model_len=256", "model.prompt_room=96"]


def test_eval_a_lora_checkpoint_then_report_it(tmp_path, ray_local, tiny_model_path):
    from posttrain.core.policy import PolicyTrainer
    from posttrain.core.schema import LoraConfig, TrainerConfig

    trainer = PolicyTrainer(tiny_model_path, TrainerConfig(lora=LoraConfig(r=4, alpha=8), autocast="none"))
    with torch.no_grad():
        for name, param in trainer.model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.05)
    run = tmp_path / "run"
    trainer.save(str(run / "checkpoints" / "step_3"), tokenizer=AutoTokenizer.from_pretrained(tiny_model_path))
    out = tmp_path / "eval-out"
    argv = ["eval", str(run), "--suites", SLICE, "--num-problems", "4", "--output", str(out), *SMALL,
            "eval.pass_k=2", "grpo.max_tokens=16"]
    assert main(argv) == 0
    report = json.loads((out / "eval" / "eval.json").read_text())
    entry = report[f"{SLICE}/default"]
    assert entry["problems"] == 4 and 0 <= entry["accuracy"] <= 1 and "pass@2" in entry
    assert 0 < entry["mean_answer_tokens"] <= 16
    info = json.loads((out / "eval_info.json").read_text())
    assert info["checkpoint"].endswith("step_3") and info["suites"] == {SLICE: "math"}
    assert main(["report", str(out)]) == 0
    (section,) = json.loads((out / "report.json").read_text())["sections"]
    assert section["type"] == "eval" and section["scores"][0]["eval"] == entry["accuracy"]


def test_eval_a_builtin_model_under_recipe_modes_with_a_budget_sweep(tmp_path, ray_local, tiny_model_path):
    out = tmp_path / "modes"
    argv = ["eval", "tiny-random", "--recipe", "recipes/math_modes.yaml", "--suites", SLICE, "--modes", "non_think,high",
            "--num-problems", "3", "--output", str(out), "--tag", "base", *SMALL, "eval.budget_sweep=[4,16]"]
    assert main(argv) == 0
    report = json.loads((out / "eval" / "base.json").read_text())
    assert set(report) == {f"{SLICE}/non_think", f"{SLICE}/high"}
    assert report[f"{SLICE}/non_think"]["mean_thinking_tokens"] == 0
    assert 0 < report[f"{SLICE}/high"]["mean_thinking_tokens"] <= 48
    sweep = json.loads((out / "eval" / "base_budget_sweep.json").read_text())
    assert sweep["mode"] == "high" and [p["budget"] for p in sweep["points"]] == [4, 16]
    assert all(p["mean_thinking_tokens"] <= p["budget"] for p in sweep["points"])
