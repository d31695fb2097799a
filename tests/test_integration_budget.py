"""Budget forcing on the real engine: thinking never exceeds its budget, and an answer always follows."""

import pytest
import ray
import torch
from transformers import AutoTokenizer

from posttrain.core.chat import prompt_ids
from posttrain.core.policy import PolicyTrainer, Sequences
from posttrain.core.schema import EffortMode, ThinkingTags, TrainerConfig
from rollout.engine import EngineConfig, SamplingSpec, engine_actor

pytestmark = pytest.mark.integration
TAGS = ThinkingTags()
QUESTIONS = [f"What is {a} + {b}?" for a in range(6) for b in range(3)]  # 18 prompts


def _engine(path):
    actor = engine_actor(EngineConfig(model=path, max_model_len=512, kv_cache_gib=0.5))
    ray.get(actor.ready.remote())
    return actor


def _check_invariant(tokenizer, result, specs):
    close_ids = tokenizer(TAGS.close + "\n", add_special_tokens=False)["input_ids"]
    for completion in result.completions:
        spec = specs[completion.prompt_index]
        assert len(completion.token_ids) == len(completion.logprobs) <= spec.max_tokens
        if spec.thinking_budget is None:
            assert completion.thinking_tokens == 0 and completion.loss_mask is None
            continue
        assert 0 < completion.thinking_tokens <= spec.thinking_budget
        assert completion.answer_tokens >= 1, "every thinking sample gets an answer phase"
        thinking_and_close = completion.token_ids[: len(completion.token_ids) - completion.answer_tokens]
        if completion.forced_close:
            assert thinking_and_close[-len(close_ids) :] == close_ids
            mask = completion.loss_mask
            assert mask == [1] * completion.thinking_tokens + [0] * len(close_ids) + [1] * completion.answer_tokens
        else:
            assert TAGS.close in tokenizer.decode(thinking_and_close)
        assert TAGS.close in completion.text and completion.text.endswith(completion.answer_text)


@pytest.mark.parametrize("budgets", [(1, 4, 16, 40)])
def test_budget_invariant_tiny_model_mixed_modes_in_one_call(tiny_model_path, ray_local, budgets):
    """Random weights never close the tag: every thinking sample is forced at exactly its budget."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    engine = _engine(tiny_model_path)
    prompts, specs = [], []
    for index, question in enumerate(QUESTIONS):
        budget = ([None] + list(budgets))[index % (len(budgets) + 1)]
        mode = EffortMode(thinking=budget is not None, thinking_budget=budget, max_tokens=(budget or 0) + 24)
        prompts.append(prompt_ids(tokenizer, question, mode=mode))
        specs.append(SamplingSpec(n=3, max_tokens=mode.max_tokens, thinking_budget=budget))
    result = ray.get(engine.generate.remote(prompts, specs))
    assert [c.prompt_index for c in result.completions] == [i for i in range(len(prompts)) for _ in range(3)]
    _check_invariant(tokenizer, result, specs)
    assert result.num_tokens == sum(c.sampled_tokens for c in result.completions)
    ray.kill(engine)


def test_budget_invariant_smollm2_and_masked_training(smollm2_path, ray_local):
    """A real model closes the tag itself sometimes; either way the invariant holds and forced tags are masked."""
    tokenizer = AutoTokenizer.from_pretrained(smollm2_path)
    engine = _engine(smollm2_path)
    prompts, specs = [], []
    for index, question in enumerate(QUESTIONS[:12]):
        budget = (8, 32, 96)[index % 3]
        mode = EffortMode(thinking=True, thinking_budget=budget, max_tokens=budget + 48)
        prompts.append(prompt_ids(tokenizer, question, mode=mode))
        specs.append(SamplingSpec(n=2, max_tokens=mode.max_tokens, thinking_budget=budget))
    result = ray.get(engine.generate.remote(prompts, specs))
    _check_invariant(tokenizer, result, specs)
    assert any(c.forced_close for c in result.completions)
    ray.kill(engine)
    # The trainer's mask follows the completion's loss mask: forced tags carry no log-prob.
    trainer = PolicyTrainer(smollm2_path, TrainerConfig(micro_batch_size=8, autocast="none"), threads=2)
    completions = result.completions[:6]
    seqs = Sequences(
        [prompts[c.prompt_index] for c in completions],
        [c.token_ids for c in completions],
        [c.loss_mask or [1] * len(c.token_ids) for c in completions],
    )
    logprobs_B_T, mask_B_T = trainer.token_logprobs(seqs)
    for row, completion in enumerate(completions):
        expected = torch.tensor(seqs.completion_mask[row], dtype=torch.float32)
        assert torch.equal(mask_B_T[row, : len(completion.token_ids)], expected)
        assert (logprobs_B_T[row, : len(completion.token_ids)][expected == 0] == 0).all()
