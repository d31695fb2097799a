"""The pipeline's last stage: the distilled student on every specialist's held-out suites.

For each specialist (a distillation domain) the student is evaluated on that
domain's suites in each mode the specialist taught, greedy, by the suites' own
scorers; the table puts it beside the base model and the specialist (their
``before``/``after`` evals from the specialist stage, same suites and modes).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from .core.checkpoints import engine_model_dir
from .core.driver import start_engine, stop_engines
from .core.evaluation import cells_for, report_of, score_cells
from .core.models import load_tokenizer
from .core.tasks import make_task

log = logging.getLogger("posttrain.pipeline")


def evaluate_student(recipe, specialists: dict, checkpoint: str, out_dir: Path) -> dict:
    """``{"table": [{domain, suite, mode, base, specialist, student}], "reports": {domain: path}}``.

    Every domain's suites in every teacher mode go through one batched eval on one engine.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    cells = {name: _domain_cells(recipe, specialist) for name, specialist in specialists.items()}
    with engine_model_dir(checkpoint, trust_remote_code=recipe.model.trust_remote_code) as model_dir:
        engine = start_engine(recipe, model_dir)
        tokenizer = load_tokenizer(model_dir, recipe.model)
        try:
            flat = [cell for domain_cells in cells.values() for cell in domain_cells]
            results = iter(score_cells(engine, tokenizer, flat, recipe.thinking_tags))
        finally:
            stop_engines(engine)
    table, reports = [], {}
    for name, specialist in specialists.items():
        report = report_of([next(results) for _ in cells[name]])
        reports[name] = str(out_dir / f"{name}.json")
        Path(reports[name]).write_text(json.dumps(report, indent=2))
        table += _rows(name, report, Path(specialist.run.output_dir) / specialist.run.name / "eval")
    (out_dir / "table.json").write_text(json.dumps(table, indent=2))
    return {"table": table, "reports": reports}


def _domain_cells(recipe, specialist) -> list:
    """The specialist's held-out suites, in each mode it taught, for the student."""
    task = make_task(specialist.task, seed=recipe.run.seed)
    suites = task.heldout_suites(_suite_names(recipe, specialist, task), specialist.eval.num_problems)
    names = recipe.pipeline.teacher_modes or list(specialist.task.modes)
    return cells_for(task, suites, {name: recipe.modes[name] for name in names})


def _suite_names(recipe, specialist, task) -> list[str] | None:
    """``pipeline.eval_suites`` narrowed to those this domain has; else the specialist's own eval suites."""
    if not recipe.pipeline.eval_suites:
        return specialist.eval.suites
    own = []
    for name in recipe.pipeline.eval_suites:
        try:
            task.heldout_suites([name], 1)
            own.append(name)
        except (ValueError, KeyError):
            continue
    return own or specialist.eval.suites


def _rows(domain: str, report: dict, specialist_eval: Path) -> list[dict]:
    before, after = (_load(specialist_eval / f"{tag}.json") for tag in ("before", "after"))
    return [
        {
            "domain": domain, "suite": entry["suite"], "mode": entry["mode"],
            "base": before.get(key, {}).get("accuracy"), "specialist": after.get(key, {}).get("accuracy"),
            "student": entry["accuracy"],
            "student_thinking_tokens": entry["mean_thinking_tokens"], "student_answer_tokens": entry["mean_answer_tokens"],
        }
        for key, entry in report.items()
    ]


def _load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}

