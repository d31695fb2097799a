"""The code task end to end: the real engine answers a few HumanEval and held-out procedural
problems, the task's scorer runs every answer in the sandbox, the eval reports pass@1."""

import pytest
import ray

from posttrain.core.schema import EffortMode, TaskConfig, ThinkingTags
from rollout.engine import EngineConfig, engine_actor
from posttrain.core.evaluation import evaluate_suites
from posttrain.core.tasks import make_task

pytestmark = pytest.mark.integration


def test_code_task_eval_on_the_real_engine(smollm2_path, ray_local):
    from transformers import AutoTokenizer

    task_cfg = TaskConfig(domain="code", sources=[{"kind": "code_synth", "count": 400}], rewards=[{"name": "code_tests"}])
    task = make_task(task_cfg, seed=0)
    suites = task.heldout_suites(None, 3)
    engine = engine_actor(EngineConfig(model=smollm2_path, max_model_len=1024, kv_cache_gib=0.5))
    try:
        report = evaluate_suites(
            engine, AutoTokenizer.from_pretrained(smollm2_path), task, suites,
            {"default": EffortMode(max_tokens=256)}, ThinkingTags(), pass_k=2, temperature=1.0,
        )
    finally:
        ray.kill(engine)
    assert set(report) == {"code_synth/default", "humaneval/default"}
    for entry in report.values():
        assert entry["problems"] == 3
        assert 0.0 <= entry["accuracy"] <= 1.0 and 0.0 <= entry["pass@2"] <= 1.0
        assert {"tests_passed", "code_block_share", "timeout_share"} <= set(entry)
        assert entry["mean_completion_tokens"] > 0
    # The instruct model answers in a fenced block most of the time: the extraction path is exercised.
    assert report["humaneval/default"]["code_block_share"] > 0
