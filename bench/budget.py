"""Budget forcing throughput: two-phase budget-forced generation vs plain generation, same prompts.

Both run through ``RolloutEngine.generate`` (in this process, CPU engine env) on
the same thinking-mode prompts (``chat.prompt_ids`` with a thinking mode, so the
prompt ends in ``<think>``) and sampling (temperature 1.0, ``--n`` samples):

- plain:  one call, ``max_tokens=--max-tokens``, no budget;
- forced: ``thinking_budget=--budget`` within the same ``max_tokens``: phase 1
  stops at ``</think>`` or the budget, phase 2 answers from prompt + thinking +
  close tag (one more batched call; prefix caching serves the re-prefill).

tokens/s counts sampled tokens only (a forced close tag is not generated). One
warm-up call each, then ``--repeats`` timed calls, alternating; medians reported.

Run: ``flock /tmp/posttrain-heavy.lock python bench/budget.py`` (a few minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

# Run as a script, this file's folder heads sys.path and its name would shadow packages.
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != Path(__file__).resolve().parent]

from posttrain.core.chat import prompt_ids  # noqa: E402
from posttrain.core.models import resolve_model  # noqa: E402
from posttrain.recipe import EffortMode  # noqa: E402
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
                                       block_size=args.block_size))
    mode = EffortMode(thinking=True, thinking_budget=args.budget, max_tokens=args.max_tokens)
    prompts = thinking_prompts(engine.tokenizer, args.prompts, mode)
    specs = {
        "plain": SamplingSpec(n=args.n, max_tokens=args.max_tokens),
        "forced": SamplingSpec(n=args.n, max_tokens=args.max_tokens, thinking_budget=args.budget),
    }
    cache = engine.llm.llm_engine.vllm_config.cache_config
    prefix_caching = f"{cache.enable_prefix_caching} (block size {cache.block_size})"
    print(f"workload: {len(prompts)} thinking prompts x n={args.n}, budget {args.budget}, max_tokens "
          f"{args.max_tokens}; {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}, prefix caching {prefix_caching}")
    for spec in specs.values():  # warm-up
        engine.generate(prompts, spec)
    runs: dict[str, list[dict]] = {name: [] for name in specs}
    for _ in range(args.repeats):
        for name, spec in specs.items():
            runs[name].append(describe(engine.generate(prompts, spec)))
    median = {name: sorted(rows, key=lambda r: r["tokens_per_s"])[len(rows) // 2] for name, rows in runs.items()}
    for name, row in median.items():
        spread = [f"{r['tokens_per_s']:.0f}" for r in runs[name]]
        print(f"{name:7s} {row['tokens']:6d} tokens in {row['seconds']:6.2f} s = {row['tokens_per_s']:6.0f} tokens/s "
              f"(runs {', '.join(spread)}); per sample: thinking {row['thinking']:.1f}, answer {row['answer']:.1f}, "
              f"forced close {row['forced']:.0%}")
    ratio = median["forced"]["tokens_per_s"] / median["plain"]["tokens_per_s"]
    print(f"forced / plain tokens/s: {ratio:.3f}  (target >= 0.9)")
    print(f"mean over runs: {statistics.mean(r['tokens_per_s'] for r in runs['forced']) / statistics.mean(r['tokens_per_s'] for r in runs['plain']):.3f}")


if __name__ == "__main__":
    main()
