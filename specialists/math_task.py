"""The math task: owns its prompt sources, its held-out suite and its rewards.

Training draws from the sources by weight; held-out problems are the hashed
slice of each source that training never sees (``data.is_heldout``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from datasets import Dataset

from . import data


@dataclass
class Problem:
    question: str
    answer: str
    source: str

    @property
    def fields(self) -> dict:
        return {"answer": self.answer, "source": self.source}


def load_source(source, seed: int) -> Dataset:
    if source.kind == "gsm8k":
        return data.load_gsm8k(source.path)
    if source.kind == "arithmetic":
        return data.load_arithmetic(seed, source.count, source.max_operand, source.ops, source.terms)
    raise ValueError(f"unknown source kind {source.kind!r}")


def source_name(source) -> str:
    if source.kind == "arithmetic":
        return f"arithmetic(max={source.max_operand},ops={source.ops},terms={source.terms})"
    return source.kind


class MathTask:
    def __init__(self, task_cfg, seed: int = 0):
        self.cfg = task_cfg
        self.seed = seed
        self.rewards = [(spec.name, spec.weight) for spec in task_cfg.rewards]
        self._train = []
        for source in task_cfg.sources:
            rows = data.split_rows(load_source(source, seed), heldout=False)
            if len(rows) == 0:
                raise ValueError(f"source {source_name(source)} has no training rows")
            self._train.append((source.weight, rows))

    def sample(self, step: int, count: int) -> list[Problem]:
        """The prompts of training step ``step``: a pure function of (seed, step), so resuming is exact."""
        rng = random.Random(self.seed * 1_000_003 + step)
        weights = [weight for weight, _ in self._train]
        problems = []
        for _ in range(count):
            _, rows = rng.choices(self._train, weights=weights)[0]
            row = rows[rng.randrange(len(rows))]
            problems.append(Problem(row["question"], row["answer"], row["source"]))
        return problems

    def user_message(self, problem: Problem) -> str:
        return f"{problem.question}\n{self.cfg.instruction}".strip()


def heldout_problems(sources, num_problems: int, seed: int) -> dict[str, list[Problem]]:
    """Per-source held-out suites (the first ``num_problems`` of each hashed held-out slice)."""
    suites = {}
    for source in sources:
        rows = data.split_rows(load_source(source, seed), heldout=True)
        rows = rows.select(range(min(num_problems, len(rows))))
        suites[source_name(source)] = [Problem(r["question"], r["answer"], r["source"]) for r in rows]
    return suites
