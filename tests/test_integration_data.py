"""Your data end to end (issue 17's done test), on SmolLM2-135M with the real engine and trainer:
2 GRPO steps from a user-shaped jsonl (its own column names, an extra column a test reward reads from
its keyword arguments, another column it never sees) and a parquet file, then ``posttrain eval
--dataset`` on a third file (csv) scored by the domain's scorer's reward and the test reward."""

import json

import pandas as pd
import pytest
import yaml

from posttrain.cli import main

pytestmark = pytest.mark.integration
REWARD = "tests.data_reward:bonus_if_correct"


def write_files(root):
    rows = [{"problem": f"What is {a} + {b}?", "solution": a + b, "bonus": 0.5, "topic": "addition"}
            for a in range(1, 9) for b in range(1, 5)]
    (root / "mine.jsonl").write_text("\n".join(json.dumps(row) for row in rows))
    pd.DataFrame([{"q": f"What is {a} - {b}?", "solution": a - b, "bonus": 0.5} for a in range(5, 15) for b in range(1, 4)]
                 ).to_parquet(root / "more.parquet")
    pd.DataFrame([{"question": f"What is {a} + {a}?", "gold": 2 * a, "bonus": 1.0} for a in range(20, 26)]
                 ).to_csv(root / "heldout.csv", index=False)


def test_train_on_your_files_then_eval_on_another(tmp_path, ray_local, smollm2_path):
    write_files(tmp_path)
    recipe = {
        "run": {"output_dir": str(tmp_path / "runs"), "name": "mine"},
        "model": {"path": smollm2_path, "max_model_len": 256, "prompt_room": 96},
        "engine": {"kv_cache_gib": 0.25},
        "trainer": {"lr": 1.0e-4, "micro_batch_size": 4, "lora": {"r": 4, "alpha": 8}},
        "task": {"domain": "math", "rewards": [{"name": REWARD}], "sources": [
            {"kind": "dataset", "path": str(tmp_path / "mine.jsonl"), "prompt": "problem", "columns": {"answer": "solution"}},
            {"kind": "dataset", "path": str(tmp_path / "more.parquet"), "prompt": "q", "columns": {"answer": "solution"},
             "system": "You are a careful calculator."},
        ]},
        "grpo": {"steps": 2, "prompts_per_step": 2, "samples_per_prompt": 2, "max_tokens": 16},
        "eval": {"before": False, "after": False},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["check", str(path)]) == 0
    assert main(["run", str(path)]) == 0
    run = tmp_path / "runs" / "mine"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [0, 1]
    assert all(row[f"reward/{REWARD}/bonus"] == pytest.approx(0.5) for row in rows)  # the column reached it
    assert all(row["reward_failures/" + REWARD] == 0 for row in rows if "reward_failures/" + REWARD in row)

    out = tmp_path / "eval-out"
    argv = ["eval", str(run), "--dataset", str(tmp_path / "heldout.csv"), "--domain", "math",
            "--prompt-column", "question", "--column", "answer=gold", "--reward", "math_verify", "--reward", REWARD,
            "--output", str(out), "--set", "engine.kv_cache_gib=0.25", "model.max_model_len=256",
            "model.prompt_room=96", "eval.pass_k=1", "grpo.max_tokens=16"]
    assert main(argv) == 0
    report = json.loads((out / "eval" / "eval.json").read_text())
    entry = report["dataset(heldout)/default"]
    assert entry["problems"] == 6
    assert entry[f"reward/{REWARD}"] >= 0.1 - 1e-9  # bonus 1.0 on every row: at least 0.1 each
    assert 0 <= entry["reward/math_verify"] <= 1
