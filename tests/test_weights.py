"""Streamed weight sync, trainer side and the shared-file transport (tiny random model, no engine)."""

import os
import re
from pathlib import Path

import pytest
import torch

from posttrain.core.policy import PolicyTrainer, engine_state_dict
from posttrain.core.schema import LoraConfig, TrainerConfig
from posttrain.core.weights import WeightSender, engine_tensors, layer_buckets
from rollout.weight_buckets import SharedWeights, bucket_tensors


def _trainer(path, **overrides):
    cfg = TrainerConfig(**{"autocast": "none", "micro_batch_size": 8, "lr": 1e-2, **overrides})
    return PolicyTrainer(path, cfg, seed=0, threads=1)


def _received(sender: WeightSender, model, changed_only=False) -> dict[str, torch.Tensor]:
    out = {}
    for ref in sender.buckets(model, changed_only):
        out.update({name: tensor.clone() for name, tensor in bucket_tensors(ref)})
    return out


def test_streamed_buckets_equal_the_state_dict(tiny_model_path):
    trainer = _trainer(tiny_model_path)
    sender = WeightSender(trainer.model, "bfloat16", bucket_bytes=200_000)
    try:
        refs = list(sender.buckets(trainer.model))
        assert len(refs) > 1
        received = _received(sender, trainer.model)
        expected = engine_state_dict(trainer.model, "bfloat16")
        assert received.keys() == expected.keys()
        for name, tensor in expected.items():
            assert torch.equal(received[name], tensor), name
        # in place: a changed weight shows in the same file at the next sync
        with torch.no_grad():
            next(trainer.model.parameters()).add_(1.0)
        again = _received(sender, trainer.model)
        assert not torch.equal(again["model.embed_tokens.weight"], received["model.embed_tokens.weight"])
        assert {ref.path for ref in sender.buckets(trainer.model)} == {refs[0].path}
    finally:
        sender.close()


def test_buckets_never_split_a_decoder_layer(tiny_model_path):
    trainer = _trainer(tiny_model_path)
    seen: dict[str, int] = {}
    for index, bucket in enumerate(layer_buckets(engine_tensors(trainer.model), bucket_bytes=1)):
        for name, _ in bucket:
            match = re.match(r"^(.*?\.layers\.\d+)\.", name)
            if match:
                assert seen.setdefault(match.group(1), index) == index, name
    assert len(seen) >= 2


def test_lora_sends_only_the_adapted_blocks_merged(tiny_model_path):
    lora = LoraConfig(r=4, alpha=8, target_modules=["q_proj"])
    trainer = _trainer(tiny_model_path, lora=lora)
    for name, param in trainer.model.named_parameters():
        if "lora_B" in name:
            with torch.no_grad():
                param.normal_()  # a nonzero delta
    sender = WeightSender(trainer.model, "float32")
    try:
        changed = _received(sender, trainer.model, changed_only=True)
        full = engine_state_dict(trainer.model, "float32")
        # the whole attention block travels (the engine fuses q/k/v), nothing else
        assert changed and all(".self_attn." in name for name in changed)
        assert any(name.endswith("k_proj.weight") for name in changed)
        for name, tensor in changed.items():
            torch.testing.assert_close(tensor, full[name])
    finally:
        sender.close()


def test_shared_file_refuses_an_unknown_tensor(tmp_path):
    shared = SharedWeights([("a", (2, 3))], "float32", directory=str(tmp_path))
    try:
        ref = shared.write([("a", torch.ones(2, 3))])
        assert ref.nbytes == 24 and torch.equal(bucket_tensors(ref)[0][1], torch.ones(2, 3))
        for bad in ([("b", torch.ones(1))], [("a", torch.ones(3, 2))]):
            try:
                shared.write(bad)
            except (KeyError, ValueError):
                continue
            raise AssertionError(f"{bad[0][0]} accepted")
    finally:
        shared.close()


def test_merged_lora_weights_equal_peft_merge(tiny_model_path):
    """The fused addmm merge gives what peft's merge_and_unload gives; a DoRA adapter (not a sum) is refused."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    def adapted(dora: bool):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
        peft_model = get_peft_model(model, PeftLoraConfig(r=4, lora_alpha=8, target_modules="all-linear", use_dora=dora))
        torch.manual_seed(0)
        with torch.no_grad():
            for name, param in peft_model.named_parameters():
                if "lora_B" in name:
                    param.normal_(std=0.1)
        return peft_model

    peft_model = adapted(dora=False)
    ours = dict(engine_tensors(peft_model))
    merged = peft_model.merge_and_unload().state_dict()
    for name, tensor in ours.items():
        torch.testing.assert_close(tensor, merged[name], atol=1e-6, rtol=1e-5, msg=name)
    with pytest.raises(ValueError, match="DoRA"):
        dict(engine_tensors(adapted(dora=True)))


def test_a_weight_file_whose_creator_is_gone_is_removed_by_the_next_sender(tmp_path):
    import subprocess

    from rollout.weight_buckets import FILE_PREFIX

    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid that has exited
    orphan = tmp_path / f"{FILE_PREFIX}{gone.pid}-abc.bin"
    alive = tmp_path / f"{FILE_PREFIX}1-abc.bin"  # pid 1 runs
    unrelated = tmp_path / "posttrain-weights-old.bin"  # no pid: left alone
    for path in (orphan, alive, unrelated):
        path.write_bytes(b"x")
    shared = SharedWeights([("w", (2,))], "float32", directory=str(tmp_path))
    try:
        assert not orphan.exists() and alive.exists() and unrelated.exists()
        assert Path(shared.path).name.startswith(f"{FILE_PREFIX}{os.getpid()}-")
    finally:
        shared.close()
    assert not Path(shared.path).exists()
