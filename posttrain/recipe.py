"""Loading a recipe: YAML + dotted overrides -> a validated ``Recipe``, or one error listing every problem.

``load_recipe(path, overrides)`` reads YAML, applies ``key=value`` overrides,
validates the schema (``posttrain/core/schema.py``), then what the schema
cannot see, each problem with its field path: a domain's own source fields
(typed by the domain's source schemas), registered names (task domains,
rewards, divergences, trackers), effort modes against the context window,
models on disk, teachers' checkpoints and tokenizers, an SFT dataset's file and
columns, and every stage of a pipeline. Nothing is built or started here; a bad
recipe fails before any work. Whatever the input (undecodable bytes, duplicate
keys, alias bombs, overrides that index into a value), the answer is a
``RecipeError`` of bounded size, never a traceback: ``posttrain/yaml_safe.py``
reads the YAML.

This module sits on top (it knows every domain and the distillation and
pipeline checks); the loops and the core never import it.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from pydantic import ValidationError

import specialists.domains  # noqa: F401  (registers the built-in task domains)
from distill.divergences import resolve_divergence
from distill.teachers import check_teachers
from rewards import RewardNotFound, resolve_reward
from specialists.sft_data import check_dataset

from .core.models import check_model_config, check_model_spec, logits_postprocessing
from .core.modes import check_modes
from .core.placement import check_placement
from .core.schema import Recipe, RecipeError, TaskConfig  # noqa: F401  (RecipeError re-exported)
from .core.tasks import check_task_data, typed_sources
from .core.trackers import check_trackers
from .yaml_safe import MAX_BYTES, MAX_DEPTH, YamlRefused, decode, load_yaml, short


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b.c=value`` overrides (``task.sources.0.weight=2`` indexes lists).

    Values parse as YAML (``3``, ``true``, ``[1, 2]``, ``{name: x}``) with the same refusals as a
    recipe file; a malformed one is a ``RecipeError`` naming the key.
    """
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key:
            raise RecipeError(f"override {short(override)}: expected key.path=value")
        parts = key.split(".")
        if len(parts) > MAX_DEPTH or not all(parts):
            raise RecipeError(f"override {short(override)}: {short(key)} is not a field path")
        try:
            value = load_yaml(raw)
        except YamlRefused as error:
            raise RecipeError(f"override {short(override)}: {key}: {error}") from None
        node = data
        for depth, part in enumerate(parts[:-1]):
            node = _child(node, part, override, ".".join(parts[:depth]))
        _set(node, parts[-1], value, override, ".".join(parts[:-1]))
    return data


def _child(node, part: str, override: str, where: str):
    if isinstance(node, list):
        return node[_index(node, part, override)]
    if not isinstance(node, dict):
        raise RecipeError(f"override {short(override)}: {where} is a value ({short(node)}), not a section")
    if node.get(part) is None:
        node[part] = {}
    return node[part]


def _set(node, leaf: str, value, override: str, where: str) -> None:
    if isinstance(node, list):
        node[_index(node, leaf, override)] = value
    elif isinstance(node, dict):
        node[leaf] = value
    else:  # e.g. model.path.x=1: model.path holds a string
        raise RecipeError(f"override {short(override)}: {where} is a value ({short(node)}), not a section")


def _index(node: list, part: str, override: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise RecipeError(f"override {short(override)}: {short(part)} is not an index of a list of {len(node)}")
    return int(part)


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    return validate_recipe(read_recipe_data(path, overrides), origin=str(path))


def read_recipe_data(path: str | Path, overrides: list[str] = ()) -> dict:
    """A recipe file's raw data with ``overrides`` applied (not validated)."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file {short(str(path))} does not exist")
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_BYTES + 1)  # never more: the file may be anything
    except OSError as error:
        raise RecipeError(f"{path}: cannot be read: {error.strerror}") from None
    if len(raw) > MAX_BYTES:
        raise RecipeError(f"{path}: larger than {MAX_BYTES // 1024} KiB; a recipe is a few KiB of YAML")
    try:
        data = load_yaml(decode(raw)) or {}
    except YamlRefused as error:
        raise RecipeError(f"{path}: {error}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: the top level must be a mapping of sections")
    return apply_overrides(data, list(overrides))


def validate_recipe(data: dict, origin: str = "recipe", check_files: bool = True) -> Recipe:
    """``check_files=False`` skips the teachers' checkpoints (a pipeline validates its distill stage before they exist)."""
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as error:
        raise RecipeError(_format_errors(origin, error)) from None
    recipe, problems = _typed_tasks(recipe)
    if not problems:
        problems = check_modes(recipe) + check_placement(recipe) + _check_resolvable(recipe, check_files)
    if problems:
        raise RecipeError(f"{origin}: {len(problems)} problem(s)\n" + "\n".join(textwrap.indent(p, "  ") for p in problems))
    return recipe


def _format_errors(origin: str, error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        where = ".".join(short(part, 40).strip("'") for part in item["loc"]) or "(top level)"
        got = "" if item["type"] == "missing" else f" (got {short(item.get('input'))})"
        lines.append(f"  {where}: {item['msg']}{got}")
    return f"{origin}: {len(lines)} problem(s)\n" + "\n".join(lines)


def task_configs(recipe: Recipe) -> dict[str, TaskConfig]:
    """Every task config of a recipe by its field path (``task``, ``distill.domains.<name>``)."""
    tasks = {"task": recipe.task} if recipe.task else {}
    if recipe.distill:
        tasks.update({f"distill.domains.{name}": task for name, task in recipe.distill.domains.items()})
    return tasks


def _typed_tasks(recipe: Recipe) -> tuple[Recipe, list[str]]:
    """The recipe with every task's sources typed by its domain's source schemas; problems with field paths."""
    problems = []
    for where, task in task_configs(recipe).items():
        typed, found = typed_sources(task)
        problems += [f"{where}.{path}: {message}" for path, message in found]
        if not found and where == "task":
            recipe.task = typed
        elif not found:
            recipe.distill.domains[where.rsplit(".", 1)[1]] = typed
    return recipe, problems


def _check_resolvable(recipe: Recipe, check_files: bool = True) -> list[str]:
    """What the schema cannot see: models on disk, registered names, teachers, pipeline stages."""
    problems = check_trackers(recipe.run.trackers)
    if message := check_model_spec(recipe.model.path):
        problems.append(f"model.path: {message}")
    elif recipe.distill and (message := logits_postprocessing(recipe.model.path)):
        problems.append(message)
    if not problems:
        problems += check_model_config(recipe.model)
    for where, task in task_configs(recipe).items():
        if check_files:
            training = recipe.grpo.steps > 0 if where == "task" else True
            problems += [f"{where}.{path}: {message}" for path, message in check_task_data(task, training)]
        for index, spec in enumerate(task.rewards):
            try:
                resolve_reward(spec.name)
            except RewardNotFound as error:
                problems.append(f"{where}.rewards.{index}.name: {error}")
    if recipe.distill:
        try:
            resolve_divergence(recipe.distill.divergence)
        except ValueError as error:
            problems.append(f"distill.divergence: {error}")
    if recipe.sft is not None and recipe.sft.data.source == "dataset" and check_files:
        problems += check_dataset(recipe.sft.data, list(recipe.modes))
    if recipe.distill and not problems and check_files:
        problems += check_teachers(recipe.distill.teachers, recipe.model.path, recipe.distill.teacher_shards)
    if recipe.pipeline and not problems:
        problems += check_pipeline(recipe)
    return problems


# ---- a pipeline's stages: each stage recipe with the pipeline's shared settings imposed ----

def stages_dir(recipe: Recipe) -> Path:
    return Path(recipe.run.output_dir) / recipe.run.name / "stages"


def _stage_data(recipe: Recipe, path: str, overrides: list[str], name: str) -> dict:
    """A stage recipe's data with the pipeline's shared settings imposed."""
    data = read_recipe_data(path, overrides)
    shared = recipe.model_dump(mode="json")
    data["model"] = shared["model"]
    data["run"] = {
        **(data.get("run") or {}), "name": name, "output_dir": str(stages_dir(recipe)),
        "seed": recipe.run.seed, "resume": recipe.run.resume,
    }
    data["modes"], data["thinking_tags"] = shared["modes"], shared["thinking_tags"]
    return data


def specialist_recipes(recipe: Recipe) -> dict[str, Recipe]:
    """Each specialist's validated GRPO recipe; ``RecipeError`` names the specialist and the field."""
    recipes, problems = {}, []
    for name, stage in recipe.pipeline.specialists.items():
        where = f"pipeline.specialists.{name} ({stage.recipe})"
        try:
            data = _stage_data(recipe, stage.recipe, stage.overrides, f"specialist-{name}")
            if not data.get("task"):
                raise RecipeError("has no `task:` section (a specialist is a GRPO recipe)")
            recipes[name] = validate_recipe(data, origin=where)
        except RecipeError as error:
            problems.append(str(error) if str(error).startswith(where) else f"{where}: {error}")
    if problems:
        raise RecipeError("\n".join(problems))
    return recipes


def final_checkpoint_dir(recipe: Recipe, name: str, specialist: Recipe) -> Path:
    return stages_dir(recipe) / f"specialist-{name}" / "checkpoints" / f"step_{specialist.grpo.steps}"


def teacher_dir(recipe: Recipe, name: str, specialist: Recipe) -> Path:
    """Where specialist ``name``'s teachers load from: its final checkpoint, or when a trainer group wrote it
    (sharded) the plain copy the teachers stage exports (``stages/specialist-<name>/teacher``; an adapter
    stays an adapter over its base)."""
    if specialist.trainer.world_size > 1:
        return stages_dir(recipe) / f"specialist-{name}" / "teacher"
    return final_checkpoint_dir(recipe, name, specialist)


def teacher_entries(recipe: Recipe, specialists: dict[str, Recipe]) -> list[dict]:
    """One teacher per (specialist, mode): the specialist's final checkpoint, prompted in that mode."""
    entries = []
    for name, specialist in specialists.items():
        checkpoint = teacher_dir(recipe, name, specialist)
        for mode in recipe.pipeline.teacher_modes or list(specialist.task.modes):
            entries.append({"domain": name, "mode": mode, "path": str(checkpoint.resolve())})
    return entries


def distill_recipe(recipe: Recipe, specialists: dict[str, Recipe], check_files: bool = True) -> Recipe:
    stage = recipe.pipeline.distill
    where = f"pipeline.distill ({stage.recipe})"
    data = _stage_data(recipe, stage.recipe, stage.overrides, "distill")
    if not isinstance(data.get("distill"), dict):
        raise RecipeError(f"{where}: has no `distill:` section")
    data["distill"]["domains"] = {name: s.task.model_dump(mode="json") for name, s in specialists.items()}
    data["distill"]["teachers"] = teacher_entries(recipe, specialists)
    return validate_recipe(data, origin=where, check_files=check_files)


def check_pipeline(recipe: Recipe) -> list[str]:
    """Every stage's recipe validates (teachers' checkpoints excepted: they do not exist yet)."""
    try:
        specialists = specialist_recipes(recipe)
        distill_recipe(recipe, specialists, check_files=False)
    except RecipeError as error:
        return [str(error)]
    for index, mode in enumerate(recipe.pipeline.teacher_modes or []):
        if mode not in recipe.modes:
            return [f"pipeline.teacher_modes.{index}: no mode named {mode!r} (defined: {sorted(recipe.modes)})"]
    return []
