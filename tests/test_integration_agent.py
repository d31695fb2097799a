"""Multi-turn tool use on the real engine (SmolLM2-135M-Instruct in vLLM, in a Ray actor)."""

import json

import pytest
import ray

from posttrain.core.chat import prompt_ids
from rollout.builtin_envs import Calculator
from rollout.engine import EngineClient, EngineConfig, SamplingSpec, engine_actor
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


class Recorder(EngineClient):
    """The actor behind ``submit``/``poll``, recording every submitted batch and what each prompt sampled."""

    def __init__(self, actor):
        super().__init__(actor)
        self.batches, self.prompt_of, self.sampled = [], {}, {}

    def submit(self, prompts, specs):
        tickets = super().submit(prompts, specs)
        self.batches.append(prompts)
        self.prompt_of |= dict(zip(tickets, prompts))
        return tickets

    def poll(self):
        finished = super().poll()
        self.sampled |= {ticket: completions[0].token_ids for ticket, completions in finished}
        return finished


def _prompt(tokenizer, question: str) -> list[int]:
    from specialists.agent_task import system_prompt

    return prompt_ids(tokenizer, question, system=system_prompt(make_environment("calculator", {"answer": 42}).schemas()))


def _calculator(tool_choice: str, explode: bool = False):
    """The calculator (answer 42); with ``explode`` its tools (same schemas and validation) all raise."""
    env = make_environment("calculator", {"answer": 42})
    env.tool_choice = tool_choice
    if explode:

        def boom(**_):
            raise RuntimeError("the tool exploded")

        env.tools = lambda: [Tool(t.name, t.description, t.arguments_model, boom) for t in Calculator.tools(env)]
    return env


def test_episode_with_tool_calls_results_and_exact_masks(engine, tokenizer):
    """Base SmolLM2 writes prose, so episodes 0 and 1 force their first turn to be a call (tool_choice
    required: vLLM structured outputs); episode 2 runs free in the same batches."""
    prompts = [_prompt(tokenizer, question) for question in ("What is 6 times 7?", "What is 40 plus 2?", "What is 50 minus 8?")]
    engine = Recorder(engine)
    envs = [lambda: _calculator("required"), lambda: _calculator("required", explode=True), lambda: _calculator("auto")]
    result = multiturn_rollout(
        engine, tokenizer, prompts, [SamplingSpec(n=1, temperature=0.0, max_tokens=160)] * 3,
        lambda index: envs[index](), MultiTurnConfig(max_turns=3, max_context=1024),
    )
    print([t.text for t in result.completions])
    assert len(engine.batches[0]) == 3  # the first turns of all three episodes go as one batch
    assert len(engine.batches) <= 1 + sum(t.turns - 1 for t in result.completions)  # later turns as they are ready
    worked, raised = result.completions[0], result.completions[1]
    assert worked.calls and worked.calls[0]["turn"] == 1 and worked.calls[0]["error"] is None, worked.text
    assert worked.turns >= 2 and "<|im_start|>tool\n" in worked.text  # the result came back; the model went on
    assert raised.calls[0]["error"] == "tool_exception" and "RuntimeError: the tool exploded" in raised.text
    assert raised.turns >= 2  # the error went back to the model and the episode (and batch) went on
    for index, trajectory in enumerate(result.completions):
        sampled = []
        for ticket, prompt in sorted(engine.prompt_of.items()):  # what the engine sampled for this episode, per turn
            if prompt[: len(prompts[index])] == prompts[index]:
                sampled.append(engine.sampled[ticket])
                # each turn's prompt is the first prompt + the trajectory so far
                assert trajectory.token_ids[: len(prompt) - len(prompts[index])] == prompt[len(prompts[index]):]
        own = [tok for tok, keep in zip(trajectory.token_ids, trajectory.loss_mask) if keep]
        assert own == [tok for turn in sampled for tok in turn]  # the mask covers exactly the model's tokens
        assert all(lp == 0.0 for lp, keep in zip(trajectory.logprobs, trajectory.loss_mask) if not keep)
        if trajectory.turns > 1:
            env_text = tokenizer.decode([t for t, keep in zip(trajectory.token_ids, trajectory.loss_mask) if not keep])
            assert "<|im_start|>tool\n" in env_text and env_text.endswith("<|im_start|>assistant\n")


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
    assert {"agent/turns_mean", "agent/error_rate", "agent/errors/malformed", "agent/submits"} <= set(row)
    report = json.loads((run / "eval" / "after.json").read_text())
    assert {"bfcl_simple/default", "bfcl_multiple/default", "tool_env(calculator)/default"} <= set(report)
    outputs = [json.loads(line) for line in (run / "eval" / "after_outputs.jsonl").read_text().splitlines()]
    assert {"suite", "id", "output", "score", "calls", "turns"} <= set(outputs[0])
    assert sum(o["suite"] == "bfcl_simple" for o in outputs) == 2
