"""Supervised fine-tuning on reference completions: a warm start (format, style) before RL,
and the quick way to make distinct teachers for tests and demos.

``SftLoss`` is the token-mean negative log-likelihood over the whole batch, so it plugs into
``PolicyTrainer.update`` like ``GrpoLoss`` does (micro-batches sum to the batch loss).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from posttrain.core.policy import Sequences


@dataclass
class SftLoss:
    num_tokens: int  # completion tokens in the whole batch

    def __call__(self, student, extras: dict, installed=None) -> tuple[torch.Tensor, dict]:
        nll = -(student.logprobs() * student.mask_B_T).sum()
        return nll / self.num_tokens, {"nll_sum": float(nll.detach())}


def sft_sequences(tokenizer, prompts: list[list[int]], completions: list[str]) -> Sequences:
    """Prompt ids + reference completion texts -> ``Sequences``, each completion ending in EOS
    (the chat turn's end for instruct models), so the trained model learns to stop."""
    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for text in completions]
    return Sequences(list(prompts), ids)


def sft_step(trainer, seqs: Sequences) -> dict[str, float]:
    """One optimizer step of SFT on ``seqs`` (``trainer``: a ``PolicyTrainer`` or its Ray actor)."""
    loss = SftLoss(sum(map(len, seqs.completion_ids)))
    update = getattr(trainer, "update")
    if hasattr(update, "remote"):
        import ray

        return ray.get(update.remote(seqs, loss, {}))
    return update(seqs, loss, {})
