"""On-policy distillation end to end on the real engine: the student samples with vLLM, two
teachers (an adapter and a full model) score its tokens, and the student moves toward them."""

import json

import pytest
import yaml

from posttrain.demo import make_teacher
from posttrain.cli import main
from posttrain.core.schema import Recipe

pytestmark = pytest.mark.integration
ARITHMETIC = {"kind": "arithmetic", "max_operand": 9, "count": 200}


def test_student_moves_toward_its_teachers(tmp_path, ray_local, tiny_model_path):
    recipe = {
        "run": {"name": "opd", "output_dir": str(tmp_path / "runs")},
        "model": {"path": "tiny-random", "max_model_len": 256},
        "engine": {"kv_cache_gib": 0.25},
        "trainer": {"lr": 2.0e-3, "micro_batch_size": 16},
        "distill": {
            "domains": {"add": {"sources": [{**ARITHMETIC, "ops": "+"}]}, "sub": {"sources": [{**ARITHMETIC, "ops": "-"}]}},
            "teachers": [
                {"domain": "add", "mode": "non_think", "path": str(tmp_path / "add-adapter")},
                {"domain": "sub", "mode": "high", "path": str(tmp_path / "sub-full")},
            ],
            "steps": 6,
            "prompts_per_step": 8,
            "samples_per_prompt": 2,
        },
        "modes": {
            "non_think": {"thinking": False, "max_tokens": 16},
            "high": {"thinking": True, "thinking_budget": 8, "max_tokens": 24},
        },

        "eval": {"num_problems": 8, "pass_k": 1},
    }
    parsed = Recipe.model_validate(recipe)
    make_teacher(parsed, parsed.distill.teachers[0], steps=4, batch=8, lr=1e-2)
    make_teacher(parsed, parsed.distill.teachers[1], steps=4, batch=8, lr=3e-3, lora=False)
    path = tmp_path / "opd.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["run", str(path)]) == 0

    run = tmp_path / "runs" / "opd"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == list(range(6))
    for phase in ("generate", "teacher_score", "update", "weight_sync"):
        assert rows[0][f"time/{phase}"] >= 0
    recovery = json.loads((run / "eval" / "after.json").read_text())["recovery"]
    assert set(recovery) == {"add/non_think", "sub/high"}
    for name, row in recovery.items():
        assert row["kl_after"] < 0.8 * row["kl_before"], (name, row)
    assert (run / "checkpoints" / "step_6" / "model.safetensors").exists()
