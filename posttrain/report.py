"""The run report: ``posttrain report RUN_DIR [RUN_DIR ...]``.

Reads run directories as the code writes them (``posttrain/rundir.py``) and writes
``report.json`` (the headline numbers), ``report.html`` (self-contained: tables and
plots as base64 PNG) and ``report.md`` (PNGs beside it in ``report_files/``).

Per run: held-out score per suite/mode for every eval tag (``before`` -> ``after``),
train reward (or distillation loss) first -> last quarter of the steps, time per
phase, thinking/answer tokens per mode, the accuracy-vs-budget sweeps, for a
distillation run its student-vs-teachers recovery table, and (``posttrain/report_details.py``)
the held-out score over training (``eval.every``), sample completions and the resolved config. A pipeline directory
(``pipeline.json`` and/or ``stages/<name>/``, each stage a run directory) gives a
section per stage and a table of stage wall times; ``summarize_stages`` takes any
list of ``(stage name, run dir)`` so it does not depend on that layout.

It only reads; it never starts an engine or changes the run directory besides
writing the report files.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .core.rundir import DamagedLog, read_jsonl
from .report_details import eval_curve, flat_config, sample_rows, step_of_tag
from .report_plots import all_figures
from .report_render import headline_lines, render_html, render_markdown

TAG_ORDER = ("before", "after")


@dataclass
class RunData:
    """What a run directory holds, loaded once; plots and summaries read from it."""

    name: str
    path: Path
    recipe: dict = field(default_factory=dict)
    metrics: list[dict] = field(default_factory=list)
    evals: dict[str, dict] = field(default_factory=dict)  # tag -> eval json (budget sweeps apart)
    sweeps: dict[str, dict] = field(default_factory=dict)  # tag -> budget sweep json
    student_table: list[dict] = field(default_factory=list)  # a pipeline's eval stage: base / specialist / student
    step_evals: dict[int, dict] = field(default_factory=dict)  # eval.every: step -> eval json (eval/step_N.json)
    samples: list[dict] = field(default_factory=list)  # samples.jsonl
    outputs: dict[str, list[dict]] = field(default_factory=dict)  # tag -> eval/<tag>_outputs.jsonl rows


def load_run(path: str | Path, name: str | None = None) -> RunData:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"run directory {str(path)!r} does not exist")
    data = RunData(name or path.name, path)
    if (path / "recipe.yaml").exists():
        data.recipe = yaml.safe_load((path / "recipe.yaml").read_text()) or {}
    if (path / "metrics.jsonl").exists():  # an interrupted run may leave a torn last line: dropped
        data.metrics = read_jsonl(path / "metrics.jsonl")
    if (path / "samples.jsonl").exists():
        data.samples = read_jsonl(path / "samples.jsonl")
    for file in sorted((path / "eval").glob("*.json")):
        if (step := step_of_tag(file.stem)) is not None:
            data.step_evals[step] = json.loads(file.read_text())
            continue
        target = data.sweeps if file.stem.endswith("_budget_sweep") else data.evals
        target[file.stem.removesuffix("_budget_sweep")] = json.loads(file.read_text())
    for file in sorted((path / "eval").glob("*_outputs.jsonl")):
        data.outputs[file.name.removesuffix("_outputs.jsonl")] = read_jsonl(file)
    _load_student_eval(path, data)
    data.evals = {tag: data.evals[tag] for tag in ordered_tags(data.evals)}
    data.sweeps = {tag: data.sweeps[tag] for tag in ordered_tags(data.sweeps)}
    return data


def _load_student_eval(path: Path, data: RunData) -> None:
    """A pipeline's eval stage: ``table.json`` (rows: domain, suite, mode, base, specialist, student)
    and one eval json per domain beside it, read as the tag ``student``."""
    if not (path / "table.json").exists():
        return
    data.student_table = json.loads((path / "table.json").read_text())
    merged = {}
    for file in sorted(path.glob("*.json")):
        report = json.loads(file.read_text()) if file.name != "table.json" else {}
        if isinstance(report, dict) and report and all(isinstance(v, dict) and "accuracy" in v for v in report.values()):
            merged |= report
    if merged:
        data.evals["student"] = merged


def ordered_tags(tags) -> list[str]:
    return [t for t in TAG_ORDER if t in tags] + sorted(t for t in tags if t not in TAG_ORDER)


def run_type(data: RunData) -> str:
    if data.recipe.get("distill") or any("student" in e for e in data.evals.values()):
        return "distill"
    if data.student_table:
        return "student_eval"
    if data.recipe.get("task") or data.metrics:
        return "grpo"
    return "eval" if data.evals else "other"


# ---- per-suite/mode scores ------------------------------------------------


def suite_entries(report: dict) -> dict[str, dict]:
    """``{"suite/mode": entry}`` of one eval json: GRPO/``posttrain eval`` (``suite/mode`` keys;
    pre-modes runs keyed by suite alone), or distillation (the student per ``domain/mode``)."""
    if "student" in report:
        entries = report["student"]
        return {key: {"suite": key.split("/")[0], "mode": key.partition("/")[2] or "default", **v} for key, v in entries.items()}
    out = {}
    for key, entry in report.items():
        if not isinstance(entry, dict) or "accuracy" not in entry:
            continue
        suite, mode = entry.get("suite", key), entry.get("mode", "default")
        out[f"{suite}/{mode}"] = {**entry, "suite": suite, "mode": mode}
    return out


def score_rows(evals: dict[str, dict]) -> list[dict]:
    """One row per suite/mode: accuracy at each tag, and after - before when both exist."""
    rows: dict[str, dict] = {}
    for tag, report in evals.items():
        for key, entry in suite_entries(report).items():
            row = rows.setdefault(key, {"suite": entry["suite"], "mode": entry["mode"], "problems": entry.get("problems")})
            row[tag] = entry["accuracy"]
            for name, value in entry.items():
                if name.startswith("pass@"):
                    row[f"{tag} {name}"] = value
    for row in rows.values():
        if "before" in row and "after" in row:
            row["delta"] = row["after"] - row["before"]
    return list(rows.values())


def token_use(evals: dict[str, dict]) -> dict[str, dict[str, dict[str, float]]]:
    """``{tag: {mode: {"thinking": mean tokens, "answer": mean tokens}}}``, averaged over suites."""
    out = {}
    for tag, report in evals.items():
        per_mode: dict[str, list[dict]] = {}
        for entry in suite_entries(report).values():
            per_mode.setdefault(entry["mode"], []).append(entry)
        out[tag] = {
            mode: {
                "thinking": _mean([e.get("mean_thinking_tokens", 0.0) for e in entries]),
                "answer": _mean([e.get("mean_answer_tokens", e.get("mean_completion_tokens", 0.0)) for e in entries]),
            }
            for mode, entries in per_mode.items()
        }
    return out


# ---- training -------------------------------------------------------------


def train_metric(metrics: list[dict]) -> str | None:
    for name in ("reward/mean", "distill/loss"):
        if any(name in row for row in metrics):
            return name
    return None


def train_summary(metrics: list[dict]) -> dict | None:
    """The headline training number (reward, or distillation loss) over the first and last quarter."""
    name = train_metric(metrics)
    if name is None:
        return None
    values = [row[name] for row in metrics if name in row]
    quarter = max(1, len(values) // 4)
    return {
        "metric": name,
        "steps": len(metrics),
        "last_step": max(row.get("step", 0) for row in metrics),
        "first_quarter": _mean(values[:quarter]),
        "last_quarter": _mean(values[-quarter:]),
    }


def train_token_use(metrics: list[dict]) -> dict[str, dict[str, float]]:
    """Per mode, the training samples' thinking and answer tokens over the last quarter of the steps."""
    tail = metrics[-max(1, len(metrics) // 4) :]
    modes = sorted({key.split("/")[1] for row in tail for key in row if key.startswith("mode/")})
    return {
        mode: {
            part: _mean([row[f"mode/{mode}/{part}_tokens"] for row in tail if f"mode/{mode}/{part}_tokens" in row])
            for part in ("thinking", "answer")
        }
        for mode in modes
    }


def time_summary(data: RunData) -> dict:
    """Seconds per phase summed over the steps, and the span of the run directory's writes."""
    phases: dict[str, float] = {}
    for row in data.metrics:
        for key, value in row.items():
            if key.startswith("time/") and key != "time/step":
                phases[key.removeprefix("time/")] = phases.get(key.removeprefix("time/"), 0.0) + value
    steps_s = sum(row.get("time/step", 0.0) for row in data.metrics)
    written = [p.stat().st_mtime for p in data.path.rglob("*") if p.is_file() and not p.name.startswith("report")]
    info = data.path / "eval_info.json"  # `posttrain eval` output: its own wall time
    if info.exists() and (seconds := json.loads(info.read_text()).get("seconds")) is not None:
        written = [0.0, seconds]
    return {
        "train_s": steps_s,
        "mean_step_s": steps_s / len(data.metrics) if data.metrics else None,
        "phases_s": phases,
        # first to last file written: engine start-up and evals included; a resumed run counts the pause too
        "span_s": max(written) - min(written) if written else None,
    }


def _last_step(data: RunData) -> int | None:
    """Where the ``after`` eval sits on the step axis: the recipe's step count, else after the last logged step."""
    steps = ((data.recipe.get("grpo") or {}).get("steps") if data.recipe.get("task") else None)
    if steps is None and data.metrics:
        steps = max(row.get("step", 0) for row in data.metrics) + 1
    return steps


def checkpoints(path: Path) -> list[int]:
    found = [p.name.removeprefix("step_") for p in (path / "checkpoints").glob("step_*")]
    return sorted(int(step) for step in found if step.isdigit())


# ---- the report -----------------------------------------------------------


def summarize_run(data: RunData) -> dict:
    steps = checkpoints(data.path)
    summary = {
        "name": data.name,
        "path": str(data.path),
        "type": run_type(data),
        "model": (data.recipe.get("model") or {}).get("path"),
        "train": train_summary(data.metrics),
        "times": time_summary(data),
        "eval_tags": list(data.evals),
        "scores": score_rows(data.evals),
        "token_use": token_use(data.evals),
        "train_token_use": train_token_use(data.metrics),
        "budget_sweeps": data.sweeps,
        "checkpoints": steps,
        "final_checkpoint": str(data.path / "checkpoints" / f"step_{steps[-1]}") if steps else None,
        "eval_curve": eval_curve(data.evals, data.step_evals, _last_step(data)),
        "samples": sample_rows(data.samples, data.outputs),
        "config": flat_config(data.recipe),
    }
    recovery = next((e["recovery"] for e in reversed(data.evals.values()) if "recovery" in e), None)
    if recovery is not None:
        summary["recovery"] = recovery
    if data.student_table:
        summary["student_table"] = data.student_table
    return summary


def summarize_stages(stages: list[tuple[str, Path]], meta: dict | None = None) -> tuple[dict, list[RunData]]:
    """A report over ``(name, run dir)`` pairs; ``meta`` (``{name: {"status", "wall_s"}}``) fills the stage table."""
    meta = meta or {}
    runs = [load_run(path, name) for name, path in stages if Path(path).is_dir()]
    sections = [summarize_run(run) for run in runs]
    table = []
    for name, path in stages:
        info = meta.get(name, {})
        section = next((s for s in sections if s["name"] == name), None)
        wall = info.get("wall_s")
        if wall is None and section is not None:
            wall = section["times"]["span_s"]
        table.append({"stage": name, "status": info.get("status", "done" if section else "missing"), "wall_s": wall, "path": str(path)})
    return {"generated": time.strftime("%Y-%m-%d %H:%M:%S"), "stages": table, "sections": sections}, runs


def discover(path: Path) -> tuple[list[tuple[str, Path]], dict]:
    """A run directory -> one stage; a pipeline directory -> its stages (pipeline.json order, then
    any other directory under stages/)."""
    pipeline_file, stage_root = path / "pipeline.json", path / "stages"
    if not pipeline_file.exists() and not stage_root.is_dir():
        return [(path.name, path)], {}
    meta = {}
    for name, info in _ledger(pipeline_file).items():
        outputs = info.get("outputs") if isinstance(info.get("outputs"), dict) else {}
        where = info.get("run_dir") or info.get("path") or outputs.get("run_dir")
        meta[name] = {
            "status": info.get("status", "?"),
            "wall_s": next((info[k] for k in ("wall_s", "seconds", "wall_time_s", "elapsed_s") if k in info), None),
            "path": _stage_path(path, stage_root, name, where),
        }
    extra = sorted(p.name for p in stage_root.iterdir() if p.is_dir()) if stage_root.is_dir() else []
    extra = [name for name in extra if all(Path(info["path"]).name != name for info in meta.values())]
    return [(name, Path(info["path"])) for name, info in meta.items()] + [(name, stage_root / name) for name in extra], meta


def _ledger(pipeline_file: Path) -> dict[str, dict]:
    """``{stage: {status, seconds, outputs}}`` (the pipeline driver's ledger), or ``{"stages": [...]}``."""
    if not pipeline_file.exists():
        return {}
    data = json.loads(pipeline_file.read_text())
    listed = data.get("stages", data) if isinstance(data, dict) else data
    if isinstance(listed, list):
        return {info["name"]: info for info in listed}
    return {name: info for name, info in listed.items() if isinstance(info, dict)}


def _stage_path(root: Path, stage_root: Path, name: str, where: str | None) -> Path:
    """Where a stage's run directory is: as recorded (absolute, or relative to the pipeline or the
    working directory), else ``stages/<its basename or the stage name>``."""
    if where:
        for candidate in (Path(where), root / where, stage_root / Path(where).name):
            if candidate.is_dir():
                return candidate
    return stage_root / name


def build_report(paths: list[Path]) -> tuple[dict, list[RunData]]:
    stages, meta = [], {}
    for path in paths:
        if not Path(path).is_dir():
            raise FileNotFoundError(f"run directory {str(path)!r} does not exist")
        found, found_meta = discover(Path(path))
        prefix = f"{Path(path).name}/" if len(paths) > 1 and found_meta else ""
        stages += [(prefix + name, where) for name, where in found]
        meta |= {prefix + name: info for name, info in found_meta.items()}
    report, runs = summarize_stages(stages, meta)
    report["pipeline"] = bool(meta) or len(stages) > 1
    return report, runs


def write_report(report: dict, runs: list[RunData], out: Path, formats: list[str]) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "report.json"]
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    figures = all_figures(report, runs)
    if "html" in formats:
        written.append(out / "report.html")
        written[-1].write_text(render_html(report, figures))
    if "md" in formats:
        assets = out / "report_files"
        assets.mkdir(exist_ok=True)
        for name, png in figures.items():
            (assets / f"{name}.png").write_bytes(png)
        written.append(out / "report.md")
        written[-1].write_text(render_markdown(report, {name: f"report_files/{name}.png" for name in figures}))
    return written


def report_dirs(paths: list[str | Path], out: Path | None = None, formats=("html", "md")) -> list[Path]:
    """Build and write the report of ``paths`` (a run or pipeline directory, or several) into ``out``
    (default: the one directory given); returns the files written. For drivers: the end of a run."""
    paths = [Path(p) for p in paths]
    report, runs = build_report(paths)
    return write_report(report, runs, out or (paths[0] if len(paths) == 1 else Path("report")), list(formats))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="posttrain report", description="JSON + HTML/Markdown report of run directories")
    add_arguments(parser)
    return run_report(parser.parse_args(argv))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", nargs="+", type=Path, help="run directories, or a pipeline directory")
    parser.add_argument("--output", type=Path, default=None, help="default: the run directory (one), ./report (several)")
    parser.add_argument("--format", default="html,md", help="comma-separated: html, md (report.json is always written)")


def run_report(args) -> int:
    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    if bad := [f for f in formats if f not in ("html", "md")]:
        print(f"error: --format: unknown {bad}; use html and/or md", file=sys.stderr)
        return 2
    try:
        report, runs = build_report(args.run_dirs)
    except (FileNotFoundError, DamagedLog, json.JSONDecodeError, yaml.YAMLError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    out = args.output or (args.run_dirs[0] if len(args.run_dirs) == 1 else Path("report"))
    for path in write_report(report, runs, out, formats):
        print(path)
    print("\n".join(headline_lines(report)))
    return 0


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


if __name__ == "__main__":
    sys.exit(main())
