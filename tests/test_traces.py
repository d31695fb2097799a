"""Reasoning traces that need a budget: correct, longer with more digits, in each mode's style, held out by hash."""

import random

from posttrain.core.schema import EffortMode, TaskConfig, ThinkingTags
from posttrain.core.tasks import make_task
import specialists.domains  # noqa: F401  (registers math)
from specialists import data, traces

TAGS = ThinkingTags()
NON_THINK = EffortMode(max_tokens=24)
THINK = EffortMode(thinking=True, thinking_budget=160, max_tokens=192)


def _task(**source):
    return make_task(TaskConfig(domain="math", sources=[{"kind": "arithmetic_traces", "count": 2000, **source}]), seed=0)


def test_every_trace_states_the_right_answer():
    rng = random.Random(0)
    for _ in range(300):
        op = rng.choice("+-*")
        a, b = rng.randint(10, 99999), rng.randint(2, 9) if op == "*" else rng.randint(10, 99999)
        a, b = (max(a, b), min(a, b)) if op == "-" else (a, b)
        lines, value = traces.column_trace(a, b, op)
        assert value == eval(f"{a} {op} {b}")
        written = [line.split("write ")[1].split()[0].rstrip(",") for line in lines]
        assert int("".join(reversed(written))) == value  # the digits written, read back, are the answer
        assert int(lines[-1].rsplit("so far ", 1)[1]) == value  # and the last tally states it


def test_traces_grow_with_the_number_of_digits():
    rows = list(traces.load_traces(0, 3000, 2, 5, "+-*"))
    mean_lines = {}
    for digits in range(2, 6):
        picked = [r for r in rows if r["digits"] == digits]
        mean_lines[digits] = sum(len(traces.trace_text(r["a"], r["b"], r["op"], False)) for r in picked) / len(picked)
    assert mean_lines[2] < mean_lines[3] < mean_lines[4] < mean_lines[5]
    assert {r["digits"] for r in rows} == {2, 3, 4, 5} and {r["op"] for r in rows} == {"+", "-", "*"}
    assert all(int(r["answer"]) >= 0 for r in rows)


def test_heldout_problems_never_reach_training():
    rows = traces.load_traces(0, 3000, 2, 5, "+-*")
    train = {r["question"] for r in data.split_rows(rows, heldout=False)}
    heldout = {r["question"] for r in data.split_rows(rows, heldout=True)}
    assert heldout and not train & heldout
    task = _task()
    drawn = {p.question for step in range(20) for p in task.sample(step, 16)}
    assert not drawn & heldout and all(not data.is_heldout(q) for q in drawn)
    (suite,) = task.heldout_suites(None, 30).values()
    assert {p.question for p in suite} <= heldout


def test_references_follow_each_mode_style():
    task = _task(check_modes=["max"])
    problem = task.sample(0, 1)[0]
    plain = task.reference(problem, "non_think", NON_THINK, TAGS)
    high = task.reference(problem, "high", THINK, TAGS)
    checked = task.reference(problem, "max", THINK, TAGS)
    assert plain == f"The answer is {problem.answer}."
    assert high.endswith(f"{TAGS.close}\n{plain}") and "check:" not in high
    assert "check:" in checked.split(TAGS.close)[0] and len(checked) > len(high)
    gsm = make_task(TaskConfig(domain="math", sources=[{"kind": "arithmetic", "count": 50}]), seed=0)
    assert gsm.reference(gsm.sample(0, 1)[0], "high", THINK, TAGS) is None  # no references: SFT refuses it


def test_the_suite_name_round_trips_to_its_source():
    from specialists.math_task import MathTask

    config = MathTask.suite_config("arithmetic_traces(digits=2-4,ops=+-)")
    assert config["sources"] == [{"kind": "arithmetic_traces", "min_digits": 2, "max_digits": 4, "ops": "+-"}]
