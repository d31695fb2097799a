"""Prompt sources: held-out suites never overlap training."""

from posttrain.core.schema import TaskConfig
from specialists.math_task import ArithmeticSource, Gsm8kSource
from specialists.data import is_heldout, load_arithmetic
from specialists.math_task import MathTask, heldout_problems

from .conftest import require_gsm8k


def test_arithmetic_is_deduplicated_and_correct():
    rows = load_arithmetic(seed=0, count=500, max_operand=9, ops="+-*", terms=2)
    questions = rows["question"]
    assert len(questions) == len(set(questions))
    for row in rows.select(range(20)):
        expression = row["question"].removeprefix("What is ").removesuffix("?")
        assert str(eval(expression)) == row["answer"]


def test_training_stream_never_contains_heldout_problems():
    cfg = TaskConfig(sources=[ArithmeticSource(kind="arithmetic", count=2000, max_operand=30)])
    task = MathTask(cfg, seed=1)
    heldout = {p.question for p in heldout_problems(cfg.sources, 1000, seed=1)["arithmetic(max=30,ops=+-,terms=2)"]}
    assert heldout and all(is_heldout(q) for q in heldout)
    trained = {p.question for step in range(50) for p in task.sample(step, 16)}
    assert not trained & heldout


def test_sampling_is_a_function_of_seed_and_step():
    cfg = TaskConfig(sources=[ArithmeticSource(kind="arithmetic", count=300)])
    a, b = MathTask(cfg, seed=3), MathTask(cfg, seed=3)
    assert [p.question for p in a.sample(7, 8)] == [p.question for p in b.sample(7, 8)]
    assert [p.question for p in a.sample(7, 8)] != [p.question for p in a.sample(8, 8)]


def test_gsm8k_answers_are_parsed_numbers():
    path = require_gsm8k()
    cfg = TaskConfig(sources=[Gsm8kSource(kind="gsm8k", path=str(path))])
    problems = MathTask(cfg).sample(0, 5)
    assert all(p.answer.lstrip("-").replace(".", "").isdigit() for p in problems)
