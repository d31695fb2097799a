"""The one held-out eval path: suites x modes x budgets on the vLLM engine, scored by each suite's own scorer.

Every caller -- a specialist's before/after eval, the distillation recovery
table, the pipeline's student eval, ``posttrain eval`` -- describes what to
score as ``EvalCell``s (a task's suite prompted in one effort mode) and gets one
batched rollout for all of them: single-turn prompts of every task share one
engine call, a multi-turn task (``Task.multi_turn``) runs its episodes itself.

Per cell: the suite's headline ``accuracy`` (greedy, by ``Task.score_suite``:
math-verify, HumanEval's tests in the sandbox, IFBench's checkers, BFCL's AST
checker -- never the training reward mix) and its extra metrics, sampled
pass@k, thinking/answer tokens, forced-close and truncated shares. A budget
sweep is the same cells with the sweep mode at each budget.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

from rollout.engine import GenerateResult

from .modes import sampling_spec, sweep_mode
from .schema import EffortMode, ThinkingTags
from .tasks import Problem, Task


@dataclass
class EvalCell:
    """One thing to score: ``task``'s suite ``suite`` prompted in effort mode ``mode_name``."""

    task: Task
    suite: str
    mode_name: str
    mode: EffortMode
    problems: list[Problem]

    @property
    def label(self) -> str:
        return f"{self.suite}/{self.mode_name}"


@dataclass
class CellResult:
    """A scored cell: its report entry, and the greedy completions with their prompt ids."""

    cell: EvalCell
    entry: dict
    prompts: list[list[int]] = field(default_factory=list)
    completions: list = field(default_factory=list)


def cells_for(task: Task, suites: dict[str, list[Problem]], modes: dict[str, EffortMode]) -> list[EvalCell]:
    """Every suite of ``task`` in every mode (mode-major, the report's order)."""
    return [EvalCell(task, suite, name, mode, problems) for name, mode in modes.items() for suite, problems in suites.items()]


def rollout_mixed(engine, tokenizer, tasks: list[Task], problems: list[Problem], prompts: list[list[int]], specs: list) -> GenerateResult:
    """Samples for prompts of several tasks: single-turn ones in one engine call, each multi-turn task's
    episodes by its own ``rollout``. ``completion.prompt_index`` indexes ``prompts``; a prompt's samples
    keep their order."""
    groups: dict[int, list[int]] = {}  # id of a multi-turn task (or 0: every single-turn prompt) -> indices
    owners: dict[int, Task] = {}
    for index, task in enumerate(tasks):
        key = id(task) if task.multi_turn else 0
        groups.setdefault(key, []).append(index)
        owners[key] = task
    completions, seconds, metrics = [], 0.0, {}
    for key, indices in groups.items():
        picked = ([problems[i] for i in indices], [prompts[i] for i in indices], [specs[i] for i in indices])
        # single-turn prompts of every task share one call of the base rollout (the engine's generate)
        rollout = owners[key].rollout if key else partial(Task.rollout, owners[key])
        result = rollout(engine, tokenizer, *picked)
        for completion in result.completions:
            completion.prompt_index = indices[completion.prompt_index]
        completions += result.completions
        seconds += result.seconds
        metrics |= result.metrics
    completions.sort(key=lambda c: c.prompt_index)  # stable: a prompt's samples keep their order
    return GenerateResult(completions, seconds, metrics)


def rollout_cells(engine, tokenizer, cells: list[EvalCell], tags: ThinkingTags, n: int, temperature: float):
    """One batched rollout of every cell's problems: ``(prompts, completions)`` per cell, ``n`` samples a problem."""
    tasks, problems, prompts, specs = [], [], [], []
    for cell in cells:
        spec = sampling_spec(cell.mode, tags, n=n, temperature=temperature)
        for problem in cell.problems:
            tasks.append(cell.task)
            problems.append(problem)
            prompts.append(cell.task.prompt_ids(tokenizer, problem, mode=cell.mode, tags=tags))
            specs.append(spec)
    completions = rollout_mixed(engine, tokenizer, tasks, problems, prompts, specs).completions
    out, start = [], 0
    for cell in cells:
        count = len(cell.problems)
        out.append((prompts[start : start + count], completions[start * n : (start + count) * n]))
        start += count
    return out


def score_cells(engine, tokenizer, cells: list[EvalCell], tags: ThinkingTags, pass_k: int = 1,
                temperature: float = 1.0) -> list[CellResult]:
    """Greedy scores (and sampled pass@k when ``pass_k > 1``) of every cell, in one batched rollout each."""
    greedy = rollout_cells(engine, tokenizer, cells, tags, 1, 0.0)
    sampled = rollout_cells(engine, tokenizer, cells, tags, pass_k, temperature) if pass_k > 1 else None
    results = []
    for index, cell in enumerate(cells):
        prompts, completions = greedy[index]
        scores = cell.task.score(cell.suite, cell.problems, completions)
        sampled_scores = None
        if sampled is not None:
            repeated = [p for p in cell.problems for _ in range(pass_k)]
            sampled_scores = cell.task.score(cell.suite, repeated, sampled[index][1])
        entry = {"suite": cell.suite, "mode": cell.mode_name,
                 **_suite_report(completions, scores, sampled_scores, pass_k), "scores": scores}
        results.append(CellResult(cell, entry, prompts, completions))
    return results


def evaluate_cells(engine, tokenizer, cells: list[EvalCell], tags: ThinkingTags, pass_k: int = 1,
                   temperature: float = 1.0, outputs: list | None = None) -> dict[str, dict]:
    """The report ``{"suite/mode": entry}``; ``outputs``, when given, receives one row per greedy completion."""
    return report_of(score_cells(engine, tokenizer, cells, tags, pass_k, temperature), outputs)


def report_of(results: list[CellResult], outputs: list | None = None) -> dict[str, dict]:
    """``{"suite/mode": entry}`` of scored cells, each entry with its first three greedy examples."""
    report = {}
    for result in results:
        cell, entry = result.cell, dict(result.entry)
        scores = entry.pop("scores")
        entry["examples"] = [
            {"question": p.question, "answer": p.fields.get("answer"), "greedy": c.text}
            for p, c in zip(cell.problems[:3], result.completions)
        ]
        report[cell.label] = entry
        if outputs is not None:
            outputs += _output_rows(cell, result.completions, scores)
    return report


def evaluate_suites(engine, tokenizer, task: Task, suites: dict, modes: dict, tags: ThinkingTags, pass_k: int,
                    temperature: float, outputs: list | None = None) -> dict[str, dict]:
    """One task's ``suites`` (``{name: [Problem]}``) in every mode (``{name: EffortMode}``); keys ``suite/mode``."""
    return evaluate_cells(engine, tokenizer, cells_for(task, suites, modes), tags, pass_k, temperature, outputs)


def budget_sweep(engine, tokenizer, groups: list[tuple[Task, dict]], mode: EffortMode, budgets: list[int],
                 tags: ThinkingTags) -> dict:
    """Greedy accuracy and token use at each thinking budget of ``mode`` (same answer room), over every suite
    of every ``(task, suites)`` group, in one batched rollout: ``{"problems", "points": [...]}``."""
    cells = [cell for budget in budgets for task, suites in groups
             for cell in cells_for(task, suites, {str(budget): sweep_mode(mode, budget)})]
    results = score_cells(engine, tokenizer, cells, tags)
    points, count = [], 0
    for budget in budgets:
        picked = [r for r in results if r.cell.mode_name == str(budget)]
        completions = [c for r in picked for c in r.completions]
        correct = [v for r in picked for v in r.entry["scores"]["score"]]
        count = max(len(completions), 1)
        points.append({
            "budget": budget,
            "accuracy": sum(correct) / count,
            "mean_thinking_tokens": sum(c.thinking_tokens for c in completions) / count,
            "mean_answer_tokens": sum(c.answer_tokens for c in completions) / count,
            "forced_close_share": sum(c.forced_close for c in completions) / count,
        })
    return {"problems": count, "points": points}


def _output_rows(cell: EvalCell, completions: list, scores: dict) -> list[dict]:
    """The raw greedy outputs, so a score can be checked by reading what the model wrote."""
    return [
        {"suite": cell.suite, "mode": cell.mode_name, "id": p.id, "question": p.question, "output": c.text,
         **{name: values[i] for name, values in scores.items()}, **getattr(c, "record", dict)()}
        for i, (p, c) in enumerate(zip(cell.problems, completions))
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
