"""Budget forcing throughput: both forcing paths vs plain generation, same prompts, side by side.

All run through ``RolloutEngine.generate`` (in this process, CPU engine env) on
the same thinking-mode prompts (``chat.prompt_ids`` with a thinking mode, so the
prompt ends in ``<think>``) and sampling (temperature 1.0, ``--n`` samples), on
one engine built with vLLM's ``reasoning_config`` (the engine path needs it; the
other two do not use it):

- plain:      one call, ``max_tokens=--max-tokens``, no budget;
- two_phase:  ``thinking_budget=--budget`` within the same ``max_tokens``: phase 1
  stops at ``</think>`` or the budget, phase 2 answers from prompt + thinking +
  close tag (a second request joining the batch; prefix caching serves the re-prefill);
- engine:     the same budget through vLLM's ``SamplingParams.thinking_token_budget``:
  one request, the sampler forces ``</think>`` at the budget (``rollout/budget.py``).

tokens/s counts sampled tokens only (a forced close tag is not generated). One
warm-up call each, then ``--repeats`` timed calls, alternating; medians reported,
with the machine's load average (the CPUs are shared).

Run: ``flock /tmp/posttrain-heavy.lock python bench/budget.py`` (a few minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from dataclasses import replace
from pathlib import Path

# Run as a script, this file's folder heads sys.path and its name would shadow packages.
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != Path(__file__).resolve().parent]

from posttrain.core.chat import prompt_ids  # noqa: E402
from posttrain.core.models import resolve_model  # noqa: E402
from posttrain.core.schema import EffortMode  # noqa: E402
from rollout.engine import EngineConfig, SamplingSpec, cpu_engine_env  # noqa: E402

QUESTIONS = ("What is {a} + {b}?", "What is {a} times {b}?", "Tom has {a} apples and eats {b}. How many are left?")


def thinking_prompts(tokenizer, count: int, mode: EffortMode) -> list[list[int]]:
    return [
        prompt_ids(tokenizer, QUESTIONS[i % len(QUESTIONS)].format(a=3 + 7 * i % 90, b=2 + 5 * i % 40), mode=mode)
        for i in range(count)
    ]


def describe(result) -> dict:
    count = len(result.completions)
    return {
        "tokens": result.num_tokens,
        "seconds": result.seconds,
        "tokens_per_s": result.num_tokens / result.seconds,
        "thinking": sum(c.thinking_tokens for c in result.completions) / count,
        "answer": sum(c.answer_tokens for c in result.completions) / count,
        "forced": sum(c.forced_close for c in result.completions) / count,
        "masked": sum(c.forced_tokens for c in result.completions) / count,  # tokens out of the loss per sample
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--budget", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--block-size", type=int, default=None, help="KV block size (prefix-cache granularity)")
    args = parser.parse_args()

    os.environ.update(cpu_engine_env())
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    from rollout.engine import RolloutEngine

    engine = RolloutEngine(EngineConfig(model=resolve_model(args.model), max_model_len=512, kv_cache_gib=1.0,
                                       block_size=args.block_size, budget_forcing="engine"))
    mode = EffortMode(thinking=True, thinking_budget=args.budget, max_tokens=args.max_tokens)
    prompts = thinking_prompts(engine.tokenizer, args.prompts, mode)
    forced = SamplingSpec(n=args.n, max_tokens=args.max_tokens, thinking_budget=args.budget)
    paths = {"plain": ("two_phase", SamplingSpec(n=args.n, max_tokens=args.max_tokens)),
             "two_phase": ("two_phase", forced), "engine": ("engine", forced)}
    cache = engine.llm.llm_engine.vllm_config.cache_config
    print(f"workload: {len(prompts)} thinking prompts x n={args.n}, budget {args.budget}, max_tokens "
          f"{args.max_tokens}; {os.cpu_count()} cores, prefix caching {cache.enable_prefix_caching} "
          f"(block size {cache.block_size}); load average {_load()}")

    def run(name: str):
        forcing, spec = paths[name]
        engine.config = replace(engine.config, budget_forcing=forcing)  # the path this call takes
        return engine.generate(prompts, spec)

    for name in paths:  # warm-up
        run(name)
    runs: dict[str, list[dict]] = {name: [] for name in paths}
    for _ in range(args.repeats):
        for name in paths:
            runs[name].append(describe(run(name)) | {"load": os.getloadavg()[0]})
    median = {name: sorted(rows, key=lambda r: r["tokens_per_s"])[len(rows) // 2] for name, rows in runs.items()}
    for name, row in median.items():
        spread = ", ".join(f"{r['tokens_per_s']:.0f}" for r in runs[name])
        print(f"{name:9s} {row['tokens']:6d} tokens in {row['seconds']:6.2f} s = {row['tokens_per_s']:6.0f} tokens/s "
              f"(runs {spread}); per sample: thinking {row['thinking']:.1f}, answer {row['answer']:.1f}, "
              f"forced close {row['forced']:.0%}, masked {row['masked']:.2f}")
    plain = median["plain"]["tokens_per_s"]
    for name in ("two_phase", "engine"):
        mean = statistics.mean(r["tokens_per_s"] for r in runs[name]) / statistics.mean(r["tokens_per_s"] for r in runs["plain"])
        print(f"{name} / plain tokens/s: median {median[name]['tokens_per_s'] / plain:.3f}, mean {mean:.3f}  (target >= 0.9)")
    print(f"engine / two_phase tokens/s: {median['engine']['tokens_per_s'] / median['two_phase']['tokens_per_s']:.3f}; "
          f"load average after: {_load()}")


def _load() -> str:
    return " ".join(f"{value:.1f}" for value in os.getloadavg())


if __name__ == "__main__":
    main()
