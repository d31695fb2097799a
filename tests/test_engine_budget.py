"""vLLM's own budget path, post-processing: the forced close tag is found, flagged and masked out of the
loss exactly like the two-phase path's; a model-written close is the model's; no close means no answer."""

import pytest

from rollout.budget import prompt_thinking_offset, split_thinking
from rollout.engine import Completion


@pytest.fixture(scope="module")
def tokenizer(tiny_model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_path)


def _completion(tokenizer, text: str) -> Completion:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return Completion(0, ids, [-0.5] * len(ids), tokenizer.decode(ids), truncated=False)


def test_a_close_tag_at_the_budget_is_forced_and_masked(tokenizer):
    close_ids = tokenizer.encode("</think>", add_special_tokens=False)
    thinking = tokenizer("1+2+0=3, write 3 carry 0 and more", add_special_tokens=False)["input_ids"]
    answer = tokenizer("\nThe answer is 3.", add_special_tokens=False)["input_ids"]
    ids = thinking + close_ids + answer
    completion = Completion(0, ids, [-0.5] * len(ids), tokenizer.decode(ids), truncated=False)
    split_thinking(completion, len(thinking), close_ids, "</think>", tokenizer)
    assert completion.forced_close and completion.thinking_tokens == len(thinking)
    assert completion.loss_mask == [1] * len(thinking) + [0] * len(close_ids) + [1] * len(answer)
    assert completion.logprobs[len(thinking) : len(thinking) + len(close_ids)] == [0.0] * len(close_ids)
    assert completion.answer_text.strip() == "The answer is 3." and completion.forced_tokens == len(close_ids)


def test_a_close_tag_the_model_wrote_is_trained_on(tokenizer):
    completion = _completion(tokenizer, "2+2=4\n</think>\nThe answer is 4.")
    split_thinking(completion, 40, tokenizer.encode("</think>", add_special_tokens=False), "</think>", tokenizer)
    assert not completion.forced_close and completion.loss_mask is None
    assert tokenizer.decode(completion.token_ids[: completion.thinking_tokens]).endswith("</think>")
    assert completion.answer_text.strip() == "The answer is 4."


def test_no_close_tag_means_no_answer(tokenizer):
    completion = _completion(tokenizer, "thinking and thinking")
    split_thinking(completion, 40, tokenizer.encode("</think>", add_special_tokens=False), "</think>", tokenizer)
    assert not completion.forced_close and completion.answer_text == ""
    assert completion.thinking_tokens == len(completion.token_ids)


def test_the_prefill_after_the_open_tag_counts_against_vllms_budget(tokenizer):
    from posttrain.core.chat import prompt_ids
    from posttrain.core.schema import EffortMode

    open_ids = tokenizer.encode("<think>", add_special_tokens=False)
    prompt = prompt_ids(tokenizer, "What is 2 + 2?", mode=EffortMode(thinking=True, thinking_budget=8, max_tokens=32))
    assert prompt_thinking_offset(prompt, open_ids) == 1  # the newline after <think>
    assert prompt_thinking_offset([1, 2, 3], open_ids) == 0
