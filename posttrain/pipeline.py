"""The whole recipe in one driver: specialists -> teachers -> on-policy distillation -> eval.

A pipeline recipe names a GRPO recipe per specialist and one distillation
recipe; the pipeline imposes what must agree across stages (the model section:
base model and context window; the effort modes, the thinking tags, the seed) and fills in the distillation's
domains (each specialist's task) and teachers (each specialist's final
checkpoint, in each mode it teaches). Every stage is validated before any work
starts. Run directory::

    runs/<name>/
      recipe.yaml, pipeline.json        the pipeline recipe; each stage's status, seconds, outputs
      stages/specialist-<name>/         a GRPO run directory per specialist
      stages/teachers.json              the teacher registry the distillation used
      stages/distill/                   the on-policy distillation run directory
      stages/eval/                      the student on every domain's held-out suites

Each stage runs as a Ray task inside its own placement group (the CPUs/GPUs of
its engine, trainer and teacher pool), so specialists run side by side when the
cluster has room and queue when it does not, on one machine or many. Re-running
skips finished stages and resumes an interrupted one from its last checkpoint.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import ray

from .core.placement import stage_resources
from .core.schema import Recipe
from .core.checkpoints import saved_checkpoint
from .export import export_checkpoint
from .recipe import distill_recipe, final_checkpoint_dir, specialist_recipes, stages_dir, teacher_dir
from .runner import train_recipe
from .stages import StageFailed, StageLedger, run_in_placement_group
from .student_eval import evaluate_student

log = logging.getLogger("posttrain.pipeline")


def run_pipeline(recipe: Recipe) -> dict:
    """Run (or resume) every stage; returns ``{stage: outputs}``. Raises ``StageFailed`` naming the stage."""
    ledger = StageLedger(Path(recipe.run.output_dir) / recipe.run.name / "pipeline.json")
    specialists = specialist_recipes(recipe)
    results = {"specialists": _run_specialists(recipe, specialists, ledger)}
    results["teachers"] = ledger.run("teachers", lambda: _register_teachers(recipe, specialists))
    student = distill_recipe(recipe, specialists)
    results["distill"] = ledger.run("distill", lambda: run_in_placement_group(_run_stage, student, _resources(student)))
    eval_job = lambda: run_in_placement_group(_evaluate_student, recipe, _resources(recipe, trainer=False), results)  # noqa: E731
    results["eval"] = ledger.run("eval", eval_job)
    return results


def _run_specialists(recipe: Recipe, specialists: dict[str, Recipe], ledger: StageLedger) -> dict:
    names = {f"specialist-{name}": specialist for name, specialist in specialists.items()}
    if recipe.pipeline.parallel_specialists:
        return ledger.run_parallel({stage: (_run_stage, spec, _resources(spec)) for stage, spec in names.items()})
    return {stage: ledger.run(stage, lambda s=spec: run_in_placement_group(_run_stage, s, _resources(s)))
            for stage, spec in names.items()}


def _resources(recipe: Recipe, trainer: bool = True) -> dict[str, float]:
    """The placement-group bundle a stage needs: its engine, trainer ranks and (distillation) teacher pool."""
    return stage_resources(recipe, trainer)


def _run_stage(recipe: Recipe) -> dict:
    """A specialist or distillation run (inside its placement group); JSON-able outputs."""
    results = train_recipe(recipe)
    return {
        "run_dir": str(Path(recipe.run.output_dir) / recipe.run.name), "checkpoint": results.get("checkpoint"),
        "after": _headline(results.get("after")), "node": ray.get_runtime_context().get_node_id(),
    }


def _headline(report: dict | None) -> dict:
    if not report:
        return {}
    if "recovery" in report:
        return {name: row["student"] for name, row in report["recovery"].items()}
    return {name: entry["accuracy"] for name, entry in report.items() if isinstance(entry, dict) and "accuracy" in entry}


def _register_teachers(recipe: Recipe, specialists: dict[str, Recipe]) -> dict:
    """Check every teacher checkpoint against the student (tokenizer, vocabulary, head) and record the registry."""
    for name, specialist in specialists.items():
        plain = teacher_dir(recipe, name, specialist)
        if specialist.trainer.world_size > 1 and not plain.exists():  # a trainer group's shards, read back once
            weights = saved_checkpoint(final_checkpoint_dir(recipe, name, specialist), trust_remote_code=recipe.model.trust_remote_code)
            export_checkpoint(weights, plain, adapter=weights.adapter is not None)
            log.info("specialist %s: its sharded checkpoint exported for the teachers to %s", name, plain)
    student = distill_recipe(recipe, specialists, check_files=True)  # raises RecipeError naming a bad teacher
    target = stages_dir(recipe) / "teachers.json"
    teachers = [t.model_dump(mode="json") for t in student.distill.teachers]
    target.write_text(json.dumps(teachers, indent=2))
    log.info("teacher registry: %d teachers (%s)", len(teachers), ", ".join(f"{t['domain']}/{t['mode']}" for t in teachers))
    return {"registry": str(target), "teachers": len(teachers)}


def _evaluate_student(recipe: Recipe, results: dict) -> dict:
    """The distilled student on each specialist's held-out suites, in each teacher mode, beside its specialist."""
    specialists = specialist_recipes(recipe)
    return evaluate_student(recipe, specialists, results["distill"]["checkpoint"], stages_dir(recipe) / "eval")


def stage_seconds(ledger_path: Path) -> dict[str, float]:
    ledger = json.loads(ledger_path.read_text()) if ledger_path.exists() else {}
    return {name: entry.get("seconds", 0.0) for name, entry in ledger.items()}


__all__ = ["StageFailed", "distill_recipe", "run_pipeline", "specialist_recipes", "stage_seconds"]
