"""Extension points are open: a task domain (with its source schema, reward and held-out suite) and a
divergence defined in this file alone -- no library edits -- run a recipe through validation; user code
named ``module:attr`` resolves from the console script too."""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Literal

import pytest
import torch
from pydantic import Field

from distill.divergences import Divergence, register_divergence, resolve_divergence
from posttrain.core.schema import Source
from posttrain.core.tasks import Problem, Task, make_task, register_task
from posttrain.recipe import RecipeError, validate_recipe
from rewards import reward

ROOT = Path(__file__).resolve().parents[1]


class ParitySource(Source):
    kind: Literal["unit_parity"] = Field(description="is this number even?")
    count: int = Field(50, gt=0, description="numbers drawn")


@register_task("unit_parity")
class ParityTask(Task):
    """A whole domain in a few lines: prompts, a source schema, a held-out suite and its scorer."""

    sources = (ParitySource,)

    def _numbers(self, heldout: bool) -> list[int]:
        rng = random.Random(self.seed)
        numbers = [rng.randrange(1000) for _ in range(self.cfg.sources[0].count)]
        return [n for n in numbers if (n % 10 == 0) == heldout]

    def _problem(self, number: int) -> Problem:
        return Problem(f"Is {number} even? Answer yes or no.", {"answer": "yes" if number % 2 == 0 else "no"})

    def sample(self, step: int, count: int) -> list[Problem]:
        pool = self._numbers(heldout=False)
        rng = random.Random(self.seed * 31 + step)
        return [self._problem(rng.choice(pool)) for _ in range(count)]

    def heldout_suites(self, names, num_problems: int) -> dict[str, list[Problem]]:
        return {"parity": [self._problem(n) for n in self._numbers(heldout=True)[:num_problems]]}

    def score_suite(self, suite, problems, completions) -> dict[str, list[float]]:
        return {"score": [float(parity_exact("", c.answer_text, answer=p.answer)) for p, c in zip(problems, completions)]}


@reward("unit_parity_exact")
def parity_exact(prompt: str, completion: str, *, answer: str, **_) -> float:
    return float(completion.strip().lower() == answer)


@register_divergence
class HalfReverseKL(Divergence):
    """Half the reverse KL: a divergence of the user's own."""

    name = "unit_half_reverse_kl"

    def per_token(self, s_C_V, t_C_V, ids_C=None):
        logp_s, logp_t = torch.log_softmax(s_C_V, -1), torch.log_softmax(t_C_V, -1)
        return 0.5 * (logp_s.exp() * (logp_s - logp_t)).sum(-1)


TASK = {"domain": "unit_parity", "sources": [{"kind": "unit_parity", "count": 40}],
        "rewards": [{"name": "unit_parity_exact"}], "instruction": ""}


def test_a_domain_defined_in_this_file_runs_a_recipe_through_validation():
    recipe = validate_recipe({"model": {"path": "tiny-random"}, "task": TASK})
    assert isinstance(recipe.task.sources[0], ParitySource) and recipe.task.sources[0].count == 40
    task = make_task(recipe.task, seed=3)
    assert isinstance(task, ParityTask) and len(task.sample(0, 4)) == 4
    assert task.heldout_suites(None, 5)["parity"]


def test_a_divergence_defined_in_this_file_is_named_by_a_distillation_recipe():
    data = {
        "model": {"path": "tiny-random"},
        "modes": {"plain": {"max_tokens": 32}},
        "distill": {"domains": {"parity": TASK}, "divergence": "unit_half_reverse_kl",
                    "teachers": [{"domain": "parity", "mode": "plain", "path": "not-made-yet"}]},
    }
    recipe = validate_recipe(data, check_files=False)
    assert isinstance(resolve_divergence(recipe.distill.divergence), HalfReverseKL)


def test_unknown_kinds_and_divergences_fail_naming_the_path_and_the_registered_names():
    bad_kind = {**TASK, "sources": [{"kind": "arithmetic"}]}
    with pytest.raises(RecipeError) as caught:
        validate_recipe({"model": {"path": "tiny-random"}, "task": bad_kind})
    assert "task.sources.0.kind" in str(caught.value) and "unit_parity" in str(caught.value)
    with pytest.raises(RecipeError) as caught:
        validate_recipe({"model": {"path": "tiny-random"}, "task": {**TASK, "sources": [{"kind": "unit_parity", "count": 0}]}})
    assert "task.sources.0.count" in str(caught.value)
    data = {"model": {"path": "tiny-random"}, "modes": {"plain": {"max_tokens": 32}},
            "distill": {"domains": {"parity": TASK}, "divergence": "no_such_divergence",
                        "teachers": [{"domain": "parity", "mode": "plain", "path": "x"}]}}
    with pytest.raises(RecipeError) as caught:
        validate_recipe(data, check_files=False)
    assert "distill.divergence" in str(caught.value) and "reverse_kl" in str(caught.value)


def test_user_code_by_module_attr_from_the_console_script(tmp_path):
    """``my_rewards:fn`` and ``env: my_envs:Thermostat`` resolve from the working directory, also when
    ``posttrain`` runs as a console script (whose sys.path lacks the working directory)."""
    (tmp_path / "my_rewards.py").write_text("def fn(prompt, completion, **_):\n    return 1.0\n")
    (tmp_path / "my_envs.py").write_text(textwrap.dedent('''
        from rollout.environments import Environment, EnvTask
        from rollout.tools import tool

        class Thermostat(Environment):
            def __init__(self, target: int = 20):
                self.value, self.target = 15, target

            @tool
            def set_to(self, degrees: int) -> int:
                """Set the temperature.

                Args:
                    degrees: the new temperature
                """
                self.value = degrees
                return degrees

            @classmethod
            def make_task(cls, rng):
                target = rng.randint(16, 25)
                return EnvTask(f"Set the thermostat to {target}.", setup={"target": target})

            def outcome(self, final_answer: str) -> float:
                return float(self.value == self.target)
    '''))
    (tmp_path / "r.yaml").write_text(textwrap.dedent("""
        model: {path: tiny-random}
        task:
          domain: agent
          sources: [{kind: tool_env, env: "my_envs:Thermostat", count: 20}]
          rewards: [{name: "my_rewards:fn"}]
    """))
    script = Path(sys.executable).with_name("posttrain")
    command = [str(script)] if script.exists() else [sys.executable, "-c", "from posttrain.cli import main; raise SystemExit(main())"]
    done = subprocess.run([*command, "check", "r.yaml"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
