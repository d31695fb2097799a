"""The SFT stage: loss on the completion only (thinking included), datasets as jsonl and parquet,
recipe errors with field paths."""

import json

import pytest
import torch
import yaml

import specialists.domains  # noqa: F401  (registers math)
from posttrain.core.policy import PolicyTrainer, pack_sequences
from posttrain.core.schema import TrainerConfig
from posttrain.core.tasks import make_task
from posttrain.recipe import RecipeError, load_recipe, validate_recipe
from specialists.sft import SftLoss
from specialists.sft_data import SftData, as_sequences

RECIPE = {
    "model": {"path": "tiny-random", "max_model_len": 384, "prompt_room": 96},
    "modes": {"non_think": {"max_tokens": 16}, "max": {"thinking": True, "thinking_budget": 150, "max_tokens": 180}},
    "task": {"domain": "math", "sources": [{"kind": "arithmetic_traces", "count": 300}]},
    "sft": {"steps": 2, "batch_size": 4},
}


def _recipe(**sft):
    return validate_recipe({**RECIPE, "sft": {**RECIPE["sft"], **sft}})


@pytest.fixture(scope="module")
def tokenizer(tiny_model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_path)


def _data(recipe, tokenizer):
    return SftData(recipe, make_task(recipe.task, seed=0), tokenizer)


def test_examples_look_like_rl_prompts_and_train_on_the_thinking(tokenizer):
    recipe = _recipe(modes={"max": 1.0})
    (example,) = _data(recipe, tokenizer).batch(0, 1)
    prompt, completion = tokenizer.decode(example.prompt_ids), tokenizer.decode(example.completion_ids)
    assert prompt.endswith("<think>\n") and "then check" not in prompt
    thinking, answer = completion.split("</think>")
    assert "write" in thinking and "check:" in thinking and "The answer is" in answer
    assert example.completion_ids[-1] == tokenizer.eos_token_id  # the model learns to stop


def test_sft_loss_is_the_completion_nll_and_ignores_the_prompt(tiny_model_path, tokenizer):
    recipe = _recipe(modes={"max": 1.0, "non_think": 1.0})
    seqs = as_sequences(_data(recipe, tokenizer).batch(3, 4))
    trainer = PolicyTrainer(tiny_model_path, TrainerConfig(autocast="none", micro_batch_size=2), seed=0, threads=1)
    tokens = sum(map(len, seqs.completion_ids))
    loss, _ = SftLoss(tokens)(trainer.student(seqs), {})
    nll = 0.0
    with torch.no_grad():
        for prompt, completion in zip(seqs.prompt_ids, seqs.completion_ids):
            logits = trainer.model(input_ids=torch.tensor([prompt + completion])).logits[0].float()
            logprobs = logits[len(prompt) - 1 : -1].log_softmax(-1)  # the positions predicting completion tokens
            nll -= logprobs.gather(-1, torch.tensor(completion).unsqueeze(-1)).sum().item()
    assert float(loss) == pytest.approx(nll / tokens, rel=1e-4)
    *_, mask_B_T = pack_sequences(seqs, 0, torch.device("cpu"))
    assert mask_B_T.sum() == tokens  # every completion token (thinking, tag, answer, EOS), no prompt token


def test_a_batch_is_a_function_of_seed_and_step(tokenizer):
    data = _data(_recipe(), tokenizer)
    first, again, other = data.batch(5, 4), data.batch(5, 4), data.batch(6, 4)
    assert [e.completion_ids for e in first] == [e.completion_ids for e in again]
    assert [e.completion_ids for e in first] != [e.completion_ids for e in other]


def _rows():
    return [
        {"prompt": "What is 12 + 30?", "response": "<think>\n2+0+0=2\n</think>\nThe answer is 42.", "mode": "max"},
        {"prompt": "What is 5 + 5?", "response": "The answer is 10.", "mode": "non_think"},
    ]


def test_a_jsonl_dataset_with_prompt_and_response_columns(tmp_path, tokenizer):
    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in _rows()))
    recipe = _recipe(data={"source": "dataset", "path": str(path), "mode_column": "mode"})
    examples = _data(recipe, tokenizer).batch(0, 8)
    by_mode = {e.mode: e for e in examples}
    assert by_mode["max"].completion.startswith("2+0+0=2") and tokenizer.decode(by_mode["max"].prompt_ids).endswith("<think>\n")
    assert by_mode["non_think"].completion == "The answer is 10."


def test_a_parquet_dataset_with_a_messages_column(tmp_path, tokenizer):
    from datasets import Dataset

    chats = [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": r["prompt"]},
              {"role": "assistant", "content": r["response"]}] for r in _rows()]
    path = tmp_path / "sft.parquet"
    Dataset.from_dict({"messages": chats, "mode": [r["mode"] for r in _rows()]}).to_parquet(str(path))
    recipe = _recipe(data={"source": "dataset", "path": str(path), "messages_column": "messages", "mode_column": "mode"})
    examples = _data(recipe, tokenizer).batch(1, 6)
    assert {e.mode for e in examples} <= {"max", "non_think"}
    assert all("Be brief." in tokenizer.decode(e.prompt_ids) for e in examples)


def test_sft_recipe_errors_name_their_field(tmp_path):
    path = tmp_path / "sft.jsonl"
    path.write_text(json.dumps({"question": "q", "response": "r", "mode": "ultra"}) + "\n")
    cases = {
        "sft.steps": {"steps": -1},
        "sft.data": {"data": {"source": "dataset"}},
        "sft.modes.nope": {"modes": {"nope": 1.0}},
        "sft.data.prompt_column": {"data": {"source": "dataset", "path": str(path)}},
        "sft.data.mode_column": {"data": {"source": "dataset", "path": str(path), "prompt_column": "question", "mode_column": "mode"}},
        "sft.data.path": {"data": {"source": "dataset", "path": str(tmp_path / "missing.parquet")}},
    }
    for where, sft in cases.items():
        with pytest.raises(RecipeError, match=where.replace(".", r"\.")):
            _recipe(**sft)
    with pytest.raises(RecipeError, match="`sft` needs `task:`"):
        validate_recipe({"model": RECIPE["model"], "modes": RECIPE["modes"], "sft": {}})


def test_sft_then_grpo_recipes_validate(tmp_path):
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    recipe = load_recipe(root / "recipes" / "math_thinking.yaml")
    assert recipe.sft.steps > 0 and recipe.grpo.steps > 0 and set(recipe.sft.modes) == set(recipe.task.modes)
    assert load_recipe(root / "tests" / "recipes" / "tiny_sft_grpo.yaml").sft.steps == 2
    data = yaml.safe_load((root / "recipes" / "math_thinking.yaml").read_text())
    assert data["sft"] and data["task"]
