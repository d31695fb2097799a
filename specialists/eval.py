"""Held-out math eval on the vLLM engine: greedy accuracy and sampled pass@k.

Scored by ``math-verify`` (the suite's own notion of a correct answer), never
by the training reward mix.
"""

from __future__ import annotations

import ray

from posttrain.chat import prompt_ids
from rewards.math import math_verify
from rollout.engine import SamplingSpec


def _correct(problems, completions) -> list[float]:
    return [math_verify("", c.text, answer=problems[c.prompt_index].answer) for c in completions]


def evaluate_math(engine, tokenizer, suites: dict, user_message, max_tokens: int, pass_k: int, temperature: float):
    """``suites``: ``{name: [Problem]}``; ``user_message(problem) -> str``. One batched call per sampling mode."""
    problems = [p for suite in suites.values() for p in suite]
    prompts = [prompt_ids(tokenizer, user_message(p)) for p in problems]
    greedy = ray.get(engine.generate.remote(prompts, SamplingSpec(n=1, temperature=0.0, max_tokens=max_tokens)))
    greedy_correct = _correct(problems, greedy.completions)
    sampled_correct = None
    if pass_k > 1:
        spec = SamplingSpec(n=pass_k, temperature=temperature, max_tokens=max_tokens)
        sampled = ray.get(engine.generate.remote(prompts, spec))
        sampled_correct = _correct(problems, sampled.completions)
    report, start = {}, 0
    for name, suite in suites.items():
        stop = start + len(suite)
        report[name] = _suite_report(greedy, greedy_correct, sampled_correct, pass_k, start, stop)
        report[name]["examples"] = [
            {"question": problems[i].question, "answer": problems[i].answer, "greedy": greedy.completions[i].text}
            for i in range(start, min(stop, start + 3))
        ]
        start = stop
    return report


def _suite_report(greedy, greedy_correct, sampled_correct, pass_k, start, stop) -> dict:
    count = stop - start
    report = {
        "problems": count,
        "accuracy": sum(greedy_correct[start:stop]) / max(count, 1),
        "mean_completion_tokens": sum(len(c.token_ids) for c in greedy.completions[start:stop]) / max(count, 1),
        "truncated_share": sum(c.truncated for c in greedy.completions[start:stop]) / max(count, 1),
    }
    if sampled_correct is not None:
        per_problem = [sampled_correct[i * pass_k : (i + 1) * pass_k] for i in range(start, stop)]
        report[f"pass@{pass_k}"] = sum(any(row) for row in per_problem) / max(count, 1)
        report["sample_accuracy"] = sum(map(sum, per_problem)) / max(count * pass_k, 1)
    return report
