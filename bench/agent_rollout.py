"""Multi-turn tool-use rollout throughput vs single-turn generation of the same total length.

Both on one in-process ``RolloutEngine`` (CPU engine env), SmolLM2-135M-Instruct:

- multi-turn: ``rollout.multiturn.multiturn_rollout`` over calculator episodes
  (``--prompts`` x ``--n`` episodes, up to ``--turns`` model turns, temperature 1.0):
  in one continuous batch, each episode's next turn submitted as soon as its tool results are in,
  tool results appended as chat turns;
- single-turn: the same prompts, one request per episode, each made to sample
  exactly as many tokens as that episode's model turns did in all
  (``ignore_eos``), in one batched call.

A third row runs the same episodes turn by turn (one ``generate`` per turn, every
turn waiting for its slowest episode), the loop continuous batching replaces.

tokens/s counts sampled (model) tokens only; the multi-turn side also prefills
the tool-result turns and re-enters the batch once per turn, which is the cost
measured. The base model rarely calls tools unprompted, so by default
(``--tool-choice required``) every episode's first turn is decoded under the
call schema (vLLM structured outputs, whose cost is then part of the figure)
and episodes really are multi-turn; with ``--tool-choice auto`` the system
prompt asks the model to echo the user's call, which at temperature 1.0 it
mostly does not (the turn distribution is printed). One warm-up round, then
``--repeats`` rounds; medians.

Run: ``flock /tmp/posttrain-heavy.lock python bench/agent_rollout.py`` (a few minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

# Run as a script, this file's folder heads sys.path and its name would shadow the `rollout` package.
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != Path(__file__).resolve().parent]

from posttrain.core.chat import prompt_ids  # noqa: E402
from posttrain.core.models import resolve_model  # noqa: E402
from rollout.engine import EngineConfig, SamplingSpec, cpu_engine_env  # noqa: E402
from rollout.environments import make_environment  # noqa: E402
from rollout.multiturn import MultiTurnConfig, multiturn_rollout  # noqa: E402
from specialists.agent_task import system_prompt  # noqa: E402


def agent_prompts(tokenizer, count: int, seed: int = 0) -> list[list[int]]:
    rng, schemas = random.Random(seed), make_environment("calculator", {}).schemas()
    prompts = []
    for _ in range(count):
        name = rng.choice(("add", "subtract", "multiply", "divide"))
        call = json.dumps({"name": name, "arguments": {"a": rng.randint(2, 99), "b": rng.randint(2, 9)}})
        system = f"{system_prompt(schemas)}\nRepeat the user's message exactly, and nothing else."
        prompts.append(prompt_ids(tokenizer, call, system=system))
    return prompts


def calculator(tool_choice: str):
    env = make_environment("calculator", {})
    env.tool_choice = tool_choice
    return env


class TurnByTurn:
    """The engine seen turn by turn: ``poll`` samples everything submitted in one ``generate``, so each
    turn waits for the slowest episode of the batch (the usual loop; what ``submit``/``poll`` avoids)."""

    def __init__(self, engine):
        self.engine, self.tokenizer, self.config, self.queue = engine, engine.tokenizer, engine.config, []

    def submit(self, prompts, specs):
        start = len(self.queue)
        self.queue += zip(prompts, specs)
        return list(range(start, len(self.queue)))

    def poll(self):
        prompts, specs = zip(*self.queue)
        completions = self.engine.generate(list(prompts), list(specs)).completions  # n=1: one per prompt
        self.queue = []
        return [(ticket, [completion]) for ticket, completion in enumerate(completions)]


def run_multiturn(engine, prompts, spec: SamplingSpec, turns: int, tool_choice: str):
    config = MultiTurnConfig(max_turns=turns, max_context=engine.config.max_model_len)
    start = time.perf_counter()
    result = multiturn_rollout(engine, engine.tokenizer, prompts, [spec] * len(prompts),
                               lambda _: calculator(tool_choice), config)
    return result, time.perf_counter() - start


def run_single(engine, prompts, spec: SamplingSpec, trajectories) -> tuple[int, float]:
    """One request per episode, sampling exactly that episode's model-token count, all in one batch."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    requests = [TokensPrompt(prompt_token_ids=prompts[t.prompt_index]) for t in trajectories]
    params = [
        SamplingParams(temperature=spec.temperature, max_tokens=max(t.sampled_tokens, 1), ignore_eos=True, logprobs=0)
        for t in trajectories
    ]
    start = time.perf_counter()
    outputs = engine.llm.generate(requests, params, use_tqdm=False)
    return sum(len(o.outputs[0].token_ids) for o in outputs), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=192, help="per episode: model turns + tool results")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tool-choice", default="required", choices=("auto", "required"),
                        help="required: first turns decoded under the call schema (vLLM structured outputs)")
    args = parser.parse_args()
    for key, value in cpu_engine_env().items():
        os.environ.setdefault(key, value)
    from rollout.engine import RolloutEngine

    engine = RolloutEngine(EngineConfig(model=resolve_model(args.model), max_model_len=1024, kv_cache_gib=1.0))
    prompts = agent_prompts(engine.tokenizer, args.prompts)
    spec = SamplingSpec(n=args.n, temperature=1.0, max_tokens=args.max_tokens)
    rows, barrier_rates = [], []
    for repeat in range(args.repeats + 1):  # the first round warms up
        result, multi_seconds = run_multiturn(engine, prompts, spec, args.turns, args.tool_choice)
        single_tokens, single_seconds = run_single(engine, prompts, spec, result.completions)
        barrier, barrier_seconds = run_multiturn(TurnByTurn(engine), prompts, spec, args.turns, args.tool_choice)
        if repeat:
            rows.append((result, multi_seconds, single_tokens, single_seconds))
            barrier_rates.append(barrier.num_tokens / barrier_seconds)
    ratios = [(r.num_tokens / m) / (t / s) for r, m, t, s in rows]
    middle = sorted(range(len(ratios)), key=ratios.__getitem__)[len(ratios) // 2]  # a repeat, even for 2 repeats
    result, multi_seconds, single_tokens, single_seconds = rows[middle]
    turns = Counter(t.turns for t in result.completions)
    print(f"episodes: {len(result.completions)} ({args.prompts} prompts x {args.n}), max {args.turns} turns, "
          f"max_tokens {args.max_tokens}, tool_choice {args.tool_choice}; turns per episode: {dict(sorted(turns.items()))}; "
          f"env token share {result.metrics['agent/env_token_share']:.2f}; submits {result.metrics['agent/submits']:.0f}")
    print(f"multi-turn : {result.num_tokens} sampled tokens in {multi_seconds:.2f} s = {result.num_tokens / multi_seconds:.1f} tokens/s")
    print(f"turn-by-turn (each turn one generate, waits for its slowest episode): median "
          f"{statistics.median(barrier_rates):.1f} tokens/s over {len(barrier_rates)} repeats")
    print(f"single-turn: {single_tokens} sampled tokens in {single_seconds:.2f} s = {single_tokens / single_seconds:.1f} tokens/s")
    print(f"multi/single throughput: median {statistics.median(ratios):.2f}x over {len(ratios)} repeats "
          f"({', '.join(f'{r:.2f}' for r in ratios)}); target >= 0.8x")


if __name__ == "__main__":
    main()
