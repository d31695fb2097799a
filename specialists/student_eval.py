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

import ray

from posttrain.checkpoints import engine_model_dir
from rollout.engine import EngineConfig, engine_actor

from .eval import evaluate_suites
from .task import make_task

log = logging.getLogger("posttrain.pipeline")


def evaluate_student(recipe, specialists: dict, checkpoint: str, out_dir: Path) -> dict:
    """``{"table": [{domain, suite, mode, base, specialist, student}], "reports": {domain: path}}``."""
    from transformers import AutoTokenizer

    out_dir.mkdir(parents=True, exist_ok=True)
    table, reports = [], {}
    with engine_model_dir(checkpoint) as model_dir:
        engine_cfg = _engine_config(recipe, model_dir)
        engine = engine_actor(engine_cfg, num_cpus=recipe.engine.num_cpus, num_gpus=recipe.engine.num_gpus)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        ray.get(engine.ready.remote())
    try:
        for name, specialist in specialists.items():
            report = _evaluate_domain(recipe, specialist, engine, tokenizer)
            reports[name] = str(out_dir / f"{name}.json")
            Path(reports[name]).write_text(json.dumps(report, indent=2))
            table += _rows(name, report, Path(specialist.run.output_dir) / specialist.run.name / "eval")
    finally:
        ray.kill(engine)
    (out_dir / "table.json").write_text(json.dumps(table, indent=2))
    return {"table": table, "reports": reports}


def _evaluate_domain(recipe, specialist, engine, tokenizer) -> dict:
    task = make_task(specialist.task, seed=recipe.run.seed)
    suites = task.heldout_suites(_suite_names(recipe, specialist, task), specialist.eval.num_problems)
    names = recipe.pipeline.teacher_modes or list(specialist.task.modes)
    modes = {name: recipe.modes[name] for name in names}
    return evaluate_suites(engine, tokenizer, task, suites, modes, recipe.thinking_tags, pass_k=1, temperature=1.0)


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


def _engine_config(recipe, model_dir: str) -> EngineConfig:
    return EngineConfig(
        model=model_dir, dtype=recipe.model.engine_dtype, max_model_len=recipe.model.max_model_len,
        seed=recipe.run.seed, kv_cache_gib=recipe.engine.kv_cache_gib,
        gpu_memory_utilization=recipe.engine.gpu_memory_utilization,
        tensor_parallel_size=recipe.engine.tensor_parallel_size,
    )
