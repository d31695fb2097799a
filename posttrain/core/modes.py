"""Reasoning-effort modes: which mode each prompt trains in, and how a mode becomes sampling.

A mode (``schema.EffortMode``) is data: whether the model thinks, its thinking
budget, its total token allowance, an instruction and length-shaping knobs. This
module checks modes against the context window and each other, assigns modes to prompts, and turns a mode into a ``SamplingSpec``.
It must not format prompts (``chat.py`` does) or generate (``rollout`` does).

The default mode (a recipe with no ``modes:``) is filled in by the schema
(``schema.with_default_modes``).
"""

from __future__ import annotations

import random

from rollout.engine import SamplingSpec

from .schema import DEFAULT_MODE, MIN_ANSWER_TOKENS, EffortMode  # noqa: F401  (re-exported)


def check_modes(recipe) -> list[str]:
    """Problems the schema cannot see, each with its field path: names, weights, context room."""
    problems = []
    defined = sorted(recipe.modes)
    room = recipe.model.max_model_len - recipe.model.prompt_room
    for name, mode in recipe.modes.items():
        if mode.max_tokens > room:
            problems.append(
                f"modes.{name}.max_tokens: {mode.max_tokens} + model.prompt_room ({recipe.model.prompt_room}) "
                f"exceeds model.max_model_len ({recipe.model.max_model_len})"
            )
    for index, teacher in enumerate(recipe.distill.teachers if recipe.distill else []):
        if teacher.mode not in recipe.modes:
            problems.append(f"distill.teachers.{index}.mode: no mode named {teacher.mode!r} (defined: {defined})")
    for name, weight in (recipe.task.modes if recipe.task else {}).items():
        if name not in recipe.modes:
            problems.append(f"task.modes.{name}: no mode named {name!r} (defined: {defined})")
        elif weight <= 0:
            problems.append(f"task.modes.{name}: weight must be > 0 (got {weight})")
    for name, weight in (recipe.sft.modes if recipe.sft else {}).items():
        if name not in recipe.modes:
            problems.append(f"sft.modes.{name}: no mode named {name!r} (defined: {defined})")
        elif weight <= 0:
            problems.append(f"sft.modes.{name}: weight must be > 0 (got {weight})")
    for index, name in enumerate(recipe.eval.modes or []):
        if name not in recipe.modes:
            problems.append(f"eval.modes.{index}: no mode named {name!r} (defined: {defined})")
    return problems + _check_sweep(recipe, room)


def _check_sweep(recipe, room: int) -> list[str]:
    if not recipe.eval.budget_sweep:
        return []
    name = recipe.eval.sweep_mode
    if name is not None and (name not in recipe.modes or not recipe.modes[name].thinking):
        return [f"eval.sweep_mode: {name!r} is not a thinking mode (defined: {sorted(recipe.modes)})"]
    if name is None and sweep_mode_name(recipe) is None:
        return ["eval.budget_sweep: needs a thinking mode in modes"]
    base = recipe.modes[sweep_mode_name(recipe)]
    problems = []
    for index, budget in enumerate(recipe.eval.budget_sweep):
        if budget <= 0:
            problems.append(f"eval.budget_sweep.{index}: budget must be > 0 (got {budget})")
        elif sweep_mode(base, budget).max_tokens > room:
            problems.append(
                f"eval.budget_sweep.{index}: budget {budget} + answer room "
                f"{base.max_tokens - base.thinking_budget} + model.prompt_room exceeds model.max_model_len "
                f"({recipe.model.max_model_len})"
            )
    return problems


def eval_mode_names(recipe) -> list[str]:
    return list(recipe.eval.modes or recipe.task.modes)


def sweep_mode_name(recipe) -> str | None:
    """The mode a budget sweep varies: ``eval.sweep_mode``, else the thinking mode with the largest budget."""
    if recipe.eval.sweep_mode:
        return recipe.eval.sweep_mode
    thinking = [(mode.thinking_budget, name) for name, mode in recipe.modes.items() if mode.thinking]
    return max(thinking)[1] if thinking else None


def sweep_mode(mode, budget: int):
    """``mode`` with thinking budget ``budget`` and the same answer room after it."""
    answer_room = mode.max_tokens - mode.thinking_budget
    return mode.model_copy(update={"thinking_budget": budget, "max_tokens": budget + answer_room})


def assign_modes(weights: dict[str, float], count: int, seed: int, step: int) -> list[str]:
    """The modes of step ``step``'s ``count`` prompts: a pure function of (seed, step).

    Counts are proportional to the weights (largest remainder), then shuffled, so
    every mode with a fair share shows up in every step instead of by chance.
    """
    total = sum(weights.values())
    exact = {name: count * weight / total for name, weight in weights.items()}
    counts = {name: int(share) for name, share in exact.items()}
    by_remainder = sorted(exact, key=lambda name: exact[name] - counts[name], reverse=True)
    for name in by_remainder[: count - sum(counts.values())]:
        counts[name] += 1
    names = [name for name in weights for _ in range(counts[name])]
    random.Random(f"modes-{seed}-{step}").shuffle(names)
    return names


def sampling_spec(mode, tags, n: int = 1, temperature: float = 1.0, top_p: float = 1.0):
    """How the engine samples ``mode``: its token allowance and, when thinking, its budget and close tag."""
    return SamplingSpec(
        n=n,
        temperature=temperature,
        top_p=top_p,
        max_tokens=mode.max_tokens,
        thinking_budget=mode.thinking_budget if mode.thinking else None,
        think_close=tags.close,
    )
