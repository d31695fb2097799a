"""Run one training recipe (SFT then a GRPO specialist, or a distillation) into its run directory.

The application's single entry into the loops: ``posttrain run`` calls it for a
plain recipe, the pipeline calls it for each stage inside the stage's placement group.

A recipe with ``sft:`` runs SFT first, into ``runs/<name>/sft/`` (its own metrics,
samples, checkpoints and evals), and GRPO then starts from SFT's final weights
(``runs/<name>/sft/model``: a LoRA adapter merged into its base) in
``runs/<name>/`` as usual. SFT's evals are GRPO's "before": they are copied to
``eval/base*.json`` (before SFT) and ``eval/before*.json`` (after SFT) rather than
run again, so the run's budget-sweep plot shows base, SFT and GRPO together.
"""

from __future__ import annotations

import shutil

from distill.opd import distill_student
from specialists.loop import train_specialist
from specialists.sft import train_sft

from .core.models import resolve_model
from .core.rundir import RunDir
from .core.schema import Recipe

SFT_EVALS = {"before": "base", "after": "before"}  # SFT's eval tag -> its tag in the GRPO run


def train_recipe(recipe: Recipe) -> dict:
    """One run into its run directory; its results (evals, checkpoint; with SFT, ``sft``: SFT's)."""
    run = RunDir(recipe.run.output_dir, recipe.run.name)
    run.save_recipe(recipe)
    model_path = resolve_model(recipe.model.path)
    try:
        if recipe.distill is not None:
            return distill_student(recipe, model_path, run)
        if recipe.sft is None:
            return train_specialist(recipe, model_path, run)
        return _sft_then_grpo(recipe, model_path, run)
    finally:
        run.close()


def _sft_then_grpo(recipe: Recipe, model_path: str, run: RunDir) -> dict:
    sft_run = RunDir(run.path, "sft")
    sft_run.save_recipe(recipe)
    try:
        sft = train_sft(recipe, model_path, sft_run)
    finally:
        sft_run.close()
    if recipe.grpo.steps == 0:
        return {**sft, "sft": sft}
    copied = _copy_sft_evals(sft_run, run)
    grpo_recipe = recipe
    if "before" in copied:  # the SFT model was just evaluated: no second eval of the same weights
        grpo_recipe = recipe.model_copy(update={"eval": recipe.eval.model_copy(update={"before": False})})
    results = train_specialist(grpo_recipe, sft["model"], run)
    return {**copied, **results, "sft": sft}


def _copy_sft_evals(sft_run: RunDir, run: RunDir) -> dict[str, dict]:
    """SFT's eval files under their GRPO-run tags; the reports copied, by GRPO tag."""
    copied = {}
    for sft_tag, tag in SFT_EVALS.items():
        report = sft_run.load_eval(sft_tag)
        if report is None:
            continue
        copied[tag] = report
        for suffix in (".json", "_budget_sweep.json", "_outputs.jsonl"):
            source = sft_run.path / "eval" / f"{sft_tag}{suffix}"
            if source.exists():
                (run.path / "eval").mkdir(exist_ok=True)
                shutil.copyfile(source, run.path / "eval" / f"{tag}{suffix}")
    return copied
