"""``posttrain`` command line: ``posttrain run RECIPE [key=value ...]``, ``check``, ``fields``,
``eval CHECKPOINT --suites ...`` (posttrain/evaluate.py), ``report RUN_DIR ...`` (posttrain/report.py),
``export RUN_OR_CHECKPOINT --out DIR`` (posttrain/export.py)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from ray.exceptions import ActorDiedError, RayActorError

from .core.rundir import DamagedLog, RunDir
from .evaluate import add_arguments as add_eval_arguments
from .evaluate import run_eval_command
from .export import add_arguments as add_export_arguments
from .export import run_export_command
from .fieldref import field_reference
from .pipeline import StageFailed, run_pipeline, stage_seconds
from .raycluster import init_ray
from .recipe import RecipeError, load_recipe
from .report import add_arguments as add_report_arguments
from .report import report_dirs, run_report
from .runner import train_recipe

log = logging.getLogger("posttrain")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="posttrain", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a recipe")
    run.add_argument("recipe", help="path to a recipe YAML")
    run.add_argument("overrides", nargs="*", help="dotted overrides, e.g. grpo.steps=5 trainer.lr=1e-5")
    check = sub.add_parser("check", help="validate a recipe without running it")
    check.add_argument("recipe")
    check.add_argument("overrides", nargs="*")
    sub.add_parser("fields", help="print the reference of every recipe field (Markdown)")
    add_report_arguments(sub.add_parser("report", help="JSON + HTML/Markdown report of run directories"))
    add_eval_arguments(sub.add_parser("eval", help="evaluate a checkpoint or model on held-out suites"))
    add_export_arguments(sub.add_parser("export", help="a checkpoint as a plain HF model directory (or peft adapter)"))
    args = parser.parse_args(argv)
    if args.command == "export":
        return run_export_command(args)
    if args.command in ("report", "eval"):
        return (run_report if args.command == "report" else run_eval_command)(args)
    if args.command == "fields":
        print(field_reference(), end="")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    try:
        recipe = load_recipe(args.recipe, args.overrides)
    except RecipeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.command == "check":
        print(f"{args.recipe}: ok")
        return 0
    return run_recipe(recipe)


def run_recipe(recipe) -> int:
    started = time.perf_counter()
    run_dir = Path(recipe.run.output_dir) / recipe.run.name
    if recipe.pipeline is None and recipe.run.resume and run_dir.is_dir():
        try:  # a damaged log would stop the resume only after the actors started (minutes)
            RunDir(run_dir.parent, run_dir.name).check_logs()
        except DamagedLog as error:
            print(f"error: cannot resume: {error}", file=sys.stderr)
            return 1
    init_ray()  # RAY_ADDRESS / `ray job submit`, a `ray start` cluster here, else a local one
    if recipe.pipeline is not None:
        return _run_pipeline(recipe, started)
    try:
        results = train_recipe(recipe)
    except Exception as error:
        if not _is_dead_actor(error):
            raise
        print(dead_actor_message(error, run_dir), file=sys.stderr)
        return 1
    if recipe.distill is not None:
        _print_distill_summary(results, run_dir, time.perf_counter() - started)
    else:
        _print_summary(results, run_dir, time.perf_counter() - started)
    _write_report(run_dir)
    return 0


def _is_dead_actor(error: BaseException) -> bool:
    return isinstance(error, (RayActorError, ActorDiedError))


def dead_actor_message(error: BaseException, run_dir: Path) -> str:
    """What a user reads when an engine/trainer/teacher actor died under the run (OOM kill,
    segfault, lost node): which actor, that the checkpoints are intact, and how to resume."""
    cause = str(error).strip().splitlines()
    latest = RunDir(run_dir.parent, run_dir.name).latest_checkpoint()
    kept = f"the newest checkpoint, {latest[1]}, is intact" if latest else "no checkpoint had been written yet"
    return (
        f"error: a Ray actor of this run died: {cause[0] if cause else type(error).__name__}\n"
        f"  The run stopped; {kept}.\n"
        f"  Re-run the same command to resume from it (the step in flight is redone).\n"
        f"  Ray's account: {' '.join(line.strip() for line in cause[1:6])}"
    )


def _write_report(run_dir: Path) -> None:
    """The run's report (report.json, report.html, report.md): a failure here never fails the run."""
    try:
        written = report_dirs([run_dir])
        print(f"  report: {', '.join(str(path) for path in written)}")
    except Exception:  # noqa: BLE001 - the run's outputs are already safe on disk
        log.exception("could not write the report of %s (posttrain report %s retries)", run_dir, run_dir)


def _run_pipeline(recipe, started: float) -> int:
    root = RunDir(recipe.run.output_dir, recipe.run.name)
    root.save_recipe(recipe)
    try:
        results = run_pipeline(recipe)
    except StageFailed as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"\nrun directory: {root.path}   wall time: {(time.perf_counter() - started) / 60:.1f} min")
    for stage, seconds in stage_seconds(root.path / "pipeline.json").items():
        print(f"  stage {stage:28s} {seconds / 60:6.1f} min")
    for row in results["eval"].get("table", []):
        print(f"  {row['domain']:>10s} {row['suite']:>28s} {row['mode']:>10s}: base {_fmt(row['base'])} "
              f"specialist {_fmt(row['specialist'])} student {_fmt(row['student'])}")
    _write_report(root.path)
    return 0


def _fmt(value) -> str:
    return "  n/a" if value is None else f"{value:.3f}"


def _print_summary(results: dict, run_dir: Path, seconds: float) -> None:
    print(f"\nrun directory: {run_dir}   wall time: {seconds / 60:.1f} min")
    for tag in ("base", "before", "after"):  # base: before SFT, when the recipe has an SFT stage
        for suite, report in results.get(tag, {}).items():
            extra = " ".join(f"{k} {v:.3f}" for k, v in report.items() if k.startswith("pass@"))
            tokens = f"thinking {report.get('mean_thinking_tokens', 0):.1f} + answer {report.get('mean_answer_tokens', 0):.1f} tok"
            print(f"  held-out {tag:6s} {suite}: accuracy {report['accuracy']:.3f} {extra} {tokens}")
    _print_sweeps(run_dir)
    metrics = RunDir(run_dir.parent, run_dir.name).read_metrics()
    if metrics and "reward/mean" in metrics[0]:
        first, last = metrics[: max(1, len(metrics) // 4)], metrics[-max(1, len(metrics) // 4) :]
        mean = lambda rows: sum(r["reward/mean"] for r in rows) / len(rows)  # noqa: E731
        print(f"  train reward: first quarter {mean(first):.3f} -> last quarter {mean(last):.3f}")
    print(f"  checkpoint: {results.get('checkpoint')}")


def _print_sweeps(run_dir: Path) -> None:
    """The budget sweep of every saved eval tag: accuracy (forced-close share) per thinking budget."""
    for path in sorted((run_dir / "eval").glob("*_budget_sweep.json")):
        sweep = json.loads(path.read_text())
        cells = " ".join(f"{p['budget']}:{p['accuracy']:.2f}({p['forced_close_share']:.0%})" for p in sweep["points"])
        print(f"  budget sweep {path.name.removesuffix('_budget_sweep.json'):6s} [{sweep['mode']}] {cells}")


def _print_distill_summary(results: dict, run_dir: Path, seconds: float) -> None:
    print(f"\nrun directory: {run_dir}   wall time: {seconds / 60:.1f} min")
    table = results.get("after", {}).get("recovery", {})
    if table:
        header = ("base", "teacher", "student", "recovered", "KL before", "KL after", "think+answer tok")
        print(f"  {'teacher':20s} " + " ".join(f"{h:>9s}" for h in header))
    for name, row in table.items():
        recovered = "n/a" if row["recovered"] is None else f"{row['recovered']:.0%}"
        kl = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
        tokens = f"{row['student_thinking_tokens']:.0f}+{row['student_answer_tokens']:.0f}"
        print(
            f"  {name:20s} {row['base']:9.3f} {row['teacher']:9.3f} {row['student']:9.3f} {recovered:>9s} "
            f"{kl(row['kl_before']):>9s} {kl(row['kl_after']):>9s} {tokens:>16s}"
        )
    print(f"  checkpoint: {results.get('checkpoint')}")


if __name__ == "__main__":
    sys.exit(main())
