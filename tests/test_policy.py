"""PolicyTrainer on the tiny random model: log-probs, accumulation, LoRA weights out."""

import copy

import pytest
import torch

from posttrain.core.policy import PolicyTrainer, Sequences
from posttrain.core.schema import LoraConfig, TrainerConfig
from specialists.grpo import GrpoLoss, LossNormalizer

SEQS = Sequences(
    prompt_ids=[[1, 5, 9, 11], [1, 7], [1, 3, 3]],
    completion_ids=[[20, 21, 2], [30, 31, 32, 33, 2], [40]],
)


def _trainer(path, **overrides):
    cfg = TrainerConfig(**{"autocast": "none", "micro_batch_size": 8, "lr": 1e-3, **overrides})
    return PolicyTrainer(path, cfg, seed=0, threads=1)


def test_logprobs_match_a_plain_full_forward(tiny_model_path):
    trainer = _trainer(tiny_model_path)
    logprobs_B_T, mask_B_T = trainer.token_logprobs(SEQS)
    for row, (prompt, completion) in enumerate(zip(SEQS.prompt_ids, SEQS.completion_ids)):
        ids = torch.tensor([prompt + completion])
        with torch.no_grad():
            logits = trainer.model(ids).logits[0].float().log_softmax(-1)
        expected = [logits[len(prompt) - 1 + t, tok].item() for t, tok in enumerate(completion)]
        assert logprobs_B_T[row, : len(completion)].tolist() == pytest.approx(expected, abs=1e-5)
        assert mask_B_T[row].sum().item() == len(completion)


def _grads_after_update(path, micro_batch_size):
    trainer = _trainer(path, micro_batch_size=micro_batch_size)
    trainer.optimizer.step = lambda: None  # keep the weights: we compare gradients
    tokens = sum(map(len, SEQS.completion_ids))
    loss = GrpoLoss(LossNormalizer("token_mean", tokens, len(SEQS), 8))
    metrics = trainer.update(SEQS, loss, {"advantages": [1.0, -0.5, 2.0]})
    return metrics, {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}


def test_gradient_accumulation_equals_one_big_batch(tiny_model_path):
    full_metrics, full = _grads_after_update(tiny_model_path, micro_batch_size=8)
    micro_metrics, micro = _grads_after_update(tiny_model_path, micro_batch_size=1)
    assert micro_metrics["loss"] == pytest.approx(full_metrics["loss"], abs=1e-6)
    for name, grad in full.items():
        torch.testing.assert_close(micro[name], grad, atol=1e-6, rtol=1e-4)


def test_update_changes_the_weights(tiny_model_path):
    trainer = _trainer(tiny_model_path)
    before = copy.deepcopy(trainer.engine_weights("float32"))
    loss = GrpoLoss(LossNormalizer("token_mean", 9, 3, 8))
    trainer.update(SEQS, loss, {"advantages": [1.0, -1.0, 0.5]})
    after = trainer.engine_weights("float32")
    assert "lm_head.weight" not in after  # tied: the engine takes the embeddings
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_lora_engine_weights_equal_peft_merge(tiny_model_path):
    trainer = _trainer(tiny_model_path, lora=LoraConfig(r=4, alpha=8))
    for name, param in trainer.model.named_parameters():
        if "lora_B" in name:  # B starts at zero; make the delta visible
            torch.nn.init.normal_(param, std=0.1)
    pushed = trainer.engine_weights("float32")
    merged = copy.deepcopy(trainer.model).merge_and_unload().state_dict()
    assert set(pushed) == set(merged) - {"lm_head.weight"}
    for name, value in pushed.items():
        torch.testing.assert_close(value, merged[name])
    assert not torch.equal(pushed["model.layers.0.self_attn.q_proj.weight"],
                           trainer.model.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight)


def test_lora_under_bf16_trains_fp32_adapters_over_the_fp32_base_users_merge_onto(tiny_model_path):
    trainer = PolicyTrainer(tiny_model_path, TrainerConfig(lora=LoraConfig(r=4), lr=1e-2), seed=0, threads=1)
    trainable = {n: p for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n and p.dtype == torch.float32 for n, p in trainable.items())
    frozen = [p for p in trainer.model.parameters() if not p.requires_grad]
    assert all(p.dtype == torch.float32 for p in frozen)  # the checkpoint's own dtype: see test_signal_policy
    before = {n: p.detach().clone() for n, p in trainable.items()}
    trainer.update(SEQS, GrpoLoss(LossNormalizer("token_mean", 9, 3, 8)), {"advantages": [1.0, -1.0, 0.5]})
    assert any(not torch.equal(before[n], p) for n, p in trainable.items())
    assert all(w.dtype == torch.bfloat16 for w in trainer.engine_weights().values())


@pytest.mark.parametrize("chunk_tokens", [1, 5, 7])
def test_chunked_logprobs_equal_the_whole_batch_in_value_and_gradient(chunk_tokens):
    from posttrain.core.policy import chunked_target_logprobs

    torch.manual_seed(0)
    hidden = torch.randn(3, 4, 8, dtype=torch.float64, requires_grad=True)
    head = torch.randn(50, 8, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 50, (3, 4))
    weights = torch.randn(3, 4, dtype=torch.float64)
    results = []
    for chunk in (0, chunk_tokens):
        logprobs = chunked_target_logprobs(hidden, head, targets, chunk)
        grads = torch.autograd.grad((logprobs * weights).sum(), (hidden, head))
        results.append((logprobs.detach(), *grads))
    for whole, chunked in zip(*results):
        torch.testing.assert_close(chunked, whole)
    expected = torch.log_softmax(hidden @ head.T, -1).gather(-1, targets[..., None])[..., 0]
    torch.testing.assert_close(results[0][0], expected.detach().float())
