"""GRPO math on hand-computed examples."""

import math
from types import SimpleNamespace

import pytest
import torch

from specialists.grpo import GrpoLoss, LossNormalizer, aggregate, group_advantages, policy_loss


def test_group_advantages_grpo_normalises_by_group_std():
    rewards_P_G = torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0]])
    advantages = group_advantages(rewards_P_G, normalize_std=True, eps=0.0 + 1e-12)
    std = torch.tensor([1.0, 0.0, 0.0, 1.0]).std().item()  # unbiased: sqrt(1/3)
    assert advantages[0].tolist() == pytest.approx([0.5 / std, -0.5 / std, -0.5 / std, 0.5 / std])
    assert advantages[1].tolist() == [0.0, 0.0, 0.0, 0.0]  # a solved-by-all group teaches nothing


def test_group_advantages_dr_grpo_only_centres():
    rewards_P_G = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    assert group_advantages(rewards_P_G, normalize_std=False).tolist() == [[0.75, -0.25, -0.25, -0.25]]


def _norm(agg, tokens=3, seqs=2, max_tokens=4):
    return LossNormalizer(agg, tokens, seqs, max_tokens)


def test_aggregations_by_hand():
    per_token_B_T = torch.tensor([[1.0, 2.0], [3.0, 99.0]])
    mask_B_T = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    assert aggregate(per_token_B_T, mask_B_T, _norm("token_mean")).item() == pytest.approx(6 / 3)
    assert aggregate(per_token_B_T, mask_B_T, _norm("seq_mean_token_mean")).item() == pytest.approx((1.5 + 3) / 2)
    assert aggregate(per_token_B_T, mask_B_T, _norm("seq_mean_token_sum_norm")).item() == pytest.approx(6 / (2 * 4))


def test_policy_loss_on_policy_is_minus_mean_advantage_and_gradient_is_advantage():
    logprobs_B_T = torch.tensor([[-1.0, -2.0], [-0.5, -0.1]], requires_grad=True)
    mask_B_T = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    advantages_B = torch.tensor([1.0, -2.0])
    loss, _ = policy_loss(logprobs_B_T, logprobs_B_T.detach(), advantages_B, mask_B_T, _norm("token_mean"))
    # ratio == 1: loss = -(1 + 1 - 2) / 3
    assert loss.item() == pytest.approx(0.0)
    loss.backward()
    assert logprobs_B_T.grad.flatten().tolist() == pytest.approx([-1 / 3, -1 / 3, 2 / 3, 0.0])


def test_clip_higher_is_asymmetric():
    old_B_T = torch.zeros(1, 1)
    mask_B_T = torch.ones(1, 1)
    positive = torch.tensor([1.0])
    ratio = 1.25
    logprobs_B_T = torch.full((1, 1), math.log(ratio))
    symmetric, _ = policy_loss(logprobs_B_T, old_B_T, positive, mask_B_T, _norm("token_mean", 1, 1), 0.2, 0.2)
    higher, _ = policy_loss(logprobs_B_T, old_B_T, positive, mask_B_T, _norm("token_mean", 1, 1), 0.2, 0.28)
    assert symmetric.item() == pytest.approx(-1.2)  # clipped at 1 + 0.2
    assert higher.item() == pytest.approx(-1.25)  # inside 1 + 0.28: not clipped


def test_k3_kl_is_zero_at_reference_and_positive_elsewhere():
    mask_B_T = torch.ones(1, 2)
    logprobs_B_T = torch.tensor([[-1.0, -1.0]])
    zero_adv = torch.zeros(1)
    at_ref, m0 = policy_loss(logprobs_B_T, logprobs_B_T, zero_adv, mask_B_T, _norm("token_mean", 2, 1), 0.2, 0.2, logprobs_B_T, 0.5)
    assert at_ref.item() == pytest.approx(0.0) and m0["kl_sum"] == pytest.approx(0.0)
    ref_B_T = torch.tensor([[-2.0, -0.5]])
    away, m1 = policy_loss(logprobs_B_T, logprobs_B_T, zero_adv, mask_B_T, _norm("token_mean", 2, 1), 0.2, 0.2, ref_B_T, 0.5)
    k3 = [math.exp(-1) + 1 - 1, math.exp(0.5) - 0.5 - 1]
    assert m1["kl_sum"] == pytest.approx(sum(k3))
    assert away.item() == pytest.approx(0.5 * sum(k3) / 2)


def test_micro_batches_sum_to_full_batch_loss():
    torch.manual_seed(0)
    logprobs_B_T = -torch.rand(4, 5)
    mask_B_T = (torch.rand(4, 5) > 0.3).float()
    extras = {"advantages": [1.0, -1.0, 0.5, 2.0]}
    norm = LossNormalizer("token_mean", int(mask_B_T.sum()), 4, 5)
    loss_fn = GrpoLoss(norm)
    full, _ = loss_fn(_student(logprobs_B_T, mask_B_T), extras, None)
    halves = [
        loss_fn(_student(logprobs_B_T[i : i + 2], mask_B_T[i : i + 2]), {"advantages": extras["advantages"][i : i + 2]}, None)[0]
        for i in (0, 2)
    ]
    assert (halves[0] + halves[1]).item() == pytest.approx(full.item())


def _student(logprobs_B_T, mask_B_T):
    """What the trainer hands a loss (``posttrain.core.policy.Student``), from given log-probs."""
    return SimpleNamespace(logprobs=lambda: logprobs_B_T * mask_B_T, mask_B_T=mask_B_T)
