"""Held-out eval on the vLLM engine, per suite and effort mode: the suite's own score
(greedy), sampled pass@k, thinking and answer tokens, and an accuracy-vs-thinking-budget
sweep with its plot.

Suites come from the task (``Task.heldout_suites``) and are scored by the task's
suite scorer (``Task.score_suite``: math-verify, HumanEval's tests in the sandbox,
IFBench's checkers, BFCL's AST checker), never by the training reward mix. Every
suite in every mode goes into one batched rollout per sampling setting; the
engine budget-forces the thinking modes.
"""

from __future__ import annotations

import json
from pathlib import Path

from posttrain.chat import prompt_ids
from posttrain.modes import sampling_spec


def _rollout(engine, tokenizer, task, problems, modes: list, tags, n: int, temperature: float):
    """One batched rollout: every problem in every mode (mode-major); returns the completions."""
    prompts, specs, repeated = [], [], []
    for mode in modes:
        prompts += [
            prompt_ids(tokenizer, task.user_message(p), system=task.system_prompt(p), mode=mode, tags=tags)
            for p in problems
        ]
        specs += [sampling_spec(mode, tags, n=n, temperature=temperature)] * len(problems)
        repeated += problems
    return task.rollout(engine, tokenizer, repeated, prompts, specs).completions


def _scores(task, suites: dict, completions: list, n_modes: int, n: int) -> list[dict[str, list[float]]]:
    """Suite scores of a mode-major rollout: one ``{metric: [value per completion]}`` per (mode, suite)."""
    out, start = [], 0
    for _ in range(n_modes):
        for name, suite in suites.items():
            picked = completions[start * n : (start + len(suite)) * n]
            problems = [p for p in suite for _ in range(n)]
            out.append(task.score_suite(name, problems, picked))
            start += len(suite)
    return out


def evaluate_suites(
    engine, tokenizer, task, suites: dict, modes: dict, tags, pass_k: int, temperature: float, outputs: list | None = None
):
    """``suites``: ``{name: [Problem]}``; ``modes``: ``{name: EffortMode}``. Report keys are ``suite/mode``.

    ``outputs``, when given, receives one row per greedy completion (its raw text and scores).
    """
    problems = [p for suite in suites.values() for p in suite]
    greedy = _rollout(engine, tokenizer, task, problems, list(modes.values()), tags, 1, 0.0)
    greedy_scores = _scores(task, suites, greedy, len(modes), 1)
    sampled_scores = None
    if pass_k > 1:
        sampled = _rollout(engine, tokenizer, task, problems, list(modes.values()), tags, pass_k, temperature)
        sampled_scores = _scores(task, suites, sampled, len(modes), pass_k)
    report, start, index = {}, 0, 0
    for mode_name in modes:
        for suite_name, suite in suites.items():
            picked = greedy[start : start + len(suite)]
            entry = _suite_report(picked, greedy_scores[index], sampled_scores and sampled_scores[index], pass_k)
            entry["examples"] = [
                {"question": p.question, "answer": p.fields.get("answer"), "greedy": c.text}
                for p, c in zip(suite[:3], picked)
            ]
            report[f"{suite_name}/{mode_name}"] = {"suite": suite_name, "mode": mode_name, **entry}
            if outputs is not None:
                outputs += _output_rows(suite_name, mode_name, suite, picked, greedy_scores[index])
            start, index = start + len(suite), index + 1
    return report


def _output_rows(suite_name: str, mode_name: str, problems: list, completions: list, scores: dict) -> list[dict]:
    """The raw greedy outputs, so a score can be checked by reading what the model wrote."""
    return [
        {"suite": suite_name, "mode": mode_name, "id": p.id, "question": p.question, "output": c.text,
         **{name: values[i] for name, values in scores.items()}, **getattr(c, "record", dict)()}
        for i, (p, c) in enumerate(zip(problems, completions))
    ]


def _suite_report(greedy: list, scores: dict, sampled: dict | None, pass_k: int) -> dict:
    """Means of the suite's metrics (``accuracy`` is its headline ``score``), token use, pass@k."""
    count = max(len(greedy), 1)
    report = {"problems": len(greedy), "accuracy": sum(scores["score"]) / count}
    report |= {name: sum(values) / count for name, values in scores.items() if name != "score"}
    report |= {
        "mean_completion_tokens": sum(len(c.token_ids) for c in greedy) / count,
        "mean_thinking_tokens": sum(c.thinking_tokens for c in greedy) / count,
        "mean_answer_tokens": sum(c.answer_tokens for c in greedy) / count,
        "forced_close_share": sum(c.forced_close for c in greedy) / count,
        "truncated_share": sum(c.truncated for c in greedy) / count,
    }
    if sampled is not None:
        per_problem = [sampled["score"][i * pass_k : (i + 1) * pass_k] for i in range(len(greedy))]
        report[f"pass@{pass_k}"] = sum(max(row) > 0 for row in per_problem) / count
        report["sample_accuracy"] = sum(map(sum, per_problem)) / (count * pass_k)
    return report


def budget_sweep(engine, tokenizer, task, suites: dict, modes_by_budget: dict, tags) -> dict:
    """Greedy score and token use at each thinking budget (``{budget: EffortMode}``), in one batched call."""
    problems = [p for suite in suites.values() for p in suite]
    completions = _rollout(engine, tokenizer, task, problems, list(modes_by_budget.values()), tags, 1, 0.0)
    scores = _scores(task, suites, completions, len(modes_by_budget), 1)
    points, count = [], len(problems)
    for index, budget in enumerate(modes_by_budget):
        picked = completions[index * count : (index + 1) * count]
        correct = [v for s in scores[index * len(suites) : (index + 1) * len(suites)] for v in s["score"]]
        points.append({
            "budget": budget,
            "accuracy": sum(correct) / count,
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
