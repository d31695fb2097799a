"""Held-out math eval on the vLLM engine, per effort mode: greedy accuracy, sampled pass@k,
thinking and answer tokens, and an accuracy-vs-thinking-budget sweep with its plot.

Scored by ``math-verify`` on the answer (the text after the close tag), never by
the training reward mix. Every mode's prompts go into one batched call per
sampling setting; the engine budget-forces the thinking modes.
"""

from __future__ import annotations

import json
from pathlib import Path

import ray

from posttrain.chat import prompt_ids
from posttrain.modes import sampling_spec
from rewards.math import math_verify


def _correct(problems, completions) -> list[float]:
    return [math_verify("", c.answer_text, answer=problems[c.prompt_index % len(problems)].answer) for c in completions]


def _generate(engine, tokenizer, problems, user_message, modes: list, tags, n: int, temperature: float):
    """One batched call: every problem in every mode (mode-major); returns the completions and their scores."""
    prompts, specs = [], []
    for mode in modes:
        prompts += [prompt_ids(tokenizer, user_message(p), mode=mode, tags=tags) for p in problems]
        specs += [sampling_spec(mode, tags, n=n, temperature=temperature)] * len(problems)
    result = ray.get(engine.generate.remote(prompts, specs))
    return result.completions, _correct(problems, result.completions)


def evaluate_math(engine, tokenizer, suites: dict, user_message, modes: dict, tags, pass_k: int, temperature: float):
    """``suites``: ``{name: [Problem]}``; ``modes``: ``{name: EffortMode}``. Report keys are ``suite/mode``."""
    problems = [p for suite in suites.values() for p in suite]
    greedy, greedy_correct = _generate(engine, tokenizer, problems, user_message, list(modes.values()), tags, 1, 0.0)
    sampled_correct = None
    if pass_k > 1:
        _, sampled_correct = _generate(
            engine, tokenizer, problems, user_message, list(modes.values()), tags, pass_k, temperature
        )
    report = {}
    for mode_index, mode_name in enumerate(modes):
        start = mode_index * len(problems)
        for suite_name, suite in suites.items():
            stop = start + len(suite)
            entry = _suite_report(greedy, greedy_correct, sampled_correct, pass_k, start, stop)
            entry["examples"] = [
                {"question": problems[i % len(problems)].question, "answer": problems[i % len(problems)].answer,
                 "greedy": greedy[i].text}
                for i in range(start, min(stop, start + 3))
            ]
            report[f"{suite_name}/{mode_name}"] = {"suite": suite_name, "mode": mode_name, **entry}
            start = stop
    return report


def _suite_report(greedy, greedy_correct, sampled_correct, pass_k, start, stop) -> dict:
    count = max(stop - start, 1)
    picked = greedy[start:stop]
    report = {
        "problems": stop - start,
        "accuracy": sum(greedy_correct[start:stop]) / count,
        "mean_completion_tokens": sum(len(c.token_ids) for c in picked) / count,
        "mean_thinking_tokens": sum(c.thinking_tokens for c in picked) / count,
        "mean_answer_tokens": sum(c.answer_tokens for c in picked) / count,
        "forced_close_share": sum(c.forced_close for c in picked) / count,
        "truncated_share": sum(c.truncated for c in picked) / count,
    }
    if sampled_correct is not None:
        per_problem = [sampled_correct[i * pass_k : (i + 1) * pass_k] for i in range(start, stop)]
        report[f"pass@{pass_k}"] = sum(any(row) for row in per_problem) / count
        report["sample_accuracy"] = sum(map(sum, per_problem)) / (count * pass_k)
    return report


def budget_sweep(engine, tokenizer, suites: dict, user_message, modes_by_budget: dict, tags) -> dict:
    """Greedy accuracy and token use at each thinking budget (``{budget: EffortMode}``), in one batched call."""
    problems = [p for suite in suites.values() for p in suite]
    completions, correct = _generate(
        engine, tokenizer, problems, user_message, list(modes_by_budget.values()), tags, 1, 0.0
    )
    points, count = [], len(problems)
    for index, budget in enumerate(modes_by_budget):
        picked = completions[index * count : (index + 1) * count]
        points.append({
            "budget": budget,
            "accuracy": sum(correct[index * count : (index + 1) * count]) / count,
            "mean_thinking_tokens": sum(c.thinking_tokens for c in picked) / count,
            "mean_answer_tokens": sum(c.answer_tokens for c in picked) / count,
            "forced_close_share": sum(c.forced_close for c in picked) / count,
        })
    return {"problems": count, "points": points}


def plot_budget_sweeps(paths: list[Path], target: Path) -> Path:
    """Accuracy and thinking tokens used against the budget, one line per saved sweep (e.g. before/after)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (accuracy_axis, tokens_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for path in paths:
        sweep = json.loads(Path(path).read_text())
        label = Path(path).stem.removesuffix("_budget_sweep")
        budgets = [point["budget"] for point in sweep["points"]]
        accuracy_axis.plot(budgets, [p["accuracy"] for p in sweep["points"]], marker="o", label=label)
        tokens_axis.plot(budgets, [p["mean_thinking_tokens"] for p in sweep["points"]], marker="o", label=label)
        mode = sweep.get("mode", "?")
    tokens_axis.plot(budgets, budgets, linestyle=":", color="grey", label="budget")
    accuracy_axis.set(xlabel="thinking budget (tokens)", ylabel="greedy accuracy", title=f"accuracy vs budget ({mode})")
    tokens_axis.set(xlabel="thinking budget (tokens)", ylabel="mean thinking tokens", title="thinking tokens used")
    for axis in (accuracy_axis, tokens_axis):
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(target, dpi=100)
    plt.close(figure)
    return target
