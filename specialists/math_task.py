"""The math task: GSM8K, procedural arithmetic and arithmetic with worked traces, scored by ``math-verify``.

``arithmetic_traces`` problems also have reference completions per effort mode
(``reference``, from ``specialists/traces.py``): what the SFT stage trains on.

Training draws from the sources by weight; held-out problems are the hashed
slice of each source that training never sees (``data.is_heldout``). Suites
are named after their source (``gsm8k``, ``arithmetic(max=15,ops=+-,terms=2)``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from datasets import Dataset
from pydantic import Field, field_validator, model_validator

from posttrain.core.dataset_source import FORMATS, DatasetSource, check_dataset_source, shared_hint, suite_name
from posttrain.core.hub import looks_like_hub_id
from posttrain.core.schema import Source
from posttrain.core.tasks import Problem, Task, register_task, training_pools, weighted_draw
from rewards.math import math_verify

from . import data, traces


class Gsm8kSource(Source):
    kind: Literal["gsm8k"] = Field(description="GSM8K word problems")
    path: str = Field("../shared/data/gsm8k/train.jsonl", description="jsonl file or hub id (openai/gsm8k)")

    @field_validator("path")
    @classmethod
    def _exists_or_hub_id(cls, path: str) -> str:
        looks_local = not looks_like_hub_id(path) or path.endswith(tuple(FORMATS))
        if looks_local and not Path(path).expanduser().exists():
            raise ValueError(f"file {path!r} does not exist (relative paths are from the working directory, {Path.cwd()}){shared_hint(path)}")
        return path

    def as_dataset(self) -> DatasetSource:
        """GSM8K is a dataset with fixed columns: checked by the one dataset check."""
        subset = None if Path(self.path).expanduser().exists() else "main"
        return DatasetSource(kind="dataset", path=self.path, subset=subset, prompt="question", heldout="none")


class ArithmeticSource(Source):
    kind: Literal["arithmetic"] = Field(description="procedural arithmetic (What is 7 + 5?)")
    count: int = Field(20000, gt=0, description="problems generated (deduplicated; 10% held out by hash)")
    max_operand: int = Field(20, gt=0, description="operands drawn from 0..max_operand")
    ops: str = Field("+-", pattern=r"^[+\-*]+$", description="operators to draw from")
    terms: int = Field(2, ge=2, description="operands per expression")


class ArithmeticTracesSource(Source):
    kind: Literal["arithmetic_traces"] = Field(description="multi-digit arithmetic whose references think column by column (specialists/traces.py)")
    count: int = Field(20000, gt=0, description="problems generated (deduplicated; 10% held out by hash)")
    min_digits: int = Field(2, ge=1, le=9, description="fewest digits of the first operand")
    max_digits: int = Field(5, ge=1, le=9, description="most digits of the first operand (the trace grows with it)")
    ops: str = Field("+-*", pattern=r"^[+\-*]+$", description="operators: + and - of two multi-digit numbers, * by one digit")
    check_modes: list[str] = Field(default_factory=lambda: ["max"], description="modes whose reference traces end with a check (the inverse operation)")

    @model_validator(mode="after")
    def _digits_ordered(self) -> ArithmeticTracesSource:
        if self.min_digits > self.max_digits:
            raise ValueError(f"min_digits ({self.min_digits}) exceeds max_digits ({self.max_digits})")
        return self


def load_source(source, seed: int) -> Dataset:
    if source.kind == "gsm8k":
        return data.load_gsm8k(source.path)
    if source.kind == "arithmetic":
        return data.load_arithmetic(seed, source.count, source.max_operand, source.ops, source.terms)
    if source.kind == "arithmetic_traces":
        return traces.load_traces(seed, source.count, source.min_digits, source.max_digits, source.ops)
    raise ValueError(f"unknown math source kind {source.kind!r}")


def source_name(source) -> str:
    if source.kind == "dataset":
        return suite_name(source)
    if source.kind == "arithmetic":
        return f"arithmetic(max={source.max_operand},ops={source.ops},terms={source.terms})"
    if source.kind == "arithmetic_traces":
        return f"arithmetic_traces(digits={source.min_digits}-{source.max_digits},ops={source.ops})"
    return source.kind


def _problem(row) -> Problem:
    fields = {"answer": row["answer"], "source": row["source"]}
    if row["source"] == "arithmetic_traces":  # what its reference trace is worked from
        fields["operands"] = (row["a"], row["b"], row["op"])
    return Problem(row["question"], fields, row["source"])


@register_task("math")
class MathTask(Task):
    sources = (Gsm8kSource, ArithmeticSource, ArithmeticTracesSource, DatasetSource)
    dataset_fields = ("answer",)

    def __init__(self, task_cfg, seed: int = 0):
        super().__init__(task_cfg, seed)
        self._check_modes = {m for s in task_cfg.sources if s.kind == "arithmetic_traces" for m in s.check_modes}
        self._train = training_pools(task_cfg.sources, lambda source: self._rows(source, False), source_name)

    def _rows(self, source, heldout: bool):
        if source.kind == "dataset":
            return self.dataset_problems(source, heldout)
        return data.split_rows(load_source(source, self.seed), heldout=heldout)

    @classmethod
    def dataset_problem(cls, problem: Problem) -> Problem:
        """The reference answer as text, whatever the file held (``42``, ``42.0``, ``"$42"``)."""
        answer = problem.fields.get("answer")
        problem.fields["answer"] = str(int(answer) if isinstance(answer, float) and answer.is_integer() else answer)
        return problem

    @classmethod
    def check_source(cls, source, where: str) -> list[str]:
        if source.kind == "gsm8k":
            found = check_dataset_source(source.as_dataset(), where, cls.dataset_fields)
            return [f"{where}.path: {message.split(': ', 1)[1]}" for message in found]  # its one field
        return super().check_source(source, where)

    def sample(self, step: int, count: int) -> list[Problem]:
        """The prompts of training step ``step``: a pure function of (seed, step), so resuming is exact."""
        return weighted_draw(self.seed, step, count, self._train, _problem)

    def heldout_suites(self, names, num_problems: int) -> dict[str, list[Problem]]:
        suites = {source_name(source): self._heldout(source, num_problems) for source in self.cfg.sources}
        if not names:
            return suites
        missing = [name for name in names if name not in suites]
        if missing:
            raise ValueError(f"math has no held-out suite {missing}; it has {sorted(suites)} (one per source)")
        return {name: suites[name] for name in names}

    def _heldout(self, source, num_problems: int) -> list[Problem]:
        rows = self._rows(source, heldout=True)
        return _problems(rows[:num_problems] if isinstance(rows, list) else rows.select(range(min(num_problems, len(rows)))))

    def reference(self, problem: Problem, mode_name: str, mode, tags) -> str | None:
        """Trace problems only: the answer alone, the column trace, or the trace and a check (``check_modes``)."""
        if "operands" not in problem.fields:
            return None
        a, b, op = problem.fields["operands"]
        row = {"a": a, "b": b, "op": op, "answer": problem.answer}
        return traces.reference_text(row, mode.thinking, mode_name in self._check_modes, tags.close)

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
        if match := re.fullmatch(r"arithmetic_traces\(digits=(\d)-(\d),ops=([+\-*]+)\)", suite):
            source = {"kind": "arithmetic_traces", "min_digits": int(match[1]), "max_digits": int(match[2]), "ops": match[3]}
            return {"domain": "math", "sources": [source]}
        if suite == "arithmetic_traces":
            return {"domain": "math", "sources": [{"kind": "arithmetic_traces"}]}
        return None

    def score_suite(self, suite: str, problems: list[Problem], completions: list) -> dict[str, list[float]]:
        return {"score": [math_verify("", c.answer_text, answer=p.answer) for p, c in zip(problems, completions)]}


def _problems(rows) -> list[Problem]:
    return rows if isinstance(rows, list) else [_problem(row) for row in rows]


def heldout_problems(sources, num_problems: int, seed: int) -> dict[str, list[Problem]]:
    """Per-source held-out suites (the first ``num_problems`` of each hashed held-out slice)."""
    suites = {}
    for source in sources:
        rows = data.split_rows(load_source(source, seed), heldout=True)
        rows = rows.select(range(min(num_problems, len(rows))))
        suites[source_name(source)] = [_problem(r) for r in rows]
    return suites
