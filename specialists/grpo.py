"""GRPO-family math: group advantages and the clipped policy loss. Pure tensor code.

Shapes: P prompts, G samples per prompt, B = P*G sequences, T completion tokens.

Pieces, and where they come from:
- advantages: ``(r - mean_G) / (std_G + eps)`` (GRPO) or ``r - mean_G`` (Dr.GRPO,
  which drops the std because it up-weights too-easy/too-hard groups);
- ratio clipping: PPO's ``min(ratio*A, clip(ratio, 1-eps_low, 1+eps_high)*A)``,
  with DAPO's clip-higher when ``eps_high > eps_low``;
- KL to the reference: the k3 estimator ``exp(ref - logp) - (ref - logp) - 1``,
  which is unbiased for KL(pi || ref) and always >= 0;
- aggregation over tokens (the normaliser is for the whole batch, so gradient
  accumulation over micro-batches gives the same gradient as one big batch);
- rollout correction: vLLM samples from its own copy of the policy (bf16 weights,
  other kernels), not the trainer's. With ``old = pi_train_old`` and ``vllm`` the
  engine's processed log-prob of the sampled token, the policy-gradient term is
  weighted per token by ``min(exp(old - vllm), C)`` (truncated importance sampling,
  TIS) or kept only where ``exp(old - vllm)`` lies in ``[1/C, C]`` (masked, MIS).
  The log-ratio is logged either way (``mismatch/*``): it is free, the log-probs of
  both sides are already computed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

LossAgg = Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"]
Correction = Literal["none", "tis", "mis"]


def group_advantages(rewards_P_G: torch.Tensor, normalize_std: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """Advantage of each sample relative to its own prompt's group."""
    centered_P_G = rewards_P_G - rewards_P_G.mean(dim=1, keepdim=True)
    if not normalize_std:
        return centered_P_G
    return centered_P_G / (rewards_P_G.std(dim=1, keepdim=True) + eps)


@dataclass(frozen=True)
class LossNormalizer:
    """Batch-wide counts that turn per-token losses into the aggregated loss.

    They cover the whole optimizer batch, not the micro-batch, so summing the
    micro-batch losses reproduces the full-batch loss exactly.
    """

    agg: LossAgg
    total_tokens: int
    total_seqs: int
    max_tokens: int  # Dr.GRPO's constant length normaliser


def aggregate(per_token_B_T: torch.Tensor, mask_B_T: torch.Tensor, norm: LossNormalizer) -> torch.Tensor:
    masked_B_T = per_token_B_T * mask_B_T
    if norm.agg == "token_mean":  # DAPO: every token weighs the same
        return masked_B_T.sum() / max(norm.total_tokens, 1)
    if norm.agg == "seq_mean_token_mean":  # original GRPO: every sequence weighs the same
        per_seq_B = masked_B_T.sum(dim=1) / mask_B_T.sum(dim=1).clamp(min=1)
        return per_seq_B.sum() / norm.total_seqs
    if norm.agg == "seq_mean_token_sum_norm":  # Dr.GRPO: no length bias
        return masked_B_T.sum() / (norm.total_seqs * norm.max_tokens)
    raise ValueError(f"unknown loss aggregation {norm.agg!r}")


def policy_loss(
    logprobs_B_T: torch.Tensor,
    old_logprobs_B_T: torch.Tensor,
    advantages_B: torch.Tensor,
    mask_B_T: torch.Tensor,
    norm: LossNormalizer,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    ref_logprobs_B_T: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    weights_B_T: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped-ratio policy-gradient loss (+ k3 KL), aggregated per ``norm``.

    ``weights_B_T`` (no gradient) scales the policy-gradient term per token: the rollout
    correction (``rollout_weights``); the KL term is not reweighted.
    """
    mask_B_T = mask_B_T.to(logprobs_B_T.dtype)
    ratio_B_T = torch.exp(logprobs_B_T - old_logprobs_B_T)
    advantages_B_1 = advantages_B.unsqueeze(1)
    unclipped_B_T = ratio_B_T * advantages_B_1
    clipped_B_T = ratio_B_T.clamp(1 - clip_low, 1 + clip_high) * advantages_B_1
    per_token_B_T = -torch.minimum(unclipped_B_T, clipped_B_T)
    if weights_B_T is not None:
        per_token_B_T = per_token_B_T * weights_B_T
    metrics = {}
    if ref_logprobs_B_T is not None and kl_coef > 0:
        log_ratio_B_T = ref_logprobs_B_T - logprobs_B_T
        kl_B_T = torch.exp(log_ratio_B_T) - log_ratio_B_T - 1
        per_token_B_T = per_token_B_T + kl_coef * kl_B_T
        metrics["kl_sum"] = float((kl_B_T.detach() * mask_B_T).sum())
    loss = aggregate(per_token_B_T, mask_B_T, norm)
    with torch.no_grad():
        metrics["clipped_tokens"] = float(((clipped_B_T < unclipped_B_T).to(mask_B_T.dtype) * mask_B_T).sum())
    return loss, metrics


def rollout_weights(
    old_logprobs_B_T: torch.Tensor,
    rollout_logprobs_B_T: torch.Tensor,
    mask_B_T: torch.Tensor,
    correction: Correction,
    cap: float,
) -> tuple[torch.Tensor | None, dict[str, float]]:
    """Per-token weights of the rollout correction and the trainer-engine mismatch sums.

    ``log_ratio = old - rollout`` (trainer's old policy over the engine's, both at the
    sampling temperature). Metrics are sums over masked tokens (``mismatch_max``: a max),
    turned into per-token figures by ``mismatch_metrics``.
    """
    with torch.no_grad():
        log_ratio_B_T = (old_logprobs_B_T - rollout_logprobs_B_T) * mask_B_T
        outside_B_T = (log_ratio_B_T.abs() > math.log(cap)).to(mask_B_T.dtype) * mask_B_T
        metrics = {
            "mismatch_abs_sum": float(log_ratio_B_T.abs().sum()),
            "mismatch_max": float(log_ratio_B_T.abs().max()) if log_ratio_B_T.numel() else 0.0,
            "mismatch_outside": float(outside_B_T.sum()),
        }
        if correction == "tis":
            weights_B_T = torch.exp(log_ratio_B_T).clamp(max=cap)
            metrics["correction_weight_sum"] = float((weights_B_T * mask_B_T).sum())
        elif correction == "mis":
            weights_B_T = 1.0 - outside_B_T
            metrics["correction_weight_sum"] = float((weights_B_T * mask_B_T).sum())
        else:
            weights_B_T = None
    return weights_B_T, metrics


def merge_metrics(totals: dict[str, float], metrics: dict[str, float]) -> dict[str, float]:
    """Add a micro-batch's metrics into ``totals``: sums, except ``*_max`` entries (a max)."""
    for key, value in metrics.items():
        if key.endswith("_max"):
            totals[key] = max(totals.get(key, value), value)
        else:
            totals[key] = totals.get(key, 0.0) + value
    return totals


def mismatch_metrics(update: dict[str, float], cap: float) -> dict[str, float]:
    """Per-token trainer-engine mismatch figures from an update's sums (empty when not measured)."""
    if "mismatch_abs_sum" not in update:
        return {}
    tokens = max(update["tokens"], 1)
    out = {
        "mismatch/mean_abs_logp_diff": update["mismatch_abs_sum"] / tokens,
        "mismatch/max": update["mismatch_max"],
        "mismatch/share_over_threshold": update["mismatch_outside"] / tokens,  # |log ratio| > log(cap)
    }
    if "correction_weight_sum" in update:
        out["mismatch/correction_weight_mean"] = update["correction_weight_sum"] / tokens
    return out


def pad_rows(rows: list[list[float]], width: int, device) -> torch.Tensor:
    out_B_T = torch.zeros((len(rows), width), dtype=torch.float32)
    for index, row in enumerate(rows):
        out_B_T[index, : len(row)] = torch.tensor(row[:width], dtype=torch.float32)
    return out_B_T.to(device)


@dataclass(frozen=True)
class GrpoLoss:
    """The loss the trainer calls per micro-batch (a picklable object, sent over Ray).

    Per-sequence inputs arrive in ``extras``: ``advantages`` (always),
    ``old_logprobs`` (only when a batch takes several optimizer steps; otherwise
    the old policy *is* the current one and the ratio is exactly 1), and
    ``ref_logprobs`` (only with a KL term), and ``rollout_logprobs`` (the engine's
    processed log-probs of the sampled tokens: measured mismatch, and the rollout
    correction). ``temperature`` travels with the sequences (``Sequences.temperature``).
    """

    norm: LossNormalizer
    clip_low: float = 0.2
    clip_high: float = 0.2
    kl_coef: float = 0.0
    correction: Correction = "none"
    correction_cap: float = 2.0

    def __call__(self, student, extras, installed=None):
        logprobs_B_T, mask_B_T = student.logprobs(), student.mask_B_T
        width, device = logprobs_B_T.shape[1], logprobs_B_T.device
        advantages_B = torch.tensor(extras["advantages"], dtype=torch.float32, device=device)
        old = extras.get("old_logprobs")
        old_logprobs_B_T = pad_rows(old, width, device) if old else logprobs_B_T.detach()
        ref = extras.get("ref_logprobs")
        ref_logprobs_B_T = pad_rows(ref, width, device) if ref else None
        weights_B_T, mismatch = None, {}
        if extras.get("rollout_logprobs"):
            rollout_B_T = pad_rows(extras["rollout_logprobs"], width, device)
            mask = mask_B_T.to(torch.float32)
            weights_B_T, mismatch = rollout_weights(old_logprobs_B_T, rollout_B_T, mask, self.correction, self.correction_cap)
        loss, metrics = policy_loss(
            logprobs_B_T,
            old_logprobs_B_T,
            advantages_B,
            mask_B_T,
            self.norm,
            self.clip_low,
            self.clip_high,
            ref_logprobs_B_T,
            self.kl_coef,
            weights_B_T,
        )
        return loss, metrics | mismatch
