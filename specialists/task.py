"""What a specialist's domain is: the ``Task`` interface, and the registry of domains.

A task owns everything domain-specific; the GRPO loop, the eval and the
distillation loop only ever talk to this interface::

    task = make_task(recipe.task, seed)            # TaskConfig -> Task (by task.domain)
    problems = task.sample(step, count)            # training prompts: a pure function of (seed, step)
    text = task.user_message(problem)              # what the user turn says
    sample = task.reward_sample(problem, completion)  # what the reward functions see
    suites = task.heldout_suites(names, n)         # {suite: [Problem]}, disjoint from training
    TaskCls.suite_config("humaneval")              # the task config that evaluates a suite by name (posttrain eval)
    scores = task.score_suite(suite, problems, completions)  # the suite's own scorer

``Problem.fields`` are passed to every reward as keyword arguments (``answer``
for math, ``tests`` for code, ``instruction_ids`` + ``kwargs`` for instruction
following, ...). A task that needs more than one model turn (the agent) also
implements ``rollout``; single-turn tasks inherit the engine's ``generate``.

Register a domain with ``@register_task("name")`` on a class whose constructor
takes ``(task_cfg, seed)``; ``TaskConfig.domain`` names it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from rewards import Sample, as_weighted

_TASKS: dict[str, Callable] = {}


@dataclass
class Problem:
    """One prompt of a domain: the user message's content and the fields its rewards and scorer need."""

    question: str
    fields: dict = field(default_factory=dict)
    source: str = ""
    id: str = ""

    @property
    def answer(self) -> str:  # math's reference answer (kept as an attribute for readability)
        return self.fields.get("answer", "")


class Task:
    """Base class with the defaults every single-turn domain shares."""

    domain = "?"
    source_kinds: tuple[str, ...] = ()  # the ``kind`` of every recipe source this domain reads

    def __init__(self, task_cfg, seed: int = 0):
        self.cfg = task_cfg
        self.seed = seed
        self.rewards = as_weighted(task_cfg.rewards)

    def sample(self, step: int, count: int) -> list[Problem]:
        raise NotImplementedError

    def user_message(self, problem: Problem) -> str:
        instruction = getattr(self.cfg, "instruction", "") or ""
        return f"{problem.question}\n{instruction}".strip()

    def system_prompt(self, problem: Problem) -> str | None:
        """Extra system text for this problem (e.g. the agent's tool schemas); modes add theirs after it."""
        return None

    def reward_sample(self, problem: Problem, completion) -> Sample:
        """Rewards score the answer: the text after the close tag of a thinking mode."""
        return Sample(self.user_message(problem), completion.answer_text, problem.fields)

    def heldout_suites(self, names: list[str] | None, num_problems: int) -> dict[str, list[Problem]]:
        raise NotImplementedError

    @classmethod
    def suite_config(cls, suite: str) -> dict | None:
        """A task config (``TaskConfig`` fields, as a dict) whose held-out suites are ``suite``, or None
        when this domain has no suite of that name. ``posttrain eval --suites`` finds a suite's domain
        by asking every registered task; without an override it tries each of ``source_kinds`` with
        its defaults (``posttrain/evaluate.py:suite_task_configs``)."""
        return None

    def score_suite(self, suite: str, problems: list[Problem], completions: list) -> dict[str, list[float]]:
        """Per-completion scores by the suite's own scorer: ``{"score": [...], other metrics...}``.

        ``completions[i]`` answers ``problems[i]``; ``"score"`` is the headline metric.
        """
        raise NotImplementedError

    def rollout(self, engine, tokenizer, problems: list[Problem], prompts: list[list[int]], specs: list):
        """Sample completions; multi-turn tasks override this. Returns a ``GenerateResult``."""
        import ray

        return ray.get(engine.generate.remote(prompts, specs))


def training_pools(sources, training_rows, source_name) -> list[tuple[float, Sequence]]:
    """``(weight, rows)`` per source, ``training_rows(source)`` being its non-held-out rows; none may be empty."""
    pools = []
    for source in sources:
        rows = training_rows(source)
        if len(rows) == 0:
            raise ValueError(f"source {source_name(source)} has no training rows")
        pools.append((source.weight, rows))
    return pools


def weighted_draw(seed: int, step: int, count: int, pools: list[tuple[float, Sequence]], to_problem) -> list[Problem]:
    """``count`` problems, each from a pool drawn by weight: a pure function of (seed, step), so resuming is exact."""
    rng = random.Random(seed * 1_000_003 + step)
    weights = [weight for weight, _ in pools]
    problems = []
    for _ in range(count):
        _, rows = rng.choices(pools, weights=weights)[0]
        problems.append(to_problem(rows[rng.randrange(len(rows))]))
    return problems


def register_task(name: str):
    def register(cls):
        if name in _TASKS and _TASKS[name] is not cls:
            raise ValueError(f"task domain {name!r} is already registered")
        cls.domain = name
        _TASKS[name] = cls
        return cls

    return register


def task_domains() -> list[str]:
    _import_builtin_tasks()
    return sorted(_TASKS)


def task_class(domain: str) -> type[Task]:
    _import_builtin_tasks()
    if domain not in _TASKS:
        raise ValueError(f"unknown task domain {domain!r}; known: {sorted(_TASKS)}")
    return _TASKS[domain]


def make_task(task_cfg, seed: int = 0) -> Task:
    return task_class(task_cfg.domain)(task_cfg, seed)


def _import_builtin_tasks() -> None:
    import importlib

    for module in ("math_task", "code_task", "instruct_task", "agent_task"):
        try:
            importlib.import_module(f"specialists.{module}")
        except ModuleNotFoundError as error:
            if error.name != f"specialists.{module}":
                raise
