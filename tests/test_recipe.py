"""A malformed recipe fails before any work starts, naming the field and what was expected."""

from pathlib import Path

import pytest
import yaml

from posttrain.recipe import RecipeError, apply_overrides, load_recipe

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
MINIMAL = {"model": {"path": "tiny-random"}, "task": {"sources": [{"kind": "arithmetic"}]}}


def _write(tmp_path, data) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _error(tmp_path, data, overrides=()) -> str:
    with pytest.raises(RecipeError) as caught:
        load_recipe(_write(tmp_path, data), overrides)
    return str(caught.value)


@pytest.mark.parametrize("name", sorted(p.name for p in RECIPES.glob("*.yaml")))
def test_shipped_recipes_validate(name):
    data = yaml.safe_load((RECIPES / name).read_text())
    if "pipeline" in data:
        assert load_recipe(RECIPES / name).pipeline.specialists  # every stage validated inside
        return
    if "distill" not in data:
        assert load_recipe(RECIPES / name).task.sources
        return
    # distillation recipes name what earlier runs make (teacher checkpoints, a student under runs/): only those
    # may be missing
    try:
        load_recipe(RECIPES / name)
    except RecipeError as error:
        problems = str(error).splitlines()[1:]
        made_by_a_run = [(".path: checkpoint" in p and "does not exist" in p) or "model.path: 'runs/" in p for p in problems]
        assert all(made_by_a_run), problems


def test_minimal_recipe_gets_defaults(tmp_path):
    recipe = load_recipe(_write(tmp_path, MINIMAL))
    assert recipe.grpo.samples_per_prompt == 8 and recipe.task.rewards[0].name == "math_verify"


def test_unknown_key_names_its_path(tmp_path):
    message = _error(tmp_path, {**MINIMAL, "grpo": {"stepz": 3}})
    assert "grpo.stepz" in message and "Extra inputs are not permitted" in message


def test_wrong_type_names_path_and_value(tmp_path):
    message = _error(tmp_path, MINIMAL, ["trainer.lr=fast"])
    assert "trainer.lr" in message and "'fast'" in message


def test_missing_required_section(tmp_path):
    assert "exactly one of `task`" in _error(tmp_path, {"model": {"path": "tiny-random"}})


def test_missing_data_file(tmp_path):
    data = {**MINIMAL, "task": {"sources": [{"kind": "gsm8k", "path": "./no/such.jsonl"}]}}
    message = _error(tmp_path, data)
    assert "task.sources.0.path" in message and "does not exist" in message


def test_unresolvable_reward(tmp_path):
    message = _error(tmp_path, MINIMAL, ["task.rewards=[{name: no_such_reward}]"])
    assert "task.rewards.0.name" in message and "no_such_reward" in message


def test_model_path_that_does_not_exist(tmp_path):
    message = _error(tmp_path, MINIMAL, [f"model.path={tmp_path}/missing"])
    assert "model.path" in message and "does not exist" in message


def test_every_problem_reported_at_once(tmp_path):
    message = _error(tmp_path, MINIMAL, ["grpo.steps=-1", "trainer.micro_batch_size=0"])
    assert "grpo.steps" in message and "trainer.micro_batch_size" in message


def test_completion_budget_must_fit_the_context(tmp_path):
    message = _error(tmp_path, MINIMAL, ["model.max_model_len=128", "grpo.max_tokens=128"])
    assert "grpo.max_tokens" in message and "max_model_len" in message


def test_overrides_parse_yaml_values_and_index_lists():
    data = apply_overrides({"a": {"b": 1}, "l": [{"w": 1}]}, ["a.b=2.5", "a.c=true", "l.0.w=3", "new.x=[1, 2]"])
    assert data == {"a": {"b": 2.5, "c": True}, "l": [{"w": 3}], "new": {"x": [1, 2]}}
    with pytest.raises(RecipeError, match="not an index"):
        apply_overrides({"l": [1]}, ["l.5=0"])
    with pytest.raises(RecipeError, match="expected key.path=value"):
        apply_overrides({}, ["novalue"])


def test_missing_recipe_file():
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe("no/such/recipe.yaml")
