"""The trainer's learning signal is the right one: log-probs of the distribution vLLM sampled
from (temperature), of the model's own logits path (softcapping, logit scaling), and a saved
LoRA checkpoint that merges, the way users merge it, into the model the run evaluated."""

import itertools

import pytest
import torch

from posttrain.core.policy import PolicyTrainer, Sequences
from posttrain.core.schema import LoraConfig, TrainerConfig
from specialists.grpo import GrpoLoss, LossNormalizer

VOCAB = 4  # small enough to enumerate every two-token completion


def _save_tiny(tmp_path, family: str, **extra) -> str:
    """A 1-layer model of ``family`` with a 4-token vocabulary (no download)."""
    import transformers

    config_cls, model_cls = {
        "llama": ("LlamaConfig", "LlamaForCausalLM"),
        "gemma2": ("Gemma2Config", "Gemma2ForCausalLM"),
        "granite": ("GraniteConfig", "GraniteForCausalLM"),
        "cohere": ("CohereConfig", "CohereForCausalLM"),
    }[family]
    config = getattr(transformers, config_cls)(
        vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, head_dim=8, max_position_embeddings=32, pad_token_id=0, bos_token_id=1,
        eos_token_id=2, **extra,
    )
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(config)
    with torch.no_grad():  # larger logits than the default init, so the temperature matters
        model.get_output_embeddings().weight.mul_(40.0)
    out = tmp_path / family
    model.save_pretrained(out)
    return str(out)


def _trainer(path, **overrides) -> PolicyTrainer:
    cfg = TrainerConfig(**{"autocast": "none", "micro_batch_size": 64, "lr": 1e-3, **overrides})
    return PolicyTrainer(path, cfg, seed=0, threads=1)


def _expected_and_exact_gradients(trainer, sampled_at: float, scored_at: float):
    """E_{y ~ pi_T}[A(y) grad log pi(y)] through the trainer (log-probs at ``scored_at``), and the exact
    gradient of J = E_{y ~ pi_T}[R(y)], for two-token completions whose reward is the first token's only."""
    model = trainer.model
    prompt, reward = [1, 3], {0: 1.0, 1: 0.0, 2: 0.5, 3: -1.0}
    pairs = list(itertools.product(range(VOCAB), repeat=2))

    def sampling_logprobs(ids):  # log softmax(logits / T) at the completion positions: what vLLM samples
        return (model(torch.tensor([ids])).logits[0, len(prompt) - 1 :] / sampled_at).log_softmax(-1)

    with torch.no_grad():
        probs = [float(sampling_logprobs(prompt + [a, b])[[0, 1], [a, b]].sum().exp()) for a, b in pairs]
    # every completion weighted by its sampling probability: one pass gives the expectation
    seqs = Sequences([prompt] * len(pairs), [list(p) for p in pairs], temperature=scored_at)
    loss = GrpoLoss(LossNormalizer("token_mean", 1, len(pairs), 2))  # normaliser 1: a plain sum
    model.zero_grad()
    trainer._accumulate(seqs, loss, {"advantages": [p * reward[a] for p, (a, _) in zip(probs, pairs)]}, backward=True)
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()  # J = sum_a pi_T(a) R(a): the second token does not enter
    first_V = sampling_logprobs(prompt + [0, 0])[0].exp()
    (-(first_V * torch.tensor([reward[a] for a in range(VOCAB)])).sum()).backward()
    return expected, {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("temperature", [0.5, 0.8])
def test_expected_gradient_is_the_gradient_of_expected_reward_at_the_sampling_temperature(tmp_path, temperature):
    """Fails before the fix (no ``Sequences.temperature``; log-probs always at T=1)."""
    trainer = _trainer(_save_tiny(tmp_path, "llama"))
    expected, exact = _expected_and_exact_gradients(trainer, sampled_at=temperature, scored_at=temperature)
    for name, grad in exact.items():
        torch.testing.assert_close(expected[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_log_probs_at_t1_while_sampling_at_t_give_a_biased_gradient(tmp_path):
    """What the code did before: the gradient is off although the sampled tokens are the same."""
    trainer = _trainer(_save_tiny(tmp_path, "llama"))
    expected, exact = _expected_and_exact_gradients(trainer, sampled_at=0.8, scored_at=1.0)
    head = "lm_head.weight"
    gap = (expected[head] - exact[head]).norm() / exact[head].norm()
    assert gap > 0.05, gap


@pytest.mark.parametrize(
    "family, extra",
    [("gemma2", {"final_logit_softcapping": 1.5}), ("granite", {"logits_scaling": 4.0}), ("cohere", {"logit_scale": 0.25})],
)
def test_logprobs_follow_the_models_own_logits_path(tmp_path, family, extra):
    """Fails before the fix: the decoder + head path skipped softcapping / logit scaling."""
    trainer = _trainer(_save_tiny(tmp_path, family, **extra))
    seqs = Sequences([[1, 3, 2]], [[0, 3, 1, 2]], temperature=0.7)
    logprobs_B_T, _ = trainer.token_logprobs(seqs)
    with torch.no_grad():
        logits_L_V = trainer.model(torch.tensor([[1, 3, 2, 0, 3, 1, 2]])).logits[0]
    expected = (logits_L_V[2:6] / 0.7).log_softmax(-1)[torch.arange(4), torch.tensor([0, 3, 1, 2])]
    torch.testing.assert_close(logprobs_B_T[0], expected, atol=1e-5, rtol=1e-5)


def test_a_logits_path_the_trainer_does_not_know_is_refused_naming_the_model(tmp_path, monkeypatch):
    import posttrain.core.policy as policy
    from posttrain.core.logits import LogitsPath

    path = _save_tiny(tmp_path, "gemma2", final_logit_softcapping=1.5)
    monkeypatch.setattr(policy, "logits_path", lambda config: LogitsPath())  # as if softcapping were unknown
    with pytest.raises(ValueError, match=f"model.path '{path}'.*post-processes"):
        _trainer(path)


def test_distillation_refuses_a_softcapped_student_at_validation(tmp_path):
    from posttrain.core.models import logits_postprocessing

    assert logits_postprocessing(_save_tiny(tmp_path, "llama")) is None
    message = logits_postprocessing(_save_tiny(tmp_path, "gemma2", final_logit_softcapping=1.5))
    assert message.startswith("model.path") and "softcap 1.5" in message


def test_saved_lora_merged_by_peft_is_the_model_the_run_evaluates(tiny_model_path, tmp_path):
    """Fails before the fix: the adapter was trained over a bf16 base but recorded the fp32 one, so
    peft's merge onto the recorded base gave other weights (and greedy outputs) than the engine's."""
    import json

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    trainer = _trainer(tiny_model_path, autocast="bfloat16", lora=LoraConfig(r=4), lr=3e-3)
    seqs = Sequences([[1, 5, 9], [1, 7]], [[20, 21, 2], [30, 31, 32]])
    for _ in range(3):
        trainer.update(seqs, GrpoLoss(LossNormalizer("token_mean", 6, 2, 4)), {"advantages": [1.0, -1.0]})
    checkpoint = trainer.save(str(tmp_path / "step_3"))
    engine_bf16 = trainer.engine_weights("bfloat16")  # what the run's engine (and its after-eval) ran

    base = json.loads((tmp_path / "step_3" / "adapter_config.json").read_text())["base_model_name_or_path"]
    user = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), checkpoint).merge_and_unload()
    user_bf16 = {n: p.detach().to(torch.bfloat16) for n, p in user.named_parameters() if n in engine_bf16}
    differing = [n for n, w in engine_bf16.items() if not torch.equal(w, user_bf16[n])]
    assert not differing, differing[:3]

    run_model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
    run_model.load_state_dict(engine_bf16, strict=False)
    prompt = torch.tensor([[1, 5, 9, 11, 40]])
    greedy = dict(max_new_tokens=12, do_sample=False, pad_token_id=0)
    assert torch.equal(user.to(torch.bfloat16).generate(prompt, **greedy), run_model.generate(prompt, **greedy))
