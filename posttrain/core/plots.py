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


def plot_budget_sweeps(paths: list[Path], target: Path) -> Path:
    """The figure of the saved ``<tag>_budget_sweep.json`` files, written to ``target`` (PNG)."""
    sweeps = {Path(p).stem.removesuffix("_budget_sweep"): json.loads(Path(p).read_text()) for p in paths}
    figure = budget_sweep_figure(sweeps)
    figure.savefig(target, dpi=100)
    pyplot().close(figure)
    return target
