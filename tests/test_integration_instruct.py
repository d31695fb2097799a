"""A few IFBench prompts through the real vLLM engine and the held-out eval, scored by IFBench's own scorer."""

import pytest
import ray

from posttrain.core.schema import EffortMode, TaskConfig, ThinkingTags
from rollout.engine import EngineConfig, engine_actor
from posttrain.core.evaluation import evaluate_suites
from specialists.instruct_task import IFBENCH
from posttrain.core.tasks import make_task

pytestmark = pytest.mark.integration


def test_ifbench_prompts_through_engine_and_scorer(smollm2_path, ray_local):
    from transformers import AutoTokenizer

    task = make_task(TaskConfig(domain="instruct", sources=[{"kind": "if_synth", "count": 300}],
                                rewards=[{"name": "if_constraints"}], instruction=""), seed=0)
    suites = task.heldout_suites([IFBENCH, "if_synth(constraints=1-3)"], num_problems=4)
    engine = engine_actor(EngineConfig(model=smollm2_path, max_model_len=1024, kv_cache_gib=0.5))
    try:
        report = evaluate_suites(engine, AutoTokenizer.from_pretrained(smollm2_path), task, suites,
                                 {"default": EffortMode(max_tokens=48)}, ThinkingTags(), pass_k=1, temperature=1.0)
    finally:
        ray.kill(engine)
    ifbench = report[f"{IFBENCH}/default"]
    assert ifbench["problems"] == 4 and ifbench["mean_answer_tokens"] > 0
    for metric in ("accuracy", "loose", "instruction_strict", "instruction_loose"):
        assert 0.0 <= ifbench[metric] <= 1.0
    assert ifbench["loose"] >= ifbench["accuracy"]  # loose accepts everything strict does
    assert ifbench["examples"][0]["greedy"].strip()
    synth = report["if_synth(constraints=1-3)/default"]
    assert synth["problems"] == 4 and 0.0 <= synth["constraint_share"] <= 1.0
