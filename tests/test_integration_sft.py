"""SFT then GRPO in one run (tiny model, real engine and trainer): SFT's run directory, the merged model
GRPO starts from, SFT's evals carried over as GRPO's "before", and the budget sweep of all three."""

import json
from pathlib import Path

import pytest

from posttrain.cli import main

pytestmark = pytest.mark.integration
RECIPE = Path(__file__).resolve().parent / "recipes" / "tiny_sft_grpo.yaml"


def test_sft_then_grpo_in_one_run_tree(tmp_path, ray_local, tiny_model_path):
    assert main(["run", str(RECIPE), f"run.output_dir={tmp_path}", "run.name=chain", "eval.every=1"]) == 0
    run = tmp_path / "chain"
    sft_rows = [json.loads(line) for line in (run / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in sft_rows] == [0, 1] and all(row["loss/nll"] > 0 for row in sft_rows)
    assert "time/eval" in sft_rows[1] and (run / "sft" / "eval" / "step_1.json").exists()  # eval.every=1 in SFT too
    assert (run / "sft" / "checkpoints" / "step_2" / "adapter_model.safetensors").exists()
    assert (run / "sft" / "model" / "config.json").exists()  # LoRA merged: what GRPO starts from
    adapter = json.loads((run / "checkpoints" / "step_2" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str((run / "sft" / "model").resolve())
    grpo_rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in grpo_rows] == [0, 1]
    for tag, sft_tag in (("base", "before"), ("before", "after")):
        assert (run / "eval" / f"{tag}.json").read_text() == (run / "sft" / "eval" / f"{sft_tag}.json").read_text()
    sweeps = sorted(p.name for p in (run / "eval").glob("*_budget_sweep.json"))
    assert {"after_budget_sweep.json", "base_budget_sweep.json", "before_budget_sweep.json"} <= set(sweeps)
    modes = {json.loads(line)["mode"] for line in (run / "sft" / "samples.jsonl").read_text().splitlines()}
    assert modes <= {"non_think", "max"}
