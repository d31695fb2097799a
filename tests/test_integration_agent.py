"""Multi-turn tool use on the real engine (SmolLM2-135M-Instruct in vLLM, in a Ray actor)."""

import json

import pytest
import ray

from posttrain.chat import prompt_ids
from rollout.builtin_envs import Calculator
from rollout.engine import EngineConfig, SamplingSpec, engine_actor
from rollout.environments import make_environment
from rollout.multiturn import MultiTurnConfig, multiturn_rollout
from rollout.tools import Tool

pytestmark = pytest.mark.integration


@pytest.fixture  # per test: a module-wide engine would hold a CPU the recipe test's trainer needs
def engine(smollm2_path, ray_local):
    actor = engine_actor(EngineConfig(model=smollm2_path, max_model_len=1024, kv_cache_gib=0.5))
    ray.get(actor.ready.remote())
    yield actor
    ray.kill(actor)


@pytest.fixture(scope="module")
def tokenizer(smollm2_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_path)


class Recorder:
    """The actor's ``generate``, recording every batch and what it sampled (nothing changed)."""

    def __init__(self, engine):
        self.engine, self.batches = engine, []

    def __call__(self, prompts, specs):
        result = ray.get(self.engine.generate.remote(prompts, specs))
        self.batches.append((prompts, result.completions))
        return result


def _prompt(tokenizer, call: dict) -> list[int]:
    """The base model does not call tools on its own (that is what training is for): ask it to echo a call."""
    return prompt_ids(tokenizer, json.dumps(call), system="Repeat the user's message exactly, and nothing else.")


def _exploding_calculator():
    """The calculator's tools (same schemas and validation), every one raising when called."""
    env = make_environment("calculator", {"answer": 42})

    def explode(**_):
        raise RuntimeError("the tool exploded")

    env.tools = lambda: [Tool(t.name, t.description, t.arguments_model, explode) for t in Calculator.tools(env)]
    return env


@pytest.mark.xfail(
    reason="base SmolLM2-135M-Instruct, greedy, neither sends nor echoes a JSON call here (measured), so no tool "
    "turn happens; needs a model that calls tools (e.g. the agent_grpo checkpoint merged) or constrained decoding",
    strict=False,
)
def test_episode_with_tool_calls_results_and_exact_masks(engine, tokenizer):
    calls = [
        {"name": "multiply", "arguments": {"a": 6, "b": 7}},
        {"name": "add", "arguments": {"a": 5, "b": 3}},  # episode 1's tools all raise
        {"name": "add", "arguments": {"a": 40, "b": 2}},
    ]
    prompts = [_prompt(tokenizer, call) for call in calls]
    generate = Recorder(engine)
    envs = {0: lambda: make_environment("calculator", {"answer": 42}), 1: _exploding_calculator}
    result = multiturn_rollout(
        generate, tokenizer, prompts, [SamplingSpec(n=1, temperature=0.0, max_tokens=160)] * 3,
        lambda index: envs.get(index, envs[0])(), MultiTurnConfig(max_turns=3, max_context=1024),
    )
    print([t.text for t in result.completions])
    assert len(generate.batches) == max(t.turns for t in result.completions)  # one engine call per turn
    assert len(generate.batches[0][0]) == 3  # the first turn batches all three episodes
    made = [call for t in result.completions for call in t.calls]
    assert any(call["error"] is None for call in made), f"no working call: {[t.text for t in result.completions]}"
    assert any(call["error"] == "tool_exception" for call in made), "the raising tool was not reached"
    for index, trajectory in enumerate(result.completions):
        sampled = []
        for batch_prompts, completions in generate.batches:  # what the engine sampled for this episode, per turn
            for prompt, completion in zip(batch_prompts, completions):
                if prompt[: len(prompts[index])] == prompts[index]:
                    sampled.append(completion.token_ids)
                    # each turn's prompt is the first prompt + the trajectory so far
                    assert trajectory.token_ids[: len(prompt) - len(prompts[index])] == prompt[len(prompts[index]):]
        own = [tok for tok, keep in zip(trajectory.token_ids, trajectory.loss_mask) if keep]
        assert own == [tok for turn in sampled for tok in turn]
        assert all(lp == 0.0 for lp, keep in zip(trajectory.logprobs, trajectory.loss_mask) if not keep)
        if trajectory.turns > 1:
            env_text = tokenizer.decode([t for t, keep in zip(trajectory.token_ids, trajectory.loss_mask) if not keep])
            assert "<|im_start|>tool\n" in env_text and env_text.endswith("<|im_start|>assistant\n")
    raised = result.completions[1]
    assert "RuntimeError: the tool exploded" in raised.text and raised.turns >= 2  # the error came back, it went on


def test_agent_recipe_trains_on_trajectories_and_keeps_raw_eval_outputs(tmp_path, ray_local, tiny_model_path):
    from pathlib import Path

    from posttrain.cli import main

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "agent_grpo.yaml"
    overrides = [
        "model.path=tiny-random", f"run.output_dir={tmp_path}", "run.name=agent", "grpo.steps=1",
        "grpo.prompts_per_step=2", "grpo.samples_per_prompt=2", "grpo.max_tokens=24", "eval.num_problems=2",
        "engine.kv_cache_gib=0.25",
    ]
    assert main(["run", str(recipe), *overrides]) == 0
    run = tmp_path / "agent"
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert {"agent/turns_mean", "agent/error_rate", "agent/errors/malformed", "agent/generate_calls"} <= set(row)
    report = json.loads((run / "eval" / "after.json").read_text())
    assert {"bfcl_simple/default", "bfcl_multiple/default", "tool_env(calculator)/default"} <= set(report)
    outputs = [json.loads(line) for line in (run / "eval" / "after_outputs.jsonl").read_text().splitlines()]
    assert {"suite", "id", "output", "score", "calls", "turns"} <= set(outputs[0])
    assert sum(o["suite"] == "bfcl_simple" for o in outputs) == 2
