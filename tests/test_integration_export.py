"""An exported LoRA checkpoint loads in vLLM as is and decodes greedily what the checkpoint's own
model (peft over its base, in transformers) decodes. Tiny model, float32 on both sides, 3 prompts."""

import pytest
import ray
import torch

from posttrain.core.checkpoints import saved_checkpoint
from posttrain.export import export_checkpoint
from rollout.engine import EngineConfig, SamplingSpec, engine_actor

from .test_export import QUESTIONS, trained_run

pytestmark = pytest.mark.integration
NEW_TOKENS = 12


def test_vllm_loads_the_export_and_decodes_as_the_checkpoint(tmp_path, tiny_model_path, ray_local):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    trained_run(tmp_path / "run", tiny_model_path, lora=True)
    checkpoint = tmp_path / "run" / "checkpoints" / "step_1"
    out = export_checkpoint(saved_checkpoint(checkpoint), tmp_path / "export", dtype="float32")
    tokenizer = AutoTokenizer.from_pretrained(out)  # the export's own tokenizer and chat template
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=True,
                                             return_dict=True)["input_ids"] for q in QUESTIONS]
    own = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32), str(checkpoint))
    expected = []
    for ids in prompts:
        with torch.no_grad():
            full = own.generate(torch.tensor([ids]), max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=tokenizer.eos_token_id)
        expected.append(_strip_eos(full[0, len(ids):].tolist(), tokenizer.eos_token_id))
    engine = engine_actor(EngineConfig(model=str(out), dtype="float32", max_model_len=256, kv_cache_gib=0.25))
    try:
        result = ray.get(engine.generate.remote(prompts, SamplingSpec(n=1, temperature=0.0, max_tokens=NEW_TOKENS)))
    finally:
        ray.kill(engine)
    assert [_strip_eos(c.token_ids, tokenizer.eos_token_id) for c in result.completions] == expected


def _strip_eos(ids: list[int], eos: int) -> list[int]:
    return ids[: ids.index(eos)] if eos in ids else ids
