"""Length shaping per effort mode: pure functions of completion lengths, plus per-mode metrics.

Shapes: B samples. Both penalties are <= 0 and are added to the task reward
before group advantages, each sample with its own mode's parameters:

- DAPO's soft overlong punishment (Yu et al. 2025): 0 up to ``max_tokens -
  buffer`` tokens, then falling linearly to ``-penalty`` at ``max_tokens`` (a
  hard cap here: the engine never samples past it);
- an L1-style target-length penalty (Aggarwal & Welleck 2025, "L1-Exact"):
  ``-coef * |length - target|``, which pulls lengths toward the target from
  both sides.

Length is the whole completion (thinking + close tag + answer), the quantity a
mode's ``max_tokens`` bounds.
"""

from __future__ import annotations

from collections import defaultdict

import torch


def overlong_penalty_B(lengths_B, max_tokens_B, buffer_B, penalty_B) -> torch.Tensor:
    """DAPO soft overlong punishment; a zero ``buffer`` disables it for that sample."""
    lengths_B, max_tokens_B, buffer_B, penalty_B = (
        torch.as_tensor(x, dtype=torch.float32) for x in (lengths_B, max_tokens_B, buffer_B, penalty_B)
    )
    over_B = (lengths_B - (max_tokens_B - buffer_B)).clamp(min=0)
    share_B = (over_B / buffer_B.clamp(min=1)).clamp(max=1)
    return torch.where(buffer_B > 0, -share_B * penalty_B, torch.zeros_like(lengths_B))


def target_length_penalty_B(lengths_B, target_B, coef_B) -> torch.Tensor:
    """L1-style penalty ``-coef * |length - target|``; a zero ``coef`` disables it."""
    lengths_B, target_B, coef_B = (torch.as_tensor(x, dtype=torch.float32) for x in (lengths_B, target_B, coef_B))
    return -coef_B * (lengths_B - target_B).abs()


def length_penalties_B(lengths_B, modes) -> torch.Tensor:
    """Both penalties for samples whose modes (``recipe.EffortMode``, one per sample) are ``modes``."""
    overlong_B = overlong_penalty_B(
        lengths_B,
        [mode.max_tokens for mode in modes],
        [mode.overlong_buffer for mode in modes],
        [mode.overlong_penalty for mode in modes],
    )
    target_B = target_length_penalty_B(
        lengths_B, [mode.target_length or 0 for mode in modes], [mode.length_coef for mode in modes]
    )
    return overlong_B + target_B


def mode_metrics(mode_names: list[str], completions, scores_B, penalties_B) -> dict[str, float]:
    """``mode/<name>/...`` means over each mode's samples: reward, length, thinking and shaping."""
    rows: dict[str, list[int]] = defaultdict(list)
    for index, name in enumerate(mode_names):
        rows[name].append(index)
    metrics = {}
    for name, indices in rows.items():
        picked = [completions[i] for i in indices]
        mean = lambda values: sum(values) / len(values)  # noqa: E731
        scores = [float(scores_B[i]) for i in indices]
        penalties = [float(penalties_B[i]) for i in indices]
        metrics |= {
            f"mode/{name}/reward": mean([s + p for s, p in zip(scores, penalties)]),
            f"mode/{name}/task_reward": mean(scores),
            f"mode/{name}/shaping_penalty": mean(penalties),
            f"mode/{name}/length": mean([len(c.token_ids) for c in picked]),
            f"mode/{name}/thinking_tokens": mean([c.thinking_tokens for c in picked]),
            f"mode/{name}/answer_tokens": mean([c.answer_tokens for c in picked]),
            f"mode/{name}/forced_close_share": mean([float(c.forced_close) for c in picked]),
            f"mode/{name}/truncated_share": mean([float(c.truncated) for c in picked]),
            f"mode/{name}/samples": float(len(indices)),
        }
    return metrics
