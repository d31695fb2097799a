"""``posttrain export``: a LoRA or full checkpoint as a plain HF directory (or a peft adapter) that
transformers loads as is, with the weights the run's engine had (vLLM: test_integration_export.py)."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from posttrain.cli import main
from posttrain.core.models import load_tokenizer
from posttrain.core.policy import PolicyTrainer, Sequences
from posttrain.core.schema import LoraConfig, TrainerConfig
from posttrain.core.checkpoints import saved_checkpoint
from posttrain.export import PROVENANCE, export_checkpoint
from specialists.grpo import GrpoLoss, LossNormalizer

SEQS = Sequences(prompt_ids=[[1, 5, 9, 11], [1, 7]], completion_ids=[[20, 21, 2], [30, 31, 32, 2]])
QUESTIONS = ["What is 2 + 3?", "Name a colour.", "Say hello."]


def trained_run(root, base, lora: bool):
    """A run directory with one checkpoint after one large-rate update (LoRA's B is no longer zero)."""
    cfg = TrainerConfig(autocast="none", micro_batch_size=8, lr=5e-2, lora=LoraConfig(r=4, alpha=8) if lora else None)
    trainer = PolicyTrainer(base, cfg, seed=0, threads=1)
    trainer.update(SEQS, GrpoLoss(LossNormalizer("token_mean", 7, 2, 8)), {"advantages": [1.0, -1.0]})
    trainer.save(str(root / "checkpoints" / "step_1"), load_tokenizer(base))
    (root / "recipe.yaml").write_text(yaml.safe_dump({"model": {"path": base, "engine_dtype": "bfloat16"}}))
    return trainer


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_model_path):
    root = tmp_path_factory.mktemp("lora_run")
    return root, trained_run(root, tiny_model_path, lora=True)


def greedy(model, tokenizer, max_new_tokens=8) -> list[list[int]]:
    out = []
    for question in QUESTIONS:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)["input_ids"]
        with torch.no_grad():
            full = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id)
        out.append(full[0, ids.shape[1]:].tolist())
    return out


def test_a_lora_checkpoint_exports_as_the_merged_model_the_engine_had(lora_run, tiny_model_path, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root, trainer = lora_run
    out = export_checkpoint(saved_checkpoint(root / "checkpoints" / "step_1"), tmp_path / "export", dtype="float32")
    assert (out / "config.json").exists() and (out / "chat_template.jinja").exists() and not (out / "adapter_config.json").exists()
    exported = AutoModelForCausalLM.from_pretrained(out)  # plain transformers, no peft
    engine = trainer.engine_weights("float32")  # what the run's engine was given
    state = exported.state_dict()
    for name, tensor in engine.items():
        torch.testing.assert_close(state[name], tensor, atol=1e-6, rtol=0)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template == AutoTokenizer.from_pretrained(tiny_model_path).chat_template
    own = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32),
                                    str(root / "checkpoints" / "step_1"))
    assert greedy(exported, tokenizer) == greedy(own, tokenizer)
    assert json.loads((out / PROVENANCE).read_text())["lora_merged_in"] == "float32"


def test_adapter_export_loads_with_peft_and_records_the_base_asked(lora_run, tiny_model_path, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    root, trainer = lora_run
    out = export_checkpoint(saved_checkpoint(root / "checkpoints" / "step_1"), tmp_path / "adapter", adapter=True)
    assert not (out / "trainer_state.pt").exists()
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32), str(out))
    ids = torch.tensor([SEQS.prompt_ids[0]])
    with torch.no_grad():
        expected = trainer.model(ids).logits
        torch.testing.assert_close(loaded(ids).logits, expected, atol=1e-5, rtol=0)
    named = export_checkpoint(saved_checkpoint(root / "checkpoints" / "step_1"), tmp_path / "hub", adapter=True,
                              base_id="HuggingFaceTB/SmolLM2-135M-Instruct")
    assert json.loads((named / "adapter_config.json").read_text())["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_a_full_checkpoint_exports_and_refuses_adapter(tmp_path, tiny_model_path):
    from transformers import AutoModelForCausalLM

    trainer = trained_run(tmp_path / "run", tiny_model_path, lora=False)
    weights = saved_checkpoint(tmp_path / "run" / "checkpoints" / "step_1")
    out = export_checkpoint(weights, tmp_path / "export", dtype="float32")
    state = AutoModelForCausalLM.from_pretrained(out).state_dict()
    for name, tensor in trainer.engine_weights("float32").items():
        assert torch.equal(state[name], tensor), name
    with pytest.raises(ValueError, match="full weights, not a LoRA adapter"):
        export_checkpoint(weights, tmp_path / "adapter", adapter=True)


def test_the_cli_exports_a_run_in_its_engine_dtype_and_names_bad_input(lora_run, tmp_path, capsys):
    from transformers import AutoConfig

    root, _ = lora_run
    assert main(["export", str(root), "--out", str(tmp_path / "model")]) == 0
    assert "merged model (bfloat16)" in capsys.readouterr().out  # the run's model.engine_dtype
    assert AutoConfig.from_pretrained(tmp_path / "model").dtype == torch.bfloat16
    assert main(["export", str(root), "--out", str(tmp_path / "model")]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nope"), "--out", str(tmp_path / "other")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_push_to_hub_uploads_the_finished_directory_and_an_offline_hub_keeps_the_export(lora_run, tmp_path, monkeypatch, capsys):
    import huggingface_hub

    calls = []

    class RecordingApi:  # stands in for the hub (none is reachable here)
        def create_repo(self, repo, **kwargs):
            calls.append(("create_repo", repo, kwargs["private"]))

        def upload_folder(self, folder_path, repo_id, **kwargs):
            calls.append(("upload_folder", repo_id, sorted(p.name for p in Path(folder_path).iterdir())))
            return f"https://hub/{repo_id}/commit/1"

    root, _ = lora_run
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    assert main(["export", str(root), "--out", str(tmp_path / "a"), "--push-to-hub", "me/model", "--private"]) == 0
    assert calls[0] == ("create_repo", "me/model", True)
    assert calls[1][0] == "upload_folder" and {"config.json", "model.safetensors", "chat_template.jinja"} <= set(calls[1][2])

    class Offline:
        def create_repo(self, repo, **kwargs):
            raise ConnectionError("Name or service not known")

    monkeypatch.setattr(huggingface_hub, "HfApi", Offline)
    assert main(["export", str(root), "--out", str(tmp_path / "b"), "--push-to-hub", "me/model"]) == 1
    err = capsys.readouterr().err
    assert "could not push to the hub repo 'me/model': ConnectionError" in err and "hf upload me/model" in err
    assert (tmp_path / "b" / "config.json").exists(), "the export itself is complete"
