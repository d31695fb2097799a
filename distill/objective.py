"""The on-policy distillation objective, as the trainer runs it on one micro-batch.

``DistillLoss`` is the picklable loss object the driver hands to
``PolicyTrainer.update``: it reads the student's hidden states at its completion
positions (``student.states``), the teacher routes and hidden states the
``TeacherPool`` produced, and the teachers' output heads (``TeacherHeads``,
installed once with ``PolicyTrainer.install``); it calls ``chunked_distill_loss``,
so no ``[T, V]`` tensor of any teacher is ever whole.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .losses import CachedHiddenTeacher, GeneralizedJSD, chunked_distill_loss


@dataclass
class TeacherHeads:
    """The teachers' distinct output heads (12 adapters over one base share 1): teacher ``k`` uses
    ``heads_V_H[index[k]]``. Installed once on the trainer; never sent per step."""

    heads_V_H: list[torch.Tensor]
    index: list[int]

    def of(self, teacher: int) -> torch.Tensor:
        return self.heads_V_H[self.index[teacher]]

    @classmethod
    def of_owners(cls, owners: list[str], heads: dict[str, torch.Tensor]) -> TeacherHeads:
        """From each teacher's owner (the model whose head it uses) and the head of each owner."""
        order = list(dict.fromkeys(owners))
        return cls([heads[owner] for owner in order], [order.index(owner) for owner in owners])


def divergence_from(name: str, jsd_beta: float = 0.5):
    return GeneralizedJSD(jsd_beta) if name == "generalized_jsd" else name


@dataclass
class DistillLoss:
    """``(1/num_tokens) sum_t sum_k w[t,k] D(student_t || teacher_k,t)`` for one micro-batch.

    ``num_tokens`` counts the completion tokens of the whole batch, so micro-batch losses
    sum to the batch loss. Metrics: per-teacher ``kl_sum/<k>`` and ``tokens/<k>`` for
    sequences routed to one teacher (the default), so the driver can log each teacher's KL.
    """

    divergence: object
    num_tokens: int
    chunk_size: int = 512
    temperature: float = 1.0

    def __call__(self, student, extras: dict[str, list], installed) -> tuple[torch.Tensor, dict[str, float]]:
        states = student.states
        mask_B_T = states.mask_B_T.bool()
        lengths_B = mask_B_T.sum(1).tolist()
        hidden_N_H = states.hidden_B_T_H[mask_B_T].float()
        teachers, weights_N_K = self._teachers(extras["routes"], mask_B_T, installed[TeacherHeads], hidden_N_H.device)
        token_losses_N = torch.zeros(hidden_N_H.shape[0], device=hidden_N_H.device)
        loss = chunked_distill_loss(
            hidden_N_H,
            states.head_V_H.float(),
            teachers,
            weights_N_K,
            self.divergence,
            chunk_size=self.chunk_size,
            sampled_ids_T=states.targets_B_T[mask_B_T],
            num_tokens=self.num_tokens,
            temperature=self.temperature,
            token_losses_T=token_losses_N,
        )
        return loss, self._metrics(extras["routes"], lengths_B, token_losses_N * self.num_tokens)

    @staticmethod
    def _teachers(routes_B, mask_B_T, heads: TeacherHeads, device):
        """One ``CachedHiddenTeacher`` per teacher present, its hidden states on its rows only.

        Rows are the student's loss tokens (``mask_B_T``), which may skip tokens inside a
        completion (e.g. a forced close tag); teachers' hidden states cover every completion token.
        """
        present = sorted({k for routes in routes_B for k, _, _ in routes})
        columns = {k: j for j, k in enumerate(present)}
        n_tokens = int(mask_B_T.sum())
        weights_N_K = torch.zeros(n_tokens, len(present), device=device)
        hidden_K_N_H = [torch.zeros(n_tokens, heads.of(k).shape[1], device=device) for k in present]
        offset = 0
        for routes, keep_T in zip(routes_B, mask_B_T.cpu()):
            length = int(keep_T.sum())
            for k, weight, hidden_T_H in routes:
                kept_H = hidden_T_H[keep_T[: hidden_T_H.shape[0]]]
                weights_N_K[offset : offset + length, columns[k]] = weight
                hidden_K_N_H[columns[k]][offset : offset + length] = kept_H.to(device, torch.float32)
            offset += length
        teachers = [CachedHiddenTeacher(hidden_K_N_H[columns[k]], heads.of(k).to(device)) for k in present]
        return teachers, weights_N_K

    @staticmethod
    def _metrics(routes_B, lengths_B, token_values_N) -> dict[str, float]:
        metrics: dict[str, float] = {}
        offset = 0
        for routes, length in zip(routes_B, lengths_B):
            value = float(token_values_N[offset : offset + length].sum())
            offset += length
            if len(routes) == 1:
                k, weight, _ = routes[0]
                metrics[f"kl_sum/{k}"] = metrics.get(f"kl_sum/{k}", 0.0) + value / weight
                metrics[f"tokens/{k}"] = metrics.get(f"tokens/{k}", 0.0) + length
        return metrics
