"""Multi-turn rollouts with a scripted engine: batching per turn, masks, budgets, bad input."""

import pytest

from posttrain.core.chat import prompt_ids
from rollout.engine import Completion, GenerateResult, SamplingSpec
from rollout.environments import make_environment
from rollout.multiturn import MultiTurnConfig, multiturn_rollout

EOS = 2  # SmolLM2's <|im_end|>


@pytest.fixture(scope="module")
def tokenizer(tiny_model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_path)


class ScriptedEngine:
    """Replies from a script per prompt index and turn; records every batch it is asked for.

    ``per_poll``: how many finished turns a ``poll`` returns (None: all), oldest first.
    """

    def __init__(self, tokenizer, scripts: dict[int, list[str]], first_prompts: list[list[int]], per_poll=None):
        self.tokenizer, self.scripts, self.first, self.per_poll = tokenizer, scripts, first_prompts, per_poll
        self.batches: list[list[tuple[int, int]]] = []
        self.specs: list[SamplingSpec] = []
        self.sampled: dict[tuple[int, int], list[int]] = {}
        self.waiting: list[tuple[int, list[Completion]]] = []
        self.polled: list[list[tuple[int, int]]] = []
        self.turn_of: list[tuple[int, int]] = []  # ticket -> (prompt index, turn)

    def submit(self, prompts, specs):
        batch, tickets = [], []
        self.specs += specs
        for position, (prompt, spec) in enumerate(zip(prompts, specs)):
            index = next(i for i, first in enumerate(self.first) if prompt[: len(first)] == first)
            turn = self.tokenizer.decode(prompt[len(self.first[index]):]).count("<|im_start|>assistant")
            text = self.scripts[index][turn]
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"][: spec.max_tokens]
            truncated = len(ids) == spec.max_tokens
            ids = ids if truncated else ids + [EOS]
            self.sampled[index, turn] = ids
            batch.append((index, turn))
            tickets.append(ticket := len(self.turn_of))
            self.turn_of.append((index, turn))
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            self.waiting.append((ticket, [Completion(position, ids, [-0.5] * len(ids), text, truncated)]))
        self.batches.append(batch)
        return tickets

    def poll(self):
        count = self.per_poll or len(self.waiting)
        finished, self.waiting = self.waiting[:count], self.waiting[count:]
        self.polled.append([self.turn_of[ticket] for ticket, _ in finished])
        return finished


def _run(tokenizer, scripts, envs, spec=SamplingSpec(n=1, max_tokens=200), config=MultiTurnConfig(max_turns=4), mode=None):
    prompts = [prompt_ids(tokenizer, f"question {i}", mode=mode) for i in range(len(scripts))]
    engine = ScriptedEngine(tokenizer, scripts, prompts)
    result = multiturn_rollout(engine, tokenizer, prompts, [spec] * len(prompts), lambda i: make_environment(*envs[i]), config)
    return engine, prompts, result


CALC = ("calculator", {"answer": 42})


def test_turns_are_batched_and_masks_cover_exactly_the_sampled_tokens(tokenizer):
    scripts = {
        0: ['{"name": "multiply", "arguments": {"a": 6, "b": 7}}', "The answer is 42."],
        1: ["It is 42."],
        2: ['{"name": "add", "arguments": {"a": 40, "b": 1}}', '{"name": "add", "arguments": {"a": 41, "b": 1}}', "42"],
    }
    engine, prompts, result = _run(tokenizer, scripts, [CALC] * 3)
    assert engine.batches == [[(0, 0), (1, 0), (2, 0)], [(0, 1), (2, 1)], [(2, 2)]]  # one call per turn
    assert [t.turns for t in result.completions] == [2, 1, 3]
    for trajectory in result.completions:
        index = trajectory.prompt_index
        sampled = [engine.sampled[index, turn] for turn in range(trajectory.turns)]
        model_ids = [tok for tok, keep in zip(trajectory.token_ids, trajectory.loss_mask) if keep]
        assert model_ids == [tok for turn in sampled for tok in turn]  # the sampled ids, unchanged, and only those
        assert all(lp == 0.0 for lp, keep in zip(trajectory.logprobs, trajectory.loss_mask) if not keep)
        assert trajectory.sampled_tokens == sum(map(len, sampled))
        # prompt + trajectory is exactly what the engine saw on the last turn, plus the last reply
        assert trajectory.outcome == 1.0 and trajectory.stop_reason == "final"
    first = result.completions[0]
    env_text = tokenizer.decode([t for t, keep in zip(first.token_ids, first.loss_mask) if not keep])
    assert env_text == "\n<|im_start|>tool\n42.0<|im_end|>\n<|im_start|>assistant\n"
    assert first.answer_text == "The answer is 42."
    assert first.calls == [{"name": "multiply", "arguments": {"a": 6, "b": 7}, "turn": 1, "error": None}]
    assert result.num_tokens == sum(t.sampled_tokens for t in result.completions)
    assert result.metrics["agent/turns_mean"] == 2.0 and result.metrics["agent/submits"] == 3.0


def test_bad_calls_are_errors_the_model_reads_and_the_batch_goes_on(tokenizer):
    scripts = {
        0: ['{"name": "divide", "arguments": {"a": 1, "b": 0}}', "no idea"],
        1: ['{"name": "teleport", "arguments": {}}', '{"name": "add", "arguments": {"a": "x", "b": 1}}', '{"name": "add", "arguments": {"a": 1', "0"],
        2: ['{"name": "add", "arguments": {"a": 40, "b": 2}}', "42"],
    }
    engine, prompts, result = _run(tokenizer, scripts, [CALC, CALC, CALC])
    zero, one, two = result.completions
    assert zero.errors == {"tool_exception": 1} and "ZeroDivisionError" in zero.text
    assert one.errors == {"unknown_tool": 1, "bad_arguments": 1, "malformed": 1}
    assert "could not read your tool call" in one.text and one.turns == 4
    assert two.outcome == 1.0 and not two.errors
    assert result.metrics["agent/errors/malformed"] == pytest.approx(1 / 3)
    assert result.metrics["agent/error_rate"] == pytest.approx(4 / 5)  # 4 errors in 5 attempts


def test_turn_limit_and_token_budget_hold(tokenizer):
    call = '{"name": "add", "arguments": {"a": 1, "b": 1}}'
    _, prompts, limited = _run(tokenizer, {0: [call] * 5}, [CALC], config=MultiTurnConfig(max_turns=2))
    assert limited.completions[0].turns == 2 and limited.completions[0].stop_reason == "max_turns"
    spec = SamplingSpec(n=1, max_tokens=60)
    _, _, budgeted = _run(tokenizer, {0: [call] * 5}, [CALC], spec=spec)
    trajectory = budgeted.completions[0]
    assert len(trajectory.token_ids) <= 60 and trajectory.stop_reason in ("budget", "truncated")
    _, prompts, windowed = _run(tokenizer, {0: [call] * 5}, [CALC], config=MultiTurnConfig(max_context=len(prompts[0]) + 50))
    assert len(prompts[0]) + len(windowed.completions[0].token_ids) <= len(prompts[0]) + 50


def test_group_samples_get_their_own_environment(tokenizer):
    scripts = {0: ['{"name": "set_value", "arguments": {"key": "pet", "value": "cat"}}', "done"]}
    env = ("kv_store", {"goal": {"pet": "cat"}})
    _, _, result = _run(tokenizer, scripts, [env], spec=SamplingSpec(n=3, max_tokens=100))
    assert [t.prompt_index for t in result.completions] == [0, 0, 0]
    assert [t.outcome for t in result.completions] == [1.0, 1.0, 1.0]


def test_thinking_modes_are_budget_forced_per_turn_and_reopen_thinking(tokenizer):
    from posttrain.core.schema import EffortMode

    mode = EffortMode(thinking=True, thinking_budget=40, max_tokens=120)
    scripts = {0: ['</think>{"name": "add", "arguments": {"a": 40, "b": 2}}', "</think>42"]}
    spec = SamplingSpec(n=1, max_tokens=120, thinking_budget=40)
    engine, prompts, result = _run(tokenizer, scripts, [CALC], spec=spec, mode=mode)
    first, second = engine.specs
    assert first.thinking_budget == 40 and first.max_tokens == 120
    used = len(result.completions[0].token_ids) - len(engine.sampled[0, 1])  # turn 1 + the tool turn
    assert second.max_tokens == 120 - used and second.thinking_budget == min(40, second.max_tokens - 16)
    env_text = tokenizer.decode([t for t, keep in zip(result.completions[0].token_ids, result.completions[0].loss_mask) if not keep])
    assert env_text.endswith("<|im_start|>assistant\n<think>\n")  # each turn starts thinking, as the first did


def test_tool_choice_required_constrains_only_the_first_turn_to_a_call_of_the_episodes_tools(tokenizer):
    import json

    from rollout.environments import environment_class

    class RequiredCalculator(environment_class("calculator")):
        tool_choice = "required"

    scripts = {0: ['{"name": "add", "arguments": {"a": 40, "b": 2}}', "42"], 1: ["42"]}
    prompts = [prompt_ids(tokenizer, f"question {i}") for i in range(2)]
    engine = ScriptedEngine(tokenizer, scripts, prompts)
    envs = [lambda: RequiredCalculator(answer=42), lambda: make_environment(*CALC)]
    multiturn_rollout(engine, tokenizer, prompts, [SamplingSpec(n=1, max_tokens=200)] * 2, lambda i: envs[i]())
    first_required, first_auto, second_required = engine.specs
    schema = json.loads(first_required.json_schema)
    assert {option["properties"]["name"]["const"] for option in schema["anyOf"]} == {"add", "subtract", "multiply", "divide"}
    assert first_auto.json_schema is None and second_required.json_schema is None


def test_an_episode_takes_its_next_turn_without_waiting_for_the_others(tokenizer):
    scripts = {
        0: ['{"name": "add", "arguments": {"a": 40, "b": 2}}', "42"],
        1: ['{"name": "add", "arguments": {"a": 1, "b": 1}}', '{"name": "add", "arguments": {"a": 2, "b": 40}}', "42"],
    }
    prompts = [prompt_ids(tokenizer, f"question {i}") for i in range(2)]
    engine = ScriptedEngine(tokenizer, scripts, prompts, per_poll=1)  # turns finish one at a time
    result = multiturn_rollout(engine, tokenizer, prompts, [SamplingSpec(n=1, max_tokens=300)] * 2, lambda i: make_environment(*CALC))
    # episode 0's second turn is submitted the moment its first finishes, while episode 1's first still runs
    assert engine.batches[:2] == [[(0, 0), (1, 0)], [(0, 1)]]
    assert engine.polled[:2] == [[(0, 0)], [(1, 0)]]
    assert [t.turns for t in result.completions] == [2, 3] and [t.outcome for t in result.completions] == [1.0, 1.0]
    assert result.metrics["agent/submits"] == 4.0
