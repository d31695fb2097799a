"""vLLM's own budget path on the real engine (tiny model): thinking stops at exactly its budget, the forced
close tag is flagged and masked out of the loss, and an answer follows in the same request."""

import pytest
import ray
from transformers import AutoTokenizer

from posttrain.core.chat import prompt_ids
from posttrain.core.schema import EffortMode, ThinkingTags
from rollout.engine import EngineConfig, SamplingSpec, engine_actor

pytestmark = pytest.mark.integration
TAGS = ThinkingTags()


def test_engine_path_forces_masks_and_answers(tiny_model_path, ray_local):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    config = EngineConfig(model=tiny_model_path, max_model_len=256, kv_cache_gib=0.25, budget_forcing="engine")
    engine = engine_actor(config)
    close_ids = tokenizer.encode(TAGS.close, add_special_tokens=False)
    prompts, specs = [], []
    for index, budget in enumerate([None, 4, 16, 40] * 3):
        mode = EffortMode(thinking=budget is not None, thinking_budget=budget, max_tokens=(budget or 0) + 24)
        prompts.append(prompt_ids(tokenizer, f"What is {index} + 3?", mode=mode))
        specs.append(SamplingSpec(n=2, max_tokens=mode.max_tokens, thinking_budget=budget))
    result = ray.get(engine.generate.remote(prompts, specs))
    forced = 0
    for completion in result.completions:
        spec = specs[completion.prompt_index]
        assert len(completion.token_ids) == len(completion.logprobs) <= spec.max_tokens
        if spec.thinking_budget is None:
            assert completion.thinking_tokens == 0 and completion.loss_mask is None
            continue
        assert completion.thinking_tokens <= spec.thinking_budget
        if completion.forced_close:  # random weights never close: at exactly the budget, like two-phase
            forced += 1
            at = completion.thinking_tokens
            assert at == spec.thinking_budget and completion.token_ids[at : at + len(close_ids)] == close_ids
            assert completion.loss_mask[at : at + len(close_ids)] == [0] * len(close_ids)
            assert sum(completion.loss_mask) == len(completion.token_ids) - len(close_ids)
    assert forced >= len(result.completions) // 2  # the 18 thinking samples of 24 (some may stop on EOS first)
    ray.kill(engine)
