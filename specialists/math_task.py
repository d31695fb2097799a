"""The math task: GSM8K and procedural arithmetic, scored by ``math-verify``.

Training draws from the sources by weight; held-out problems are the hashed
slice of each source that training never sees (``data.is_heldout``). Suites
are named after their source (``gsm8k``, ``arithmetic(max=15,ops=+-,terms=2)``).
"""

from __future__ import annotations

import re

from datasets import Dataset

from rewards.math import math_verify

from . import data
from .task import Problem, Task, register_task, training_pools, weighted_draw


def load_source(source, seed: int) -> Dataset:
    if source.kind == "gsm8k":
        return data.load_gsm8k(source.path)
    if source.kind == "arithmetic":
        return data.load_arithmetic(seed, source.count, source.max_operand, source.ops, source.terms)
    raise ValueError(f"unknown math source kind {source.kind!r}")


def source_name(source) -> str:
    if source.kind == "arithmetic":
        return f"arithmetic(max={source.max_operand},ops={source.ops},terms={source.terms})"
    return source.kind


def _problem(row) -> Problem:
    return Problem(row["question"], {"answer": row["answer"], "source": row["source"]}, row["source"])


@register_task("math")
class MathTask(Task):
    source_kinds = ("gsm8k", "arithmetic")

    def __init__(self, task_cfg, seed: int = 0):
        super().__init__(task_cfg, seed)
        rows = lambda source: data.split_rows(load_source(source, seed), heldout=False)  # noqa: E731
        self._train = training_pools(task_cfg.sources, rows, source_name)

    def sample(self, step: int, count: int) -> list[Problem]:
        """The prompts of training step ``step``: a pure function of (seed, step), so resuming is exact."""
        return weighted_draw(self.seed, step, count, self._train, _problem)

    def heldout_suites(self, names, num_problems: int) -> dict[str, list[Problem]]:
        suites = heldout_problems(self.cfg.sources, num_problems, self.seed)
        if not names:
            return suites
        missing = [name for name in names if name not in suites]
        if missing:
            raise ValueError(f"math has no held-out suite {missing}; it has {sorted(suites)} (one per source)")
        return {name: suites[name] for name in names}

    @classmethod
    def suite_config(cls, suite: str) -> dict | None:
        """``gsm8k``; ``arithmetic`` (the default slice) or a slice by its suite name,
        e.g. ``arithmetic(max=15,ops=+-,terms=2)``."""
        if suite == "gsm8k":
            return {"domain": "math", "sources": [{"kind": "gsm8k"}]}
        if suite == "arithmetic":
            return {"domain": "math", "sources": [{"kind": "arithmetic"}]}
        if match := re.fullmatch(r"arithmetic\(max=(\d+),ops=([+\-*]+),terms=(\d+)\)", suite):
            source = {"kind": "arithmetic", "max_operand": int(match[1]), "ops": match[2], "terms": int(match[3])}
            return {"domain": "math", "sources": [source]}
        return None

    def score_suite(self, suite: str, problems: list[Problem], completions: list) -> dict[str, list[float]]:
        return {"score": [math_verify("", c.answer_text, answer=p.answer) for p, c in zip(problems, completions)]}


def heldout_problems(sources, num_problems: int, seed: int) -> dict[str, list[Problem]]:
    """Per-source held-out suites (the first ``num_problems`` of each hashed held-out slice)."""
    suites = {}
    for source in sources:
        rows = data.split_rows(load_source(source, seed), heldout=True)
        rows = rows.select(range(min(num_problems, len(rows))))
        suites[source_name(source)] = [_problem(r) for r in rows]
    return suites
