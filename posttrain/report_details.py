"""What the report adds beside the headline numbers: the held-out score over training (``eval.every``),
sample completions (training ``samples.jsonl`` and eval outputs), and the resolved config.

Pure functions over what ``posttrain/report.py`` loaded; they read no files.
"""

from __future__ import annotations

import re

STEP_TAG = re.compile(r"step_(\d+)")
SAMPLE_ROWS_PER_STEP = 4
EVAL_ROWS_PER_CELL = 2
EVAL_ROWS = 8


def step_of_tag(tag: str) -> int | None:
    """``step_20`` -> 20 (an intermediate eval); any other tag -> None."""
    found = STEP_TAG.fullmatch(tag)
    return int(found.group(1)) if found else None


def eval_curve(evals: dict[str, dict], step_evals: dict[int, dict], last_step: int | None) -> dict[str, list[list[float]]]:
    """``{"suite/mode": [[step, accuracy], ...]}``: ``before`` at 0, ``step_N`` at N, ``after`` at ``last_step``.

    Empty without intermediate evals (before/after alone are the score table's columns)."""
    if not step_evals:
        return {}
    points: dict[int, dict] = {0: evals["before"]} if "before" in evals else {}
    points |= step_evals
    if "after" in evals and last_step is not None:
        points[last_step] = evals["after"]
    curve: dict[str, list[list[float]]] = {}
    for step in sorted(points):
        for key, entry in points[step].items():
            if isinstance(entry, dict) and "accuracy" in entry:
                suite, mode = entry.get("suite", key), entry.get("mode", "default")
                curve.setdefault(f"{suite}/{mode}", []).append([step, entry["accuracy"]])
    return curve


def sample_rows(samples: list[dict], outputs: dict[str, list[dict]]) -> list[dict]:
    """A few completions to read: the first and the last training step's logged samples, then the
    outputs of the last eval with any (``after`` first), a few per suite/mode.

    Rows: ``{"where", "mode", "prompt", "completion", "reward"}`` (an eval row's reward is its score)."""
    rows = []
    steps = sorted({row.get("step") for row in samples if isinstance(row.get("step"), int)})
    for step in dict.fromkeys(steps[:1] + steps[-1:]):
        picked = [row for row in samples if row.get("step") == step][:SAMPLE_ROWS_PER_STEP]
        rows += [{"where": f"train step {step}", "mode": row.get("mode", "default"), "prompt": row.get("prompt", ""),
                  "completion": row.get("completion", ""), "reward": row.get("reward")} for row in picked]
    tag = next((t for t in ("after", *sorted(outputs, reverse=True)) if outputs.get(t)), None)
    if tag is not None:
        per_cell: dict[tuple, int] = {}
        for row in outputs[tag]:
            cell = (row.get("suite"), row.get("mode"))
            per_cell[cell] = per_cell.get(cell, 0) + 1
            if per_cell[cell] <= EVAL_ROWS_PER_CELL and sum(r["where"].startswith("eval") for r in rows) < EVAL_ROWS:
                rows.append({"where": f"eval {tag}: {row.get('suite')}", "mode": row.get("mode", "default"),
                             "prompt": row.get("question", ""), "completion": row.get("output", ""), "reward": row.get("score")})
    return rows


def flat_config(tree: dict, prefix: str = "") -> dict[str, object]:
    """``{"grpo.steps": 20, ...}``: the resolved recipe as dotted fields (what ``key=value`` overrides name)."""
    out: dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out |= flat_config(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out
