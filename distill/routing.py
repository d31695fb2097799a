"""Routing for on-policy distillation: which prompts the student samples, and which teachers score them.

Every prompt carries its (domain, mode) key; the teachers registered under that
key (one by default, several with weights) score the student's tokens on it.
The prompts of a step are drawn uniformly across keys, from each domain's task
(the task definitions, never the RL loop), as a pure function of (seed, step).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import specialists.domains  # noqa: F401  (registers the built-in task domains)
from posttrain.core.evaluation import rollout_mixed
from posttrain.core.modes import sampling_spec
from posttrain.core.policy import Sequences
from posttrain.core.schema import Recipe
from posttrain.core.tasks import Problem, make_task
from rollout.engine import GenerateResult

from .teachers import Teacher


@dataclass
class RoutedPrompt:
    """A prompt and the (domain, mode) key that picks its teachers."""

    key: tuple[str, str]
    problem: Problem
    message: str
    prompt_ids: list[int]


class Router:
    """Teachers by key, and the prompts of each step drawn uniformly across keys."""

    def __init__(self, recipe: Recipe, teachers: list[Teacher], tokenizer):
        cfg = recipe.distill
        self.teachers, self.tokenizer, self.seed = teachers, tokenizer, recipe.run.seed
        self.modes, self.tags = recipe.modes, recipe.thinking_tags
        self.by_key: dict[tuple[str, str], list[tuple[int, float]]] = {}
        for index, teacher in enumerate(teachers):
            self.by_key.setdefault(teacher.key, []).append((index, teacher.weight))
        self.keys = sorted(self.by_key)
        shared = {t.name for t in teachers if len(self.by_key[t.key]) > 1}
        self.names = [f"{t.name}#{i}" if t.name in shared else t.name for i, t in enumerate(teachers)]
        self.tasks = {domain: make_task(cfg.domains[domain], seed=recipe.run.seed) for domain, _ in self.keys}

    def format(self, key: tuple[str, str], problem: Problem) -> RoutedPrompt:
        task = self.tasks[key[0]]
        ids = task.prompt_ids(self.tokenizer, problem, mode=self.modes[key[1]], tags=self.tags)
        return RoutedPrompt(key, problem, task.user_message(problem), ids)

    def rollout(self, engine, prompts: list[RoutedPrompt], specs: list) -> GenerateResult:
        """Student samples for ``prompts``: single-turn domains in one engine call, multi-turn ones by their task."""
        tasks = [self.tasks[prompt.key[0]] for prompt in prompts]
        problems, ids = [p.problem for p in prompts], [p.prompt_ids for p in prompts]
        return rollout_mixed(engine, self.tokenizer, tasks, problems, ids, specs)

    def spec(self, key: tuple[str, str], n: int = 1, temperature: float = 1.0, top_p: float = 1.0):
        """How the student samples ``key``'s prompts: its mode's budget forcing and token allowance."""
        return sampling_spec(self.modes[key[1]], self.tags, n=n, temperature=temperature, top_p=top_p)

    def sample(self, step: int, count: int) -> list[RoutedPrompt]:
        """The prompts of step ``step``: a pure function of (seed, step), so a resumed run repeats it."""
        rng = random.Random(self.seed * 7_919 + step)
        counts = {key: 0 for key in self.keys}
        for key in rng.choices(self.keys, k=count):
            counts[key] += 1
        prompts = []
        for index, (key, n) in enumerate(counts.items()):
            if n:
                problems = self.tasks[key[0]].sample(step * len(self.keys) + index, n)
                prompts += [self.format(key, problem) for problem in problems]
        return prompts

    def routing(self, keys: list[tuple[str, str]]) -> list[list[tuple[int, float]]]:
        return [self.by_key[key] for key in keys]


def completion_sequences(prompts: list[list[int]], completions) -> Sequences:
    """The student's samples as training sequences; forced close tags (not sampled) are masked out.

    Temperature stays 1 even when the student samples at ``distill.temperature``: the loss is a
    divergence between the student's and the teachers' models (T = 1 distributions over the full
    vocabulary); the sampling temperature only chooses which completions it is measured on.
    """
    masks = [c.loss_mask or [1] * len(c.token_ids) for c in completions]
    return Sequences(prompts, [c.token_ids for c in completions], masks, temperature=1.0)


def teacher_kls(update: dict[str, float], router: Router) -> dict[str, float]:
    """Per-teacher mean per-token divergence, from ``DistillLoss``'s metrics."""
    out = {}
    for index, name in enumerate(router.names):
        tokens = update.get(f"tokens/{index}", 0.0)
        if tokens:
            out[name] = update[f"kl_sum/{index}"] / tokens
    return out
