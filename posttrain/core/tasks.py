"""What a domain is: the ``Task`` interface, and the registry of domains.

A task owns everything domain-specific -- its recipe source schemas, prompts,
rewards, held-out suites and their scorer; the loops (SFT, GRPO, distillation)
and the one eval path only ever talk to this interface::

    task = make_task(recipe.task, seed)            # TaskConfig -> Task (by task.domain)
    problems = task.sample(step, count)            # training prompts: a pure function of (seed, step)
    text = task.user_message(problem)              # what the user turn says
    sample = task.reward_sample(problem, completion)  # what the reward functions see
    suites = task.heldout_suites(names, n)         # {suite: [Problem]}, disjoint from training
    TaskCls.suite_config("humaneval")              # the task config that evaluates a suite by name (posttrain eval)
    scores = task.score_suite(suite, problems, completions)  # the suite's own scorer

``Problem.fields`` are passed to every reward as keyword arguments (``answer``
for math, ``tests`` for code, ``instruction_ids`` + ``kwargs`` for instruction
following, ...; a reward gets those its signature accepts). Every domain also
takes the shared ``dataset`` source (``core/dataset_source.py``): it names the
fields a row must carry (``dataset_fields``) and types them (``dataset_problem``);
``check_source`` is what ``posttrain check`` runs on a source's data, and
``prompt_ids`` the one prompt formatter (a problem's chat ``context``, the mode). A task that needs more than one model turn (the agent) sets
``multi_turn = True`` and implements ``rollout``; single-turn tasks inherit the
engine's ``generate``.

A new domain is one file: a ``Task`` subclass registered with
``@register_task("name")`` (constructor ``(task_cfg, seed)``) whose ``sources``
lists its ``schema.Source`` subclasses (each with its ``kind`` literal).
``task.domain`` names it (or ``module:Class``, or a ``posttrain.tasks`` entry
point); no other file changes.
"""

from __future__ import annotations

import logging
import random
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field

import ray
from pydantic import ValidationError

from posttrain.plugins import Registry, get_subclass
from rewards import Sample, as_weighted, score_batch

from .chat import prompt_ids
from .dataset_source import (HELDOUT_PERCENT, DatasetSource, check_dataset_source, dataset_rows, first_rows, row_problem,
                             suite_name)
from .schema import SourceConfig


log = logging.getLogger("posttrain.tasks")
FEW_HELDOUT = 20  # fewer held-out problems than this from a hash slice: warn (a 20-row file leaves ~2)


@dataclass
class Problem:
    """One prompt of a domain: the user message's content and the fields its rewards and scorer need.

    ``context``: chat turns before the user message (a system turn, few-shot user/assistant pairs), from
    a ``dataset`` source's ``messages``; ``instruction``: the source's own instruction (None: the task's).
    """

    question: str
    fields: dict = field(default_factory=dict)
    source: str = ""
    id: str = ""
    context: list[dict] = field(default_factory=list)
    instruction: str | None = None

    @property
    def answer(self) -> str:  # math's reference answer (kept as an attribute for readability)
        return self.fields.get("answer", "")


class Task:
    """Base class with the defaults every single-turn domain shares."""

    domain = "?"
    sources: tuple[type[SourceConfig], ...] = ()  # the domain's source schemas (``schema.Source`` subclasses)
    multi_turn = False  # True: ``rollout`` runs episodes of several model turns (the agent)
    score_by_rewards = False  # True (``posttrain eval --reward``): suites are scored by the task's rewards
    dataset_fields: tuple[str, ...] = ()  # what a ``dataset`` source's rows must carry (mapped by its ``columns``)

    def __init__(self, task_cfg, seed: int = 0):
        self.cfg = task_cfg
        self.seed = seed
        self.rewards = as_weighted(task_cfg.rewards)

    def sample(self, step: int, count: int) -> list[Problem]:
        raise NotImplementedError

    def user_message(self, problem: Problem) -> str:
        return with_instruction(problem, getattr(self.cfg, "instruction", "") or "")

    def system_prompt(self, problem: Problem) -> str | None:
        """Extra system text for this problem (its source's system turn; e.g. the agent's tool schemas);
        modes add theirs after it."""
        return context_system(problem)

    def prompt_ids(self, tokenizer, problem: Problem, mode=None, tags=None) -> list[int]:
        """The problem's chat prompt in effort ``mode``: system (the problem's, then the mode's), earlier
        turns of its context (few-shot pairs), then the user message. Every sampler formats through here."""
        history = [turn for turn in problem.context if turn["role"] != "system"]
        return prompt_ids(tokenizer, self.user_message(problem), system=self.system_prompt(problem), mode=mode,
                          tags=tags, history=history)

    def dataset_problems(self, source: DatasetSource, heldout: bool) -> list[Problem]:
        """A ``dataset`` source's training (or held-out) rows as problems of this domain."""
        name = suite_name(source)
        problems = []
        for index, row in enumerate(dataset_rows(source, heldout)):
            question, context, fields = row_problem(row, source, self.dataset_fields, name)
            problem = Problem(question, fields, name, f"{name}-{index}", context, source.instruction)
            problems.append(self.dataset_problem(problem))
        if heldout and source.heldout == "hash" and not source.heldout_split and len(problems) < FEW_HELDOUT:
            log.warning("%s: only %d held-out row(s) (the stable %d%% hash slice); its eval is noise. Give a held-out "
                        "split (heldout_split) or evaluate on a file of your own: posttrain eval CHECKPOINT --dataset FILE "
                        "--domain %s", name, len(problems), HELDOUT_PERCENT, self.domain)
        return problems

    @classmethod
    def dataset_problem(cls, problem: Problem) -> Problem:
        """A domain's last word on a dataset row's problem (types its fields: e.g. math's answer as text);
        raises ``ValueError`` / ``TypeError`` on a row it cannot read (``posttrain check`` runs it)."""
        return problem

    @classmethod
    def check_source(cls, source: SourceConfig, where: str) -> list[str]:
        """What is wrong with a typed source's data (messages start with ``where``); cheap enough for
        ``posttrain check``: a ``dataset`` source's file, split and columns against ``dataset_fields``."""
        if isinstance(source, DatasetSource):
            return check_dataset_source(source, where, cls.dataset_fields) or cls._check_rows(source, where)
        return []

    @classmethod
    def _check_rows(cls, source: DatasetSource, where: str, count: int = 64) -> list[str]:
        """The domain reads the first ``count`` rows as it will in the run (e.g. JSON text in a kwargs column)."""
        for index, row in enumerate(first_rows(source, count)):
            try:
                question, context, fields = row_problem(row, source, cls.dataset_fields, "?")
                cls.dataset_problem(Problem(question, fields, context=context))
            except (ValueError, TypeError, KeyError, AttributeError) as error:  # json.JSONDecodeError is a ValueError
                columns = {name: source.columns.get(name, name) for name in cls.dataset_fields}
                return [f"{where}.columns: row {index}: {cls.domain} cannot read its fields {columns}: "
                        f"{type(error).__name__}: {str(error)[:200]}"]
        return []

    def reward_sample(self, problem: Problem, completion) -> Sample:
        """Rewards score the answer: the text after the close tag of a thinking mode."""
        return Sample(self.user_message(problem), completion.answer_text, problem.fields)

    def heldout_suites(self, names: list[str] | None, num_problems: int) -> dict[str, list[Problem]]:
        raise NotImplementedError

    def reference(self, problem: Problem, mode_name: str, mode, tags) -> str | None:
        """A reference completion of ``problem`` in effort mode ``mode`` for SFT (``sft.data.source: task``):
        the assistant text after the prompt -- for a thinking mode the thinking, ``tags.close``, then the
        answer. None: this domain (or this problem's source) has none."""
        return None

    @classmethod
    def suite_config(cls, suite: str) -> dict | None:
        """A task config (``TaskConfig`` fields, as a dict) whose held-out suites are ``suite``, or None
        when this domain has no suite of that name. ``posttrain eval --suites`` finds a suite's domain
        by asking every registered task; without an override it tries each of its ``sources`` with
        their defaults (``posttrain/evaluate.py:suite_task_configs``)."""
        return None

    def score_suite(self, suite: str, problems: list[Problem], completions: list) -> dict[str, list[float]]:
        """Per-completion scores by the suite's own scorer: ``{"score": [...], other metrics...}``.

        ``completions[i]`` answers ``problems[i]``; ``"score"`` is the headline metric.
        """
        raise NotImplementedError

    def score(self, suite: str, problems: list[Problem], completions: list) -> dict[str, list[float]]:
        """What the eval calls: the suite's own scorer, or (``score_by_rewards``) the weighted sum of the
        task's rewards (``score``) and each reward's own value (``reward/<name>``)."""
        if not self.score_by_rewards:
            return self.score_suite(suite, problems, completions)
        samples = [self.reward_sample(p, c) for p, c in zip(problems, completions)]
        scored = score_batch(self.rewards, samples)
        return {"score": scored.scores, **{f"reward/{name}": values for name, values in scored.per_reward.items()}}

    @classmethod
    def source_kinds(cls) -> list[str]:
        return [source_kind(schema) for schema in cls.sources]

    def rollout(self, engine, tokenizer, problems: list[Problem], prompts: list[list[int]], specs: list):
        """Sample completions: single-turn tasks in one engine call; multi-turn tasks (``multi_turn = True``)
        override this. Returns a ``GenerateResult``."""
        return ray.get(engine.generate.remote(prompts, specs))


def training_pools(sources, training_rows, source_name) -> list[tuple[float, Sequence]]:
    """``(weight, rows)`` per source, ``training_rows(source)`` being its non-held-out rows; none may be empty
    but an eval-only dataset source's (``heldout: all``), which trains nothing."""
    pools = []
    for source in sources:
        if getattr(source, "heldout", None) == "all" and not getattr(source, "heldout_split", None):
            continue
        rows = training_rows(source)
        if len(rows) == 0:
            raise ValueError(f"source {source_name(source)} has no training rows")
        pools.append((source.weight, rows))
    return pools


def weighted_draw(seed: int, step: int, count: int, pools: list[tuple[float, Sequence]], to_problem) -> list[Problem]:
    """``count`` problems, each from a pool drawn by weight: a pure function of (seed, step), so resuming is exact.

    A pool's rows go through ``to_problem``; a pool of ready ``Problem``s (a dataset source) is taken as is."""
    if not pools:
        raise ValueError("no source has training rows (every dataset source is heldout: all)")
    rng = random.Random(seed * 1_000_003 + step)
    weights = [weight for weight, _ in pools]
    problems = []
    for _ in range(count):
        _, rows = rng.choices(pools, weights=weights)[0]
        row = rows[rng.randrange(len(rows))]
        problems.append(row if isinstance(row, Problem) else to_problem(row))
    return problems


def with_instruction(problem: Problem, default: str) -> str:
    """The user message: the question, then the source's instruction (or the task's ``default``)."""
    instruction = default if problem.instruction is None else problem.instruction
    return f"{problem.question}\n{instruction}".strip()


def context_system(problem: Problem) -> str | None:
    return next((turn["content"] for turn in problem.context if turn["role"] == "system"), None)


TASKS: Registry[type[Task]] = Registry("task domain", entry_point_group="posttrain.tasks")


def register_task(name: str):
    """Class decorator: ``@register_task("weather")`` makes ``task.domain: weather`` pick the class."""

    def register(cls: type[Task]) -> type[Task]:
        cls.domain = name
        return TASKS.register(name, cls)

    return register


def task_domains() -> list[str]:
    return TASKS.names()


def task_class(domain: str) -> type[Task]:
    """The task class a ``task.domain`` names: registered, ``module:Class``, or an entry point."""
    return get_subclass(TASKS, domain, Task)


def typed_sources(task_cfg) -> tuple[object, list[tuple[str, str]]]:
    """``task_cfg`` with each source validated by its domain's source schema, and the problems found:
    ``[(field path below the task config, message)]`` (e.g. ``("sources.0.count", "...")``)."""
    try:
        cls = task_class(task_cfg.domain)
    except ValueError as error:
        return task_cfg, [("domain", str(error))]
    schemas = {source_kind(schema): schema for schema in cls.sources}
    typed, problems = [], []
    for index, source in enumerate(task_cfg.sources):
        schema = schemas.get(source.kind)
        if schema is None:
            problems.append((f"sources.{index}.kind", f"{source.kind!r} is not a {task_cfg.domain} source (those are {sorted(schemas)})"))
            continue
        if isinstance(source, schema):
            typed.append(source)
            continue
        try:
            typed.append(schema.model_validate(source.model_dump()))
        except ValidationError as error:
            problems += [(".".join(["sources", str(index), *map(str, item["loc"])]), _message(item)) for item in error.errors()]
    if problems:
        return task_cfg, problems
    return task_cfg.model_copy(update={"sources": typed}), []


def check_task_data(task_cfg, training: bool = True) -> list[tuple[str, str]]:
    """A typed task config's ``dataset`` sources against their files: ``[(field path below the task, message)]``
    (a missing file or column, an empty split, an unreachable hub id); with ``training``, some source must train."""
    cls = task_class(task_cfg.domain)
    problems = []
    for index, source in enumerate(task_cfg.sources):
        problems += _split_path(cls.check_source(source, f"sources.{index}"))
    eval_only = [getattr(s, "heldout", None) == "all" and not getattr(s, "heldout_split", None) for s in task_cfg.sources]
    if training and all(eval_only):
        problems.append(("sources", "every source is eval-only (heldout: all): nothing to train on"))
    return problems


def _split_path(messages: list[str]) -> list[tuple[str, str]]:
    return [tuple(message.split(": ", 1)) for message in messages]


def source_kind(schema: type[SourceConfig]) -> str:
    """The ``kind`` a source schema declares: its ``kind: Literal["..."]`` field."""
    (kind,) = typing.get_args(schema.model_fields["kind"].annotation)
    return kind


def _message(item: dict) -> str:
    got = "" if item["type"] == "missing" else f" (got {item.get('input')!r})"
    return f"{item['msg']}{got}"


def make_task(task_cfg, seed: int = 0) -> Task:
    """The ``Task`` for a task config; its sources are typed by the domain first (``ValueError`` if they do not fit)."""
    typed, problems = typed_sources(task_cfg)
    if problems:
        raise ValueError("; ".join(f"task.{where}: {message}" for where, message in problems))
    return task_class(typed.domain)(typed, seed)
