"""Effort modes as recipe data: defaults, validation with field paths, mode assignment, prompts."""

import copy
from collections import Counter

import pytest
import yaml
from transformers import AutoTokenizer

from posttrain.core.chat import prompt_ids
from posttrain.core.modes import DEFAULT_MODE, assign_modes, sampling_spec, sweep_mode
from posttrain.recipe import RecipeError, load_recipe
from posttrain.core.schema import EffortMode, ThinkingTags

MINIMAL = {"model": {"path": "tiny-random"}, "task": {"sources": [{"kind": "arithmetic"}]}}
MODES = {
    "non_think": {"thinking": False, "max_tokens": 64},
    "high": {"thinking": True, "thinking_budget": 128, "max_tokens": 256, "instruction": "Think hard."},
}


def _load(tmp_path, data, overrides=()):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_recipe(path, overrides)


def _error(tmp_path, data, overrides=()) -> str:
    with pytest.raises(RecipeError) as caught:
        _load(tmp_path, data, overrides)
    return str(caught.value)


def test_recipe_without_modes_gets_a_non_thinking_default_from_grpo_max_tokens(tmp_path):
    recipe = _load(tmp_path, MINIMAL, ["grpo.max_tokens=48"])
    assert set(recipe.modes) == {DEFAULT_MODE} and recipe.task.modes == {DEFAULT_MODE: 1.0}
    assert recipe.modes[DEFAULT_MODE] == EffortMode(thinking=False, max_tokens=48)


def test_task_trains_every_mode_unless_it_names_some(tmp_path):
    recipe = _load(tmp_path, {**MINIMAL, "modes": MODES})
    assert recipe.task.modes == {"non_think": 1.0, "high": 1.0}
    recipe = _load(tmp_path, {**MINIMAL, "modes": MODES}, ["task.modes={high: 2.0}"])
    assert recipe.task.modes == {"high": 2.0}


def test_thinking_mode_without_budget_names_its_path(tmp_path):
    message = _error(tmp_path, {**MINIMAL, "modes": {"high": {"thinking": True, "max_tokens": 64}}})
    assert "modes.high" in message and "thinking_budget is required" in message


def test_budget_above_max_tokens_is_an_error(tmp_path):
    modes = {"high": {"thinking": True, "thinking_budget": 300, "max_tokens": 256}}
    message = _error(tmp_path, {**MINIMAL, "modes": modes})
    assert "modes.high" in message and "exceeds max_tokens" in message


def test_mode_that_does_not_fit_the_context_window(tmp_path):
    message = _error(tmp_path, {**MINIMAL, "modes": MODES}, ["model.max_model_len=300"])
    assert "modes.high.max_tokens" in message and "model.max_model_len" in message


def test_task_naming_an_undefined_mode(tmp_path):
    message = _error(tmp_path, {**MINIMAL, "modes": MODES}, ["task.modes={max: 1.0}"])
    assert "task.modes.max" in message and "no mode named 'max'" in message


def test_budget_sweep_must_fit_and_needs_a_thinking_mode(tmp_path):
    message = _error(tmp_path, {**MINIMAL, "modes": MODES}, ["eval.budget_sweep=[64, 900]"])
    assert "eval.budget_sweep.1" in message and "max_model_len" in message
    message = _error(tmp_path, MINIMAL, ["eval.budget_sweep=[64]"])
    assert "eval.budget_sweep" in message and "thinking mode" in message
    message = _error(tmp_path, {**MINIMAL, "modes": MODES}, ["eval.budget_sweep=[64]", "eval.sweep_mode=non_think"])
    assert "eval.sweep_mode" in message


def test_sweep_keeps_the_answer_room():
    mode = EffortMode(thinking=True, thinking_budget=128, max_tokens=200)
    assert sweep_mode(mode, 32).max_tokens == 104 and sweep_mode(mode, 32).thinking_budget == 32


def test_mode_assignment_is_proportional_and_reproducible():
    names = assign_modes({"a": 1.0, "b": 3.0}, 8, seed=0, step=5)
    assert Counter(names) == {"a": 2, "b": 6}
    assert names == assign_modes({"a": 1.0, "b": 3.0}, 8, seed=0, step=5)
    assert len(assign_modes({"a": 1.0, "b": 1.0, "c": 1.0}, 7, 0, 0)) == 7


def test_sampling_spec_carries_budget_only_when_thinking():
    tags = ThinkingTags(close="</reason>")
    spec = sampling_spec(EffortMode(thinking=True, thinking_budget=32, max_tokens=64), tags, n=4)
    assert (spec.n, spec.max_tokens, spec.thinking_budget, spec.think_close) == (4, 64, 32, "</reason>")
    assert sampling_spec(EffortMode(max_tokens=64), tags).thinking_budget is None


@pytest.fixture(scope="module")
def tokenizer(tiny_model_path):
    return AutoTokenizer.from_pretrained(tiny_model_path)


def test_thinking_prompt_adds_instruction_tags_and_prefills_the_open_tag(tokenizer):
    mode = EffortMode(thinking=True, thinking_budget=32, max_tokens=64, instruction="Think hard.")
    text = tokenizer.decode(prompt_ids(tokenizer, "What is 2 + 2?", mode=mode))
    assert "Think hard." in text and "between <think> and </think>" in text
    assert text.endswith("<|im_start|>assistant\n<think>\n")
    custom = tokenizer.decode(prompt_ids(tokenizer, "Q", mode=mode, tags=ThinkingTags(open="<r>", close="</r>")))
    assert custom.endswith("<r>\n") and "</r>" in custom


def test_non_thinking_default_mode_formats_exactly_as_plain_chat(tokenizer):
    plain = prompt_ids(tokenizer, "What is 2 + 2?")
    assert prompt_ids(tokenizer, "What is 2 + 2?", mode=EffortMode(max_tokens=64)) == plain
    with_instruction = tokenizer.decode(prompt_ids(tokenizer, "Q", mode=EffortMode(max_tokens=64, instruction="Be brief.")))
    assert "Be brief." in with_instruction and "<think>" not in with_instruction


# A Qwen3-style template: it knows the tags and has its own switch; with thinking off it
# writes an empty thinking block itself, and a custom switch reaches it from template_kwargs.
QWEN3_STYLE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}"
    "{% if effort is defined %}[effort {{ effort }}]{% endif %}{% endif %}"
)


@pytest.fixture
def qwen3_style(tokenizer):
    native = copy.deepcopy(tokenizer)
    native.chat_template = QWEN3_STYLE + "{# <think> #}"
    return native


def test_native_template_gets_its_own_switch_per_mode(qwen3_style):
    non_think = qwen3_style.decode(prompt_ids(qwen3_style, "Q", mode=EffortMode(max_tokens=64)))
    assert non_think.endswith("assistant\n<think>\n\n</think>\n\n")  # the template's own empty block
    high = qwen3_style.decode(prompt_ids(qwen3_style, "Q", mode=EffortMode(thinking=True, thinking_budget=32, max_tokens=64)))
    assert high.endswith("assistant\n<think>\n") and "between <think>" not in high  # no instruction about tags


def test_template_kwargs_reach_the_template(qwen3_style):
    mode = EffortMode(thinking=True, thinking_budget=32, max_tokens=64, template_kwargs={"effort": "max"},
                      instruction="Reasoning effort: maximum.")
    text = qwen3_style.decode(prompt_ids(qwen3_style, "Q", mode=mode))
    assert "[effort max]<think>\n" in text and "Reasoning effort: maximum." in text
