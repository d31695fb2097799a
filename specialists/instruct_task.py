"""The instruction-following (IF) task: procedural constraint prompts for training, IFBench held out.

Training draws from the ``if_synth`` sources (``instruct_data``: a writing task
plus 1-3 verifiable IFEval-style constraints), rewarded by ``if_constraints``.
Held-out suites:

- one per source (named like ``if_synth(constraints=1-3)``): the hashed slice
  training never sees, scored by our checkers (``score`` = every constraint
  followed, ``constraint_share`` = share followed);
- ``ifbench``: IFBench's test prompts (294, different constraints from the
  training ones), scored by IFBench's own ``evaluation_lib``, in process:
  ``score`` = prompt-level strict (the headline), ``loose`` = prompt-level loose,
  ``instruction_strict`` / ``instruction_loose`` = instruction-level, each scaled
  so the suite mean equals IFBench's micro average over instructions.

The user turn is the prompt alone: ``task.instruction`` is not appended (the
constraints are the instruction, and IFBench prompts must reach the model as
written).
"""

from __future__ import annotations

import copy
import json
import logging
from typing import Literal

from pydantic import Field, model_validator

from posttrain.core.dataset_source import DatasetSource, suite_name
from posttrain.core.schema import Source
from posttrain.core.tasks import Problem, Task, register_task, training_pools, weighted_draw, with_instruction
from rewards.ifbench_lib import ensure_nltk_data, ifbench_modules, ifbench_test_path
from rewards.instruct import check_constraints

from . import data
from .instruct_data import SPEC_IDS, load_if_synth

log = logging.getLogger("posttrain.instruct")
IFBENCH = "ifbench"


class InstructSynthSource(Source):
    kind: Literal["if_synth"] = Field(description="procedural instruction following: a writing task + verifiable constraints")
    count: int = Field(20000, gt=0, description="prompts generated (deduplicated, IFBench test prompts dropped; 10% held out by hash)")
    min_constraints: int = Field(1, ge=1, description="fewest constraints per prompt")
    max_constraints: int = Field(3, ge=1, description="most constraints per prompt (fewer when the drawn ones conflict)")
    constraints: list[str] | None = Field(None, description="constraint ids to draw from (specialists/instruct_data.py); default: all")

    @model_validator(mode="after")
    def _known_constraints(self) -> InstructSynthSource:
        if self.min_constraints > self.max_constraints:
            raise ValueError(f"min_constraints ({self.min_constraints}) exceeds max_constraints ({self.max_constraints})")
        unknown = sorted(set(self.constraints or ()) - set(SPEC_IDS))
        if unknown:
            raise ValueError(f"constraints {unknown} are unknown; known: {SPEC_IDS}")
        return self


def load_ifbench_rows() -> list[dict]:
    """IFBench's test rows as shipped, with the unused (null) arguments dropped from each constraint's kwargs."""
    rows = []
    with open(ifbench_test_path()) as handle:
        for line in handle:
            row = json.loads(line)
            row["kwargs"] = [{k: v for k, v in kw.items() if v is not None} for kw in row["kwargs"]]
            rows.append(row)
    return rows


def ifbench_prompts() -> set[str]:
    return {row["prompt"].strip() for row in load_ifbench_rows()}


def source_name(source) -> str:
    if source.kind == "dataset":
        return suite_name(source)
    return f"{source.kind}(constraints={source.min_constraints}-{source.max_constraints})"


def load_source(source, seed: int):
    if source.kind != "if_synth":
        raise ValueError(f"unknown instruct source kind {source.kind!r}")
    return load_if_synth(seed, source.count, source.min_constraints, source.max_constraints,
                         source.constraints or (), excluded_prompts=ifbench_prompts())


def _synth_problem(row) -> Problem:
    fields = {"instruction_id_list": list(row["instruction_id_list"]), "kwargs": json.loads(row["kwargs_json"]),
              "source": row["source"]}
    return Problem(row["question"], fields, row["source"])


def _ifbench_problem(row) -> Problem:
    fields = {"instruction_id_list": row["instruction_id_list"], "kwargs": row["kwargs"], "source": IFBENCH}
    return Problem(row["prompt"], fields, IFBENCH, id=str(row["key"]))


@register_task("instruct")
class InstructTask(Task):
    sources = (InstructSynthSource, DatasetSource)
    dataset_fields = ("instruction_id_list", "kwargs")  # IFEval's columns: constraint ids, one kwargs dict each

    def __init__(self, task_cfg, seed: int = 0):
        super().__init__(task_cfg, seed)
        ensure_nltk_data()  # fail here, clearly, rather than as silently failed constraints later
        self._train = training_pools(task_cfg.sources, lambda source: self._rows(source, False), source_name)

    def user_message(self, problem: Problem) -> str:
        # as written (IFBench's prompts reach the model unchanged); a dataset source's own instruction only
        return with_instruction(problem, "") if problem.instruction else problem.question

    def _rows(self, source, heldout: bool):
        if source.kind == "dataset":
            return self.dataset_problems(source, heldout)
        return data.split_rows(load_source(source, self.seed), heldout=heldout)

    @classmethod
    def dataset_problem(cls, problem: Problem) -> Problem:
        """Constraint ids and kwargs as lists, from JSON text too; kwargs' nulls dropped (parquet fills a
        struct's missing keys with them, and a checker takes only its own arguments)."""
        fields = problem.fields
        ids, kwargs = (json.loads(v) if isinstance(v, str) else v for v in (fields["instruction_id_list"], fields["kwargs"]))
        ids, kwargs = list(ids), list(kwargs or [{} for _ in ids])
        fields["instruction_id_list"] = ids
        fields["kwargs"] = [{k: v for k, v in (kw or {}).items() if v is not None} for kw in kwargs]
        return problem

    def sample(self, step: int, count: int) -> list[Problem]:
        """The prompts of training step ``step``: a pure function of (seed, step), so resuming is exact."""
        return weighted_draw(self.seed, step, count, self._train, _synth_problem)  # dataset pools hold problems

    def heldout_suites(self, names, num_problems: int) -> dict[str, list[Problem]]:
        available = [source_name(s) for s in self.cfg.sources] + [IFBENCH]
        missing = [name for name in names or [] if name not in available]
        if missing:
            raise ValueError(f"instruct has no held-out suite {missing}; it has {available}")
        suites = {}
        for source in self.cfg.sources:
            if names and source_name(source) not in names:
                continue
            rows = self._rows(source, heldout=True)
            if isinstance(rows, list):
                suites[source_name(source)] = rows[:num_problems]
            else:
                suites[source_name(source)] = [_synth_problem(r) for r in rows.select(range(min(num_problems, len(rows))))]
        if not names or IFBENCH in names:
            suites[IFBENCH] = [_ifbench_problem(row) for row in load_ifbench_rows()[:num_problems]]
        return suites

    def score_suite(self, suite: str, problems: list[Problem], completions: list) -> dict[str, list[float]]:
        responses = [c.answer_text for c in completions]
        if suite == IFBENCH:
            return score_ifbench(problems, responses)
        followed = [check_constraints(self.user_message(p), r, p.fields["instruction_id_list"], p.fields["kwargs"])
                    for p, r in zip(problems, responses)]
        return {
            "score": [float(bool(f) and all(f.values())) for f in followed],
            "constraint_share": [sum(f.values()) / len(f) if f else 0.0 for f in followed],
        }


def _ifbench_check(evaluation_lib, test, problem: Problem, response: str):
    """One IFBench check (strict or loose) on fresh inputs: the scorer mutates its example's kwargs."""
    example = evaluation_lib.InputExample(
        key=problem.id, instruction_id_list=list(problem.fields["instruction_id_list"]),
        prompt=problem.question, kwargs=copy.deepcopy(problem.fields["kwargs"]),
    )
    try:
        return test(example, {problem.question: response}).follow_instruction_list
    except Exception as error:  # noqa: BLE001 - one checker crashing on a response must not end the eval
        log.warning("IFBench checker raised on problem %s (%s); counted as not followed", problem.id, error)
        return [False] * len(example.instruction_id_list)


def score_ifbench(problems: list[Problem], responses: list[str]) -> dict[str, list[float]]:
    """IFBench's scorer per response: prompt-level strict (``score``) and loose, instruction-level both ways."""
    evaluation_lib = ifbench_modules().evaluation_lib
    instructions_per_prompt = sum(len(p.fields["instruction_id_list"]) for p in problems) / max(len(problems), 1)
    out = {"score": [], "loose": [], "instruction_strict": [], "instruction_loose": []}
    for problem, response in zip(problems, responses):
        strict = _ifbench_check(evaluation_lib, evaluation_lib.test_instruction_following_strict, problem, response)
        loose = _ifbench_check(evaluation_lib, evaluation_lib.test_instruction_following_loose, problem, response)
        out["score"].append(float(all(strict)))
        out["loose"].append(float(all(loose)))
        # Scaled so the suite mean is IFBench's instruction-level accuracy (a micro average over instructions).
        out["instruction_strict"].append(sum(strict) / instructions_per_prompt)
        out["instruction_loose"].append(sum(loose) / instructions_per_prompt)
    return out
