"""``posttrain eval`` without an engine: finding a suite's domain, the recipe it runs under, checkpoints."""

import argparse
import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from posttrain.core.checkpoints import adapter_base, engine_model_dir, merge_adapter
from posttrain.evaluate import (
    add_arguments,
    find_checkpoint,
    plan,
    result_table,
    split_names,
    suite_task_configs,
)
from posttrain.recipe import RecipeError
from specialists.math_task import ArithmeticSource, MathTask
from posttrain.core.tasks import Task, register_task

from .conftest import require_gsm8k

SLICE = "arithmetic(max=15,ops=+-,terms=2)"
RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def _args(*argv: str):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_math_suites_by_name_share_one_task():
    require_gsm8k()
    groups = suite_task_configs(["gsm8k", SLICE, "arithmetic"], own=[])
    ((cfg, suites),) = groups
    assert cfg["domain"] == "math" and [s["kind"] for s in cfg["sources"]] == ["gsm8k", "arithmetic", "arithmetic"]
    assert suites == ["gsm8k", SLICE, "arithmetic(max=20,ops=+-,terms=2)"]  # `arithmetic` is the default slice


def test_the_recipe_task_answers_for_its_own_suites():
    own = [{"domain": "math", "sources": [{"kind": "arithmetic", "max_operand": 15}], "instruction": "Number only."}]
    assert suite_task_configs([SLICE], own) == [(own[0], [SLICE])]
    assert suite_task_configs(None, own) == [(own[0], [SLICE])]


def test_an_unknown_suite_names_the_domains_asked():
    with pytest.raises(ValueError, match=r"unknown held-out suite\(s\) \['nosuch'\].*math"):
        suite_task_configs(["nosuch"], own=[])


def test_a_registered_domain_plugs_in_through_suite_config(monkeypatch):
    import posttrain.core.tasks

    monkeypatch.setattr(posttrain.core.tasks.TASKS, "_items", dict(posttrain.core.tasks.TASKS._items))  # the test's domain goes after

    @register_task("unit_quiz")
    class QuizTask(Task):
        sources = (ArithmeticSource,)

        @classmethod
        def suite_config(cls, suite):
            return {"domain": "unit_quiz", "sources": [{"kind": "arithmetic"}]} if suite == "quiz" else None

        def heldout_suites(self, names, num_problems):
            return {"quiz": []}

    ((cfg, suites),) = suite_task_configs(["quiz"], own=[])
    assert cfg["domain"] == "unit_quiz" and suites == ["quiz"]
    assert MathTask.suite_config("quiz") is None


def test_plan_defaults_to_one_default_mode_and_the_checkpoint_as_model(tmp_path):
    recipe, groups = plan(_args("tiny-random", "--suites", SLICE, "--num-problems", "5", "--set", "eval.pass_k=1"), "tiny-random")
    assert recipe.model.path == "tiny-random" and list(recipe.modes) == ["default"]
    assert recipe.eval.num_problems == 5 and recipe.eval.pass_k == 1
    assert groups[0][1] == [SLICE]


def test_plan_takes_modes_and_sweep_from_a_recipe():
    args = _args("tiny-random", "--recipe", str(RECIPES / "math_modes.yaml"), "--modes", "high")
    recipe, groups = plan(args, "tiny-random")
    assert recipe.eval.budget_sweep == [4, 16, 32, 48, 96] and set(recipe.modes) == {"non_think", "high"}
    ((cfg, suites),) = groups  # the recipe's own task, with its sources, rewards and modes
    assert cfg["sources"][0]["max_operand"] == 15 and suites == [SLICE]
    with pytest.raises(ValueError, match="--modes"):
        plan(_args("tiny-random", "--recipe", str(RECIPES / "math_modes.yaml"), "--modes", "max"), "tiny-random")
    with pytest.raises(RecipeError, match="does not exist"):
        plan(_args("tiny-random", "--recipe", "nope.yaml"), "tiny-random")


def test_a_run_directory_means_its_newest_checkpoint(tmp_path):
    for step in (2, 4):
        (tmp_path / "run" / "checkpoints" / f"step_{step}").mkdir(parents=True)
        (tmp_path / "run" / "checkpoints" / f"step_{step}" / "trainer_state.pt").write_bytes(b"")
    (tmp_path / "run" / "checkpoints" / "step_6.partial").mkdir()
    assert find_checkpoint(str(tmp_path / "run")).endswith("step_4")
    with pytest.raises(FileNotFoundError, match="neither a model"):
        find_checkpoint(str(tmp_path))


def test_lora_checkpoint_merges_into_a_full_model_the_same_as_the_trainer_pushes(tmp_path, tiny_model_path):
    import torch
    from safetensors.torch import load_file

    from posttrain.core.policy import PolicyTrainer, engine_state_dict
    from posttrain.core.schema import LoraConfig, TrainerConfig

    trainer = PolicyTrainer(tiny_model_path, TrainerConfig(lora=LoraConfig(r=4, alpha=8), autocast="none"))
    with torch.no_grad():  # a nonzero adapter (peft starts B at zero)
        for name, param in trainer.model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.05)
    checkpoint = trainer.save(str(tmp_path / "run" / "checkpoints" / "step_1"), tokenizer=AutoTokenizer.from_pretrained(tiny_model_path))
    assert adapter_base(Path(checkpoint)) == tiny_model_path
    merged = merge_adapter(Path(checkpoint), tmp_path / "merged")
    assert (merged / "config.json").exists() and (merged / "tokenizer_config.json").exists()
    saved = load_file(str(merged / "model.safetensors"))
    expected = engine_state_dict(trainer.model, "float32")
    for name, tensor in expected.items():
        torch.testing.assert_close(saved[name], tensor, rtol=1e-5, atol=1e-6)
    with engine_model_dir(checkpoint) as model_dir:
        assert Path(model_dir, "config.json").exists()
        scratch = Path(model_dir).parent
    assert not scratch.exists(), "the merged copy is removed after use"


def test_adapter_whose_base_is_elsewhere_asks_for_base(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/elsewhere/model"}))
    with pytest.raises(FileNotFoundError, match="--base"):
        adapter_base(tmp_path)


def test_suite_names_split_on_commas_outside_parentheses():
    assert split_names(f"gsm8k, {SLICE},humaneval") == ["gsm8k", SLICE, "humaneval"]


def test_result_table_has_a_row_per_suite_and_mode():
    entry = {"problems": 4, "accuracy": 0.5, "pass@2": 0.75, "mean_thinking_tokens": 3.0, "mean_answer_tokens": 9.0}
    lines = result_table({f"{SLICE}/default": entry})
    assert len(lines) == 2 and "0.500" in lines[1] and "0.750" in lines[1]


def test_a_run_directory_is_evaluated_under_the_run_own_recipe(tmp_path):
    import yaml

    from posttrain.evaluate import own_recipe
    from posttrain.recipe import load_recipe

    resolved = load_recipe(str(RECIPES / "math_modes.yaml"), ["model.path=tiny-random"]).model_dump(mode="json")
    run = tmp_path / "run"
    (run / "checkpoints" / "step_2").mkdir(parents=True)
    (run / "checkpoints" / "step_2" / "trainer_state.pt").write_bytes(b"")
    (run / "checkpoints" / "step_2" / "adapter_config.json").write_text('{"base_model_name_or_path": "tiny-random"}')
    (run / "recipe.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))  # what RunDir.save_recipe writes
    assert own_recipe(str(run)) == own_recipe(str(run / "checkpoints" / "step_2")) == run / "recipe.yaml"
    assert own_recipe(str(tmp_path)) is None
    recipe, groups = plan(_args(str(run)), find_checkpoint(str(run)))
    assert set(recipe.modes) == {"non_think", "high"} and recipe.eval.budget_sweep == [4, 16, 32, 48, 96]
    ((cfg, suites),) = groups  # the run's own task and its suites, with no --suites and no --recipe
    assert cfg["sources"][0]["max_operand"] == 15 and suites == [SLICE]
    other = plan(_args(str(run), "--recipe", str(RECIPES / "math_modes.yaml"), "--set", "eval.budget_sweep=[8]"), "tiny-random")[0]
    assert other.eval.budget_sweep == [8]
