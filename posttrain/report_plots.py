"""The report's plots (matplotlib, Agg), each returned as PNG bytes; a plot with no data is left out.

Names are ``<section index>_<plot>`` (``0_curves``, ``0_eval_curve``, ``0_scores``, ``0_tokens``,
``0_budget``, ``0_recovery``, ``0_student``) plus ``stages`` for a pipeline's wall times.
"""

from __future__ import annotations

import io
import re

from .core.plots import budget_sweep_figure, pyplot

CURVE_PANELS = (  # (title, metric names; "*": one path segment, e.g. a mode; "**": one or more, e.g. a teacher "add/high")
    ("reward", ("reward/mean", "mode/*/reward")),
    ("reward components", ("reward_raw/*", "reward/*/*")),
    ("zero-variance groups (share)", ("reward/zero_variance_groups",)),
    ("loss", ("loss/policy", "loss/nll", "distill/loss")),
    ("KL", ("loss/kl", "distill/kl/**")),
    ("grad norm", ("loss/grad_norm", "distill/grad_norm")),
    ("clipped token share", ("loss/clipped_token_share",)),
    ("truncated share", ("response/truncated_share", "mode/*/truncated_share")),
    ("completion tokens", ("response/length_mean", "response/thinking_tokens_mean")),
    ("learning rate", ("optim/lr",)),
    ("rollout tokens/s", ("rollout/tokens_per_s",)),
    ("trainer-engine mismatch", ("mismatch/mean_abs_logp_diff",)),
)
PANELS_PER_ROW = 4


def _pyplot():
    return pyplot()


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=90)
    _pyplot().close(figure)
    return buffer.getvalue()


def _matching(metrics: list[dict], patterns) -> list[str]:
    names = dict.fromkeys(key for row in metrics for key in row)
    found: list[str] = []
    for pattern in patterns:
        regex = re.compile(".+".join("[^/]+".join(map(re.escape, part.split("*"))) for part in pattern.split("**")))
        found += [name for name in names if regex.fullmatch(name) and name not in found]
    return found


def learning_curves(metrics: list[dict]) -> bytes | None:
    panels = [(title, _matching(metrics, patterns)) for title, patterns in CURVE_PANELS]
    panels = [(title, names) for title, names in panels if names]
    if not panels:
        return None
    plt = _pyplot()
    rows, columns = -(-len(panels) // PANELS_PER_ROW), min(len(panels), PANELS_PER_ROW)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
    for axis, (title, names) in zip(axes.flat, panels):
        _draw_panel(axis, metrics, title, names)
    for axis in list(axes.flat)[len(panels):]:
        axis.set_visible(False)
    return _png(figure)


def _draw_panel(axis, metrics: list[dict], title: str, names: list[str]) -> None:
    many = len(names) > 6  # e.g. a KL per teacher: thin lines and their mean
    for name in names:
        points = [(row["step"], row[name]) for row in metrics if name in row]
        axis.plot(*zip(*points), marker="" if many else "o", markersize=3, linewidth=0.8 if many else 1.5,
                  alpha=0.35 if many else 1.0, label=None if many else name)
    if many:
        rows = [row for row in metrics if any(n in row for n in names)]
        mean = [sum(r[n] for n in names if n in r) / sum(n in r for n in names) for r in rows]
        axis.plot([r["step"] for r in rows], mean, color="black", linewidth=2, label=f"mean of {len(names)}")
    axis.set(title=title, xlabel="step")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)


def eval_over_training(curve: dict[str, list[list[float]]]) -> bytes | None:
    """Held-out score per suite/mode at each evaluated step (before = 0, ``eval.every``, after)."""
    if not curve:
        return None
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7, 3.6))
    for key, points in curve.items():
        axis.plot(*zip(*points), marker="o", markersize=4, label=key)
    axis.set(title="held-out score over training (greedy)", xlabel="step", ylabel="score", ylim=(-0.02, 1.02))
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    return _png(figure)


def suite_scores(rows: list[dict], tags: list[str]) -> bytes | None:
    if not rows or not tags:
        return None
    plt = _pyplot()
    labels = [f"{row['suite']}/{row['mode']}" for row in rows]
    height = 0.8 / len(tags)
    figure, axis = plt.subplots(figsize=(8, 0.9 + 0.45 * len(rows) * max(1, len(tags) / 2)))
    for index, tag in enumerate(tags):
        values = [row.get(tag, 0.0) for row in rows]
        positions = [i + index * height for i in range(len(rows))]
        bars = axis.barh(positions, values, height=height, label=tag)
        axis.bar_label(bars, fmt="%.2f", fontsize=7, padding=2)
    axis.set_yticks([i + height * (len(tags) - 1) / 2 for i in range(len(rows))], labels, fontsize=8)
    axis.invert_yaxis()
    axis.set(xlim=(0, 1.05), xlabel="held-out score (greedy)", title="per suite / mode")
    axis.legend(fontsize=8)
    axis.grid(axis="x", alpha=0.3)
    return _png(figure)


def token_use(per_tag: dict[str, dict[str, dict]], train: dict[str, dict]) -> bytes | None:
    """Stacked thinking + answer tokens per mode, one bar per eval tag (and the training samples)."""
    groups = {**{f"eval {tag}": modes for tag, modes in per_tag.items()}, **({"train (last quarter)": train} if train else {})}
    names = sorted({mode for modes in groups.values() for mode in modes})
    bars = [(f"{mode}\n{group}", groups[group][mode]) for mode in names for group in groups if mode in groups[group]]
    if not bars:
        return None
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(max(5, 1.1 * len(bars)), 3.6))
    labels = [label for label, _ in bars]
    thinking = [use.get("thinking", 0.0) for _, use in bars]
    answer = [use.get("answer", 0.0) for _, use in bars]
    axis.bar(labels, thinking, label="thinking")
    axis.bar(labels, answer, bottom=thinking, label="answer")
    axis.set(ylabel="mean tokens per completion", title="token use per mode")
    axis.tick_params(axis="x", labelsize=7)
    axis.legend(fontsize=8)
    axis.grid(axis="y", alpha=0.3)
    return _png(figure)


def budget_curves(sweeps: dict[str, dict]) -> bytes | None:
    return _png(budget_sweep_figure(sweeps, size=(9, 3.4))) if sweeps else None


def grouped_bars(names: list[str], series: list[tuple[str, list]], ylabel: str, title: str) -> bytes | None:
    if not names:
        return None
    plt = _pyplot()
    width = 0.8 / len(series)
    figure, axis = plt.subplots(figsize=(max(6, 0.8 * len(names)), 3.6))
    for index, (label, values) in enumerate(series):
        offset = (index - (len(series) - 1) / 2) * width
        axis.bar([i + offset for i in range(len(names))], [v or 0.0 for v in values], width, label=label)
    axis.set_xticks(range(len(names)), names, rotation=45 if len(names) > 4 else 0, ha="right" if len(names) > 4 else "center", fontsize=8)
    axis.set(ylabel=ylabel, title=title)
    axis.legend(fontsize=8)
    axis.grid(axis="y", alpha=0.3)
    return _png(figure)


def recovery(table: dict[str, dict]) -> bytes | None:
    names = list(table)
    series = [(label, [table[n][part] for n in names])
              for part, label in (("base", "student before"), ("teacher", "teacher"), ("student", "student after"))]
    return grouped_bars(names, series, "held-out accuracy (greedy)", "student vs teachers, on each teacher's suite")


def student_vs_specialists(rows: list[dict]) -> bytes | None:
    names = [f"{r['suite']}/{r['mode']}" for r in rows]
    series = [(label, [r.get(part) for r in rows]) for part, label in
              (("base", "base"), ("specialist", "specialist"), ("student", "distilled student"))]
    return grouped_bars(names, series, "held-out score (greedy)", "student vs specialists vs base")


def stage_times(stages: list[dict]) -> bytes | None:
    timed = [s for s in stages if isinstance(s.get("wall_s"), (int, float))]
    if len(timed) < 2:
        return None
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7, 0.8 + 0.4 * len(timed)))
    bars = axis.barh([s["stage"] for s in timed], [s["wall_s"] / 60 for s in timed])
    axis.bar_label(bars, fmt="%.1f", fontsize=8, padding=2)
    axis.invert_yaxis()
    axis.set(xlabel="wall time (min)", title="stages")
    axis.grid(axis="x", alpha=0.3)
    return _png(figure)


def all_figures(report: dict, runs: list) -> dict[str, bytes]:
    """Every plot of the report that has data, by name (see the module docstring)."""
    figures = {"stages": stage_times(report["stages"])}
    for index, (section, run) in enumerate(zip(report["sections"], runs, strict=True)):
        figures |= {
            f"{index}_curves": learning_curves(run.metrics),
            f"{index}_eval_curve": eval_over_training(section.get("eval_curve") or {}),
            f"{index}_scores": suite_scores(section["scores"], section["eval_tags"]),
            f"{index}_tokens": token_use(section["token_use"], section["train_token_use"]),
            f"{index}_budget": budget_curves(section["budget_sweeps"]),
            f"{index}_recovery": recovery(section.get("recovery") or {}),
            f"{index}_student": student_vs_specialists(section.get("student_table") or []),
        }
    return {name: png for name, png in figures.items() if png is not None}
