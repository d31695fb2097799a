"""The agent task: multi-turn tool use in environments, trained on their procedural tasks, held out on BFCL.

Sources are environments (``{kind: tool_env, env: calculator, count: 2000}``);
each draws procedural tasks (``Environment.make_task``), 10% held out by hash
as the ``tool_env(<env>)`` suites. A prompt shows the tools as JSON schemas in
the system message; ``rollout`` runs the episodes on the engine
(``rollout.multiturn``), one batched ``generate`` per turn; the rewards
(``rewards/agent.py``) see the calls, the errors and the environment's outcome.
BFCL suites (``bfcl_simple``, ``bfcl_multiple``) are scored by BFCL's checker.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable
from typing import Literal

from pydantic import Field, field_validator

from posttrain.core.dataset_source import DatasetSource, suite_name
from posttrain.core.schema import Source
from posttrain.core.tasks import Problem, Task, context_system, register_task
from rewards import Sample
from rollout.calls import calls_match
from rollout.engine_pool import engine_client
from rollout.environments import Environment, environment_class, make_environment
from rollout.multiturn import MultiTurnConfig, multiturn_rollout

from . import bfcl
from .data import is_heldout

# A small model imitates an example far more readily than it follows a description. The example calls
# the first listed tool with placeholder values (never the task's own): an example naming a tool that is
# not listed was copied verbatim by the base model (an unknown-tool call), and RL then rewarded the copy.
SYSTEM_PROMPT = (
    "You are a function-calling assistant. You can call these tools:\n{tools}\n"
    "To call a tool, reply with only a JSON object, for example: {example}\n"
    "The result comes back in the next message. When you have what you need, reply with the final answer in plain text."
)
PLACEHOLDERS = {"integer": 1, "number": 1.5, "string": "text", "boolean": True, "array": [], "object": {}}


class AgentEnvSource(Source):
    kind: Literal["tool_env"] = Field(description="procedural tool-use tasks of an environment (agent domain)")
    env: str = Field(description="an environment: calculator, kv_store, search, api_call, one registered with @environment, or 'module:Class'")
    count: int = Field(2000, gt=0, description="tasks drawn (deduplicated; 10% held out by hash)")
    max_turns: int = Field(4, gt=0, description="model turns per episode (the environment may allow fewer)")
    forced_call_share: float = Field(
        0.0, ge=0, le=1, description="share of each training group's episodes whose first turn is decoded as a "
        "call of one of the tools (vLLM structured outputs); forced calls beside free answers in one group give "
        "a base model that writes prose its first format signal. 0: the model decides. Held-out suites never force",
    )

    @field_validator("env")
    @classmethod
    def _registered(cls, env: str) -> str:
        try:
            environment_class(env)
        except ValueError as error:
            raise ValueError(str(error)) from None
        return env


def example_call(schema: dict) -> str:
    """A call of ``schema``'s tool with a placeholder value of the right type for each required argument."""
    parameters = schema.get("parameters", {})
    properties = parameters.get("properties", {})
    arguments = {
        name: PLACEHOLDERS.get(properties.get(name, {}).get("type"), "text") for name in parameters.get("required", [])
    }
    return json.dumps({"name": schema["name"], "arguments": arguments})


def system_prompt(schemas: list[dict]) -> str:
    return SYSTEM_PROMPT.format(tools="\n".join(json.dumps(schema) for schema in schemas), example=example_call(schemas[0]))


def env_tasks(
    env: str, seed: int, count: int, heldout: bool, max_turns: int = 4, forced_call_share: float = 0.0
) -> list[Problem]:
    """``count`` draws of ``env``'s procedural tasks (deduplicated by question), the held-out slice or the rest."""
    cls, rng, seen, problems = environment_class(env), random.Random(f"{env}-{seed}"), set(), []
    for _ in range(count):
        task = cls.make_task(rng)
        setup = json.dumps(task.setup, sort_keys=True)  # held out by setup: rephrasings of one task stay together
        key = f"{env}: {task.question} {setup}"
        if key in seen or is_heldout(f"{env}: {setup}") != heldout:
            continue
        seen.add(key)
        fields = {
            "env": env,
            "setup": task.setup,
            "tools": make_environment(env, task.setup).schemas(),
            "expected_calls": task.expected_calls,
            "answer": task.answer,
            "max_turns": max_turns,
            "forced_call_share": forced_call_share,
        }
        problems.append(Problem(task.question, fields, source=f"tool_env({env})", id=f"{env}-{len(problems)}"))
    return problems


def episode_envs(problems: list[Problem], specs: list) -> Callable[[int], Environment]:
    """``make_env(prompt_index)`` for a rollout, called once per episode: a fresh environment of the
    problem's setup; the first ``forced_call_share`` of each group's episodes must open with a call."""
    episodes = Counter()

    def make_env(index: int) -> Environment:
        fields, episode = problems[index].fields, episodes[index]
        episodes[index] += 1
        env = make_environment(fields["env"], fields["setup"])
        env.max_turns = min(env.max_turns, fields.get("max_turns", env.max_turns))  # the source's limit
        if episode < round(fields.get("forced_call_share", 0.0) * specs[index].n):
            env.tool_choice = "required"
        return env

    return make_env


@register_task("agent")
class AgentTask(Task):
    sources = (AgentEnvSource, DatasetSource)
    dataset_fields = ("tools",)  # JSON schemas of the functions; `expected_calls` ([{name, arguments}]) scores them
    multi_turn = True

    def __init__(self, task_cfg, seed: int = 0):
        super().__init__(task_cfg, seed)
        self._train = []
        for source in task_cfg.sources:
            if source.kind == "dataset":
                if source.heldout != "all" or source.heldout_split:
                    self._train.append((source.weight, self.dataset_problems(source, False)))
                continue
            problems = env_tasks(source.env, seed, source.count, False, source.max_turns, source.forced_call_share)
            if not problems:
                raise ValueError(f"source tool_env({source.env}) has no training tasks (count {source.count})")
            self._train.append((source.weight, problems))
        if not self._train:
            raise ValueError("no source has training rows (every dataset source is heldout: all)")

    def sample(self, step: int, count: int) -> list[Problem]:
        """The prompts of training step ``step``: a pure function of (seed, step)."""
        rng = random.Random(self.seed * 1_000_003 + step)
        weights = [weight for weight, _ in self._train]
        return [rng.choice(rng.choices(self._train, weights=weights)[0][1]) for _ in range(count)]

    def system_prompt(self, problem: Problem) -> str:
        own = context_system(problem)
        return f"{own}\n{system_prompt(problem.fields['tools'])}" if own else system_prompt(problem.fields["tools"])

    @classmethod
    def dataset_problem(cls, problem: Problem) -> Problem:
        """A row of your own: its tools as schema-only functions (calls recorded, not run, as BFCL's), scored
        by ``expected_calls`` (the env's outcome: exactly those calls, in order)."""
        fields = problem.fields
        tools, expected = (json.loads(v) if isinstance(v, str) else v for v in (fields["tools"], fields.get("expected_calls")))
        fields |= {"tools": list(tools), "expected_calls": list(expected or []), "env": "schemas", "max_turns": 1,
                   "setup": {"functions": list(tools), "expected_calls": list(expected or [])}}
        return problem

    def reward_sample(self, problem: Problem, completion) -> Sample:
        episode = {
            "calls": getattr(completion, "valid_calls", []),
            "call_attempts": len(getattr(completion, "calls", [])) + getattr(completion, "errors", {}).get("malformed", 0),
            "outcome": getattr(completion, "outcome", 0.0),
        }
        return Sample(self.user_message(problem), completion.answer_text, problem.fields | episode)

    def rollout(self, engine, tokenizer, problems, prompts, specs):
        import ray

        max_context = ray.get(engine.max_model_len.remote())
        return multiturn_rollout(
            engine_client(engine),
            tokenizer,
            prompts,
            specs,
            episode_envs(problems, specs),
            MultiTurnConfig(max_turns=max(p.fields.get("max_turns", 1) for p in problems), max_context=max_context),
        )

    def heldout_suites(self, names, num_problems: int) -> dict[str, list[Problem]]:
        env_suites = {f"tool_env({source.env})" if source.kind == "tool_env" else suite_name(source): source
                      for source in self.cfg.sources}
        names = names or [*bfcl.SUITES, *env_suites]
        suites = {}
        for name in names:
            if name in bfcl.SUITES:
                suites[name] = bfcl.load_suite(name, num_problems)
            elif name in env_suites and env_suites[name].kind == "dataset":
                suites[name] = self.dataset_problems(env_suites[name], True)[:num_problems]
            elif name in env_suites:
                source = env_suites[name]
                suites[name] = env_tasks(source.env, self.seed, source.count, True, source.max_turns)[:num_problems]
            else:
                raise ValueError(f"agent has no held-out suite {name!r}; it has {[*bfcl.SUITES, *env_suites]}")
        return suites

    def score_suite(self, suite: str, problems: list[Problem], completions: list) -> dict[str, list[float]]:
        if suite in bfcl.SUITES:
            rows = [bfcl.score(p, getattr(c, "calls", [])) for p, c in zip(problems, completions)]
            return {"score": [row["score"] for row in rows], "format": [row["format"] for row in rows]}
        return {
            "score": [float(getattr(c, "outcome", 0.0)) for c in completions],
            "call_match": [
                calls_match(getattr(c, "valid_calls", []), p.fields["expected_calls"]) for p, c in zip(problems, completions)
            ],
            "turns": [float(getattr(c, "turns", 1)) for c in completions],
        }
