"""The budget-sweep figure, drawn once for every caller (a run's eval and the report).

Accuracy and thinking tokens used against the thinking budget, one line per
saved sweep (e.g. ``before`` / ``after``). matplotlib with the Agg backend.
"""

from __future__ import annotations

import json
from pathlib import Path


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def budget_sweep_figure(sweeps: dict[str, dict], size: tuple[float, float] = (10, 4)):
    """``sweeps``: ``{label: {"mode": ..., "points": [{budget, accuracy, mean_thinking_tokens}, ...]}}``."""
    plt = pyplot()
    figure, (accuracy_axis, tokens_axis) = plt.subplots(1, 2, figsize=size)
    budgets: list[int] = []
    for label, sweep in sweeps.items():
        budgets = [point["budget"] for point in sweep["points"]]
        accuracy_axis.plot(budgets, [p["accuracy"] for p in sweep["points"]], marker="o", label=label)
        tokens_axis.plot(budgets, [p["mean_thinking_tokens"] for p in sweep["points"]], marker="o", label=label)
    tokens_axis.plot(budgets, budgets, linestyle=":", color="grey", label="budget")
    mode = next(iter(sweeps.values()), {}).get("mode", "?")
    accuracy_axis.set(xlabel="thinking budget (tokens)", ylabel="greedy accuracy", title=f"accuracy vs budget ({mode})")
    tokens_axis.set(xlabel="thinking budget (tokens)", ylabel="mean thinking tokens", title="thinking tokens used")
    for axis in (accuracy_axis, tokens_axis):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    return figure


# A run with SFT first keeps SFT's evals as ``base`` (before SFT) and ``before`` (after SFT, where GRPO starts)
SFT_RUN_LABELS = {"base": "before SFT", "before": "after SFT", "after": "after GRPO"}


def sweep_order(tag: str) -> tuple[int, int]:
    """Chronological: base, before, step_N in step order, after."""
    if tag.startswith("step_") and tag[5:].isdigit():
        return 2, int(tag[5:])
    return {"base": 0, "before": 1, "after": 3}.get(tag, 4), 0


def plot_budget_sweeps(paths: list[Path], target: Path) -> Path:
    """The figure of the saved ``<tag>_budget_sweep.json`` files, written to ``target`` (PNG), in the order the
    evals ran; a run that began with SFT labels them ``before SFT`` / ``after SFT`` / ``after GRPO``."""
    tagged = {Path(p).stem.removesuffix("_budget_sweep"): Path(p) for p in paths}
    labels = SFT_RUN_LABELS if "base" in tagged else {}
    sweeps = {labels.get(tag, tag): json.loads(tagged[tag].read_text()) for tag in sorted(tagged, key=sweep_order)}
    figure = budget_sweep_figure(sweeps)
    figure.savefig(target, dpi=100)
    pyplot().close(figure)
    return target
