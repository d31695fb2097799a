"""Rollout correction (TIS / MIS) and the trainer-engine mismatch figures: pure tensor code."""

import math
from types import SimpleNamespace

import pytest
import torch

from specialists.grpo import GrpoLoss, LossNormalizer, merge_metrics, mismatch_metrics, rollout_weights

REWARD_V = torch.tensor([1.0, 0.0, 0.5, -1.0])


def _expected_gradient(correction: str, cap: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One-token completions, sampled by an engine whose policy q differs from the trainer's pi:
    the loss's expected gradient (every token weighted by q) and the exact gradient of E_pi[R]."""
    logits_V = torch.tensor([0.3, -0.2, 0.9, 0.1], requires_grad=True)
    engine_logq_V = torch.tensor([0.6, -0.4, 0.5, 0.2]).log_softmax(-1)  # e.g. bf16 weights: another policy
    logprobs_B_T = logits_V.log_softmax(-1).unsqueeze(1)  # row y: log pi(y)
    loss = GrpoLoss(LossNormalizer("token_mean", 1, 4, 1), correction=correction, correction_cap=cap)
    extras = {
        "advantages": (engine_logq_V.exp() * REWARD_V).tolist(),  # sampled with probability q(y)
        "rollout_logprobs": [[v] for v in engine_logq_V.tolist()],
    }
    value, _ = loss(_student(logprobs_B_T, torch.ones(4, 1)), extras)
    (got,) = torch.autograd.grad(value, logits_V)
    (exact,) = torch.autograd.grad(-(logits_V.softmax(-1) * REWARD_V).sum(), logits_V)
    return got, exact


def test_tis_makes_the_off_policy_gradient_the_on_policy_one():
    got, exact = _expected_gradient("tis", cap=100.0)
    torch.testing.assert_close(got, exact)
    biased, _ = _expected_gradient("none", cap=100.0)
    assert (biased - exact).norm() > 0.05 * exact.norm()


def test_weights_truncate_and_mask_at_the_cap():
    old_B_T = torch.tensor([[0.0, 0.0, 0.0, 0.0]])
    rollout_B_T = torch.tensor([[0.0, -math.log(3.0), math.log(3.0), -0.1]])  # ratios 1, 3, 1/3, e^0.1
    mask_B_T = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    tis, metrics = rollout_weights(old_B_T, rollout_B_T, mask_B_T, "tis", cap=2.0)
    assert tis[0, :3].tolist() == pytest.approx([1.0, 2.0, 1 / 3])
    mis, _ = rollout_weights(old_B_T, rollout_B_T, mask_B_T, "mis", cap=2.0)
    assert mis[0, :3].tolist() == [1.0, 0.0, 0.0]
    none, _ = rollout_weights(old_B_T, rollout_B_T, mask_B_T, "none", cap=2.0)
    assert none is None
    assert metrics["mismatch_abs_sum"] == pytest.approx(2 * math.log(3.0))  # the masked token does not count
    assert metrics["mismatch_max"] == pytest.approx(math.log(3.0))
    assert metrics["mismatch_outside"] == 2.0
    figures = mismatch_metrics({**metrics, "tokens": 3}, cap=2.0)
    assert figures["mismatch/share_over_threshold"] == pytest.approx(2 / 3)
    assert figures["mismatch/mean_abs_logp_diff"] == pytest.approx(2 * math.log(3.0) / 3)


def test_max_metrics_merge_as_a_max_and_the_rest_as_sums():
    totals = merge_metrics({}, {"mismatch_max": 0.5, "loss": 1.0})
    merge_metrics(totals, {"mismatch_max": 0.2, "loss": 2.0})
    assert totals == {"mismatch_max": 0.5, "loss": 3.0}


def test_no_rollout_logprobs_no_mismatch_figures():
    loss = GrpoLoss(LossNormalizer("token_mean", 2, 1, 2), correction="tis")
    _, metrics = loss(_student(torch.zeros(1, 2, requires_grad=True), torch.ones(1, 2)), {"advantages": [1.0]})
    assert "mismatch_abs_sum" not in metrics and mismatch_metrics({"tokens": 2}, 2.0) == {}


def test_grpo_top_p_below_one_is_refused_naming_the_field(tmp_path):
    from posttrain.recipe import RecipeError, load_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {path: tiny-random}\ntask: {sources: [{kind: arithmetic}]}\ngrpo: {top_p: 0.9}\n")
    with pytest.raises(RecipeError, match="grpo.top_p: .*top_p = 1 only"):
        load_recipe(recipe)


def _student(logprobs_B_T, mask_B_T):
    """What the trainer hands a loss (``posttrain.core.policy.Student``), from given log-probs."""
    return SimpleNamespace(logprobs=lambda: logprobs_B_T * mask_B_T, mask_B_T=mask_B_T)
