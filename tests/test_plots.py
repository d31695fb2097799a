"""The budget-sweep figure: sweeps drawn in the order the evals ran, labelled by stage in a run that began with SFT."""

import json

from posttrain.core import plots
from posttrain.core.plots import plot_budget_sweeps, sweep_order

SWEEP = {"mode": "max", "points": [{"budget": 8, "accuracy": 0.0, "mean_thinking_tokens": 8}]}


def _drawn_labels(tmp_path, monkeypatch, tags):
    paths = []
    for tag in tags:
        path = tmp_path / f"{tag}_budget_sweep.json"
        path.write_text(json.dumps(SWEEP))
        paths.append(path)
    seen = {}
    real = plots.budget_sweep_figure
    monkeypatch.setattr(plots, "budget_sweep_figure", lambda sweeps: seen.setdefault("labels", list(sweeps)) and real(sweeps))
    plot_budget_sweeps(sorted(paths), tmp_path / "sweep.png")
    assert (tmp_path / "sweep.png").stat().st_size > 0
    return seen["labels"]


def test_sweeps_in_eval_order_and_sft_stage_labels(tmp_path, monkeypatch):
    assert sorted(["after", "step_10", "before", "step_2", "base"], key=sweep_order) == ["base", "before", "step_2", "step_10", "after"]
    assert _drawn_labels(tmp_path, monkeypatch, ["after", "base", "before"]) == ["before SFT", "after SFT", "after GRPO"]


def test_a_run_without_sft_keeps_its_tags(tmp_path, monkeypatch):
    assert _drawn_labels(tmp_path, monkeypatch, ["after", "before"]) == ["before", "after"]
