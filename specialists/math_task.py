"""The math task: GSM8K and procedural arithmetic, scored by ``math-verify``.

Training draws from the sources by weight; held-out problems are the hashed
slice of each source that training never sees (``data.is_heldout``). Suites
are named after their source (``gsm8k``, ``arithmetic(max=15,ops=+-,terms=2)``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from datasets import Dataset
from pydantic import Field, field_validator

from posttrain.core.schema import Source
from posttrain.core.tasks import Problem, Task, register_task, training_pools, weighted_draw
from rewards.math import math_verify

from . import data


class Gsm8kSource(Source):
    kind: Literal["gsm8k"] = Field(description="GSM8K word problems")
    path: str = Field("../shared/data/gsm8k/train.jsonl", description="jsonl file or hub id (openai/gsm8k)")

    @field_validator("path")
    @classmethod
    def _exists_or_hub_id(cls, path: str) -> str:
        looks_local = path.startswith((".", "/", "~")) or path.endswith((".jsonl", ".json"))
        if looks_local and not Path(path).expanduser().exists():
            raise ValueError(f"file {path!r} does not exist (relative paths are from the working directory)")
        return path


class ArithmeticSource(Source):
    kind: Literal["arithmetic"] = Field(description="procedural arithmetic (What is 7 + 5?)")
    count: int = Field(20000, gt=0, description="problems generated (deduplicated; 10% held out by hash)")
    max_operand: int = Field(20, gt=0, description="operands drawn from 0..max_operand")
    ops: str = Field("+-", pattern=r"^[+\-*]+$", description="operators to draw from")
    terms: int = Field(2, ge=2, description="operands per expression")


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
    sources = (Gsm8kSource, ArithmeticSource,)

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
