"""Run one training recipe (a GRPO specialist or a distillation) into its run directory.

The application's single entry into the loops: ``posttrain run`` calls it for a
plain recipe, the pipeline calls it for each stage inside the stage's placement group.
"""

from __future__ import annotations

from distill.opd import distill_student
from specialists.loop import train_specialist

from .core.models import resolve_model
from .core.rundir import RunDir
from .core.schema import Recipe


def train_recipe(recipe: Recipe) -> dict:
    """One GRPO specialist or distillation run into its run directory; its results (evals, checkpoint)."""
    run = RunDir(recipe.run.output_dir, recipe.run.name)
    run.save_recipe(recipe)
    model_path = resolve_model(recipe.model.path)
    try:
        if recipe.distill is not None:
            return distill_student(recipe, model_path, run)
        return train_specialist(recipe, model_path, run)
    finally:
        run.close()
