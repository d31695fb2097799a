"""Per-token divergences D(student || teacher) over the full vocabulary, for ``distill.losses``.

Each gives the plain differentiable definition (the naive path, ground truth in tests)
and the streamed form the chunked loss uses: the value and its analytic gradient with
respect to the student logits, from float32 ``[R, V]`` rows. Register a new one with
``@register_divergence``; a recipe names it by its ``name``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from posttrain.plugins import Registry, get_subclass

if TYPE_CHECKING:
    from .losses import Rows, _StudentChunk


def _dot_into(x_R_V: torch.Tensor, y_R_V: torch.Tensor) -> torch.Tensor:
    """Row-wise dot product, computed in ``x`` (scratch). mul + sum sums pairwise; bmm needs no
    scratch but summed sequentially and lost ~30x accuracy on a 49k vocabulary."""
    return x_R_V.mul_(y_R_V).sum(-1)


class Divergence:
    """A per-token divergence D(student || teacher) over the full vocabulary.

    ``per_token``: the plain differentiable definition (naive path; ground truth in tests).
    ``accumulate``: the streamed form; adds ``sum_rows w * D`` and ``w * dD/dz_s`` on chunk
    ``rows`` to the chunk (see ``_StudentChunk``); may overwrite ``logp_t_R_V`` (scratch).
    """

    name = ""
    needs_sampled_ids = False

    def per_token(self, s_C_V: torch.Tensor, t_C_V: torch.Tensor, ids_C: torch.Tensor | None = None):
        raise NotImplementedError

    def accumulate(self, chunk: _StudentChunk, rows: Rows, logp_t_R_V, w_R, ids_R=None) -> None:
        raise NotImplementedError


DIVERGENCES: Registry[type[Divergence]] = Registry("divergence", entry_point_group="posttrain.divergences")


def register_divergence(cls: type[Divergence]) -> type[Divergence]:
    return DIVERGENCES.register(cls.name, cls)


def resolve_divergence(divergence: str | Divergence) -> Divergence:
    """A registered name (default parameters) or a ready instance such as ``GeneralizedJSD(0.1)``."""
    if isinstance(divergence, Divergence):
        return divergence
    try:
        cls = get_subclass(DIVERGENCES, divergence, Divergence)
    except ValueError as error:
        raise ValueError(f"unknown divergence {divergence!r}: {error}") from None
    return cls()


@register_divergence
class ReverseKL(Divergence):
    """KL(p_s || p_t) = E_{p_s}[r], r = log p_s - log p_t; dD/dz_s = p_s * (r - D) (softmax Jacobian on r)."""

    name = "reverse_kl"

    def per_token(self, s_C_V, t_C_V, ids_C=None):
        logp_s_C_V, logp_t_C_V = F.log_softmax(s_C_V, -1), F.log_softmax(t_C_V, -1)
        return (logp_s_C_V.exp() * (logp_s_C_V - logp_t_C_V)).sum(-1)

    def accumulate(self, chunk, rows, logp_t_R_V, w_R, ids_R=None):
        r_R_V = torch.sub(chunk.logp_s(rows), logp_t_R_V, out=logp_t_R_V)
        chunk.add_expectation(rows, r_R_V, w_R)


@register_divergence
class ForwardKL(Divergence):
    """KL(p_t || p_s) = sum_v p_t (log p_t - log p_s); dD/dz_s = p_s - p_t."""

    name = "forward_kl"

    def per_token(self, s_C_V, t_C_V, ids_C=None):
        logp_s_C_V, logp_t_C_V = F.log_softmax(s_C_V, -1), F.log_softmax(t_C_V, -1)
        return (logp_t_C_V.exp() * (logp_t_C_V - logp_s_C_V)).sum(-1)

    def accumulate(self, chunk, rows, logp_t_R_V, w_R, ids_R=None):
        p_t_R_V = torch.exp(logp_t_R_V, out=chunk.scratch("p_t", logp_t_R_V.shape[0]))
        kl_R = _dot_into(logp_t_R_V.sub_(chunk.logp_s(rows)), p_t_R_V)
        chunk.add_value(rows, w_R * kl_R)
        chunk.add_probs(rows, w_R)
        chunk.add_dense("direct", rows, p_t_R_V, -w_R)


@register_divergence
class GeneralizedJSD(Divergence):
    """GKD's generalized JSD: beta * KL(p_t || m) + (1 - beta) * KL(p_s || m), m = beta p_t + (1 - beta) p_s.

    Taken literally it tends to 0 at both ends, so (as TRL's ``generalized_jsd_loss``)
    ``beta=0`` means forward KL(p_t || p_s) and ``beta=1`` reverse KL(p_s || p_t): the
    limits of JSD_beta / beta and JSD_beta / (1 - beta). In between it is at most the
    binary entropy of beta (<= log 2, reached at beta = 0.5 for disjoint supports).
    Gradient: dD/dz_s = (1 - beta) * p_s * (r - KL(p_s || m)), r = log p_s - log m.
    """

    name = "generalized_jsd"

    def __init__(self, beta: float = 0.5):
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"generalized_jsd beta must lie in [0, 1], got {beta}")
        self.beta = beta
        self._limit = ForwardKL() if beta == 0.0 else ReverseKL() if beta == 1.0 else None

    def per_token(self, s_C_V, t_C_V, ids_C=None):
        if self._limit is not None:
            return self._limit.per_token(s_C_V, t_C_V)
        logp_s_C_V, logp_t_C_V = F.log_softmax(s_C_V, -1), F.log_softmax(t_C_V, -1)
        log_m_C_V = torch.logaddexp(logp_t_C_V + math.log(self.beta), logp_s_C_V + math.log(1 - self.beta))
        kl_t_C = (logp_t_C_V.exp() * (logp_t_C_V - log_m_C_V)).sum(-1)
        kl_s_C = (logp_s_C_V.exp() * (logp_s_C_V - log_m_C_V)).sum(-1)
        return self.beta * kl_t_C + (1 - self.beta) * kl_s_C

    def accumulate(self, chunk, rows, logp_t_R_V, w_R, ids_R=None):
        if self._limit is not None:
            return self._limit.accumulate(chunk, rows, logp_t_R_V, w_R, ids_R)
        beta, n_rows = self.beta, logp_t_R_V.shape[0]
        logp_s_R_V = chunk.logp_s(rows)
        log_m_R_V = torch.add(logp_t_R_V, math.log(beta), out=chunk.scratch("log_m", n_rows))
        # "p_t" is free until p_t is needed: borrow it for log p_s + log(1 - beta)
        shifted_s_R_V = torch.add(logp_s_R_V, math.log(1 - beta), out=chunk.scratch("p_t", n_rows))
        torch.logaddexp(log_m_R_V, shifted_s_R_V, out=log_m_R_V)
        p_t_R_V = torch.exp(logp_t_R_V, out=chunk.scratch("p_t", n_rows))
        kl_t_R = _dot_into(logp_t_R_V.sub_(log_m_R_V), p_t_R_V)
        # the student term's gradient, (1 - beta) * J^T r, is the whole dD/dz_s: the teacher
        # term's dependence on p_s through m cancels against part of the student term's
        chunk.add_value(rows, beta * w_R * kl_t_R)
        chunk.add_expectation(rows, torch.sub(logp_s_R_V, log_m_R_V, out=log_m_R_V), (1 - beta) * w_R)


@register_divergence
class SampledToken(Divergence):
    """One-sample ablation: only the student's sampled token y (drawn from p_s during the rollout).

    Value: k1 = log p_s(y) - log p_t(y), unbiased for KL(p_s || p_t) when y ~ p_s.
    Gradient w.r.t. the student logits: ``k1 * (onehot(y) - p_s)`` = ``stopgrad(k1) *
    grad log p_s(y)``, the REINFORCE (score-function) estimate of grad KL(p_s || p_t)
    with k1 as a per-token negative advantage and no credit to later tokens; unbiased
    only while y comes from the current p_s at this temperature. The pathwise gradient
    of k1 itself (``onehot(y) - p_s``) is *not* used: its mean under y ~ p_s is zero.
    """

    name = "sampled_token"
    needs_sampled_ids = True

    def per_token(self, s_C_V, t_C_V, ids_C=None):
        ids_C_1 = ids_C.unsqueeze(-1)
        logp_s_C = F.log_softmax(s_C_V, -1).gather(-1, ids_C_1).squeeze(-1)
        logp_t_C = F.log_softmax(t_C_V, -1).gather(-1, ids_C_1).squeeze(-1)
        k1_C = (logp_s_C - logp_t_C).detach()
        return k1_C + k1_C * (logp_s_C - logp_s_C.detach())  # value k1, gradient k1 * grad log p_s(y)

    def accumulate(self, chunk, rows, logp_t_R_V, w_R, ids_R=None):
        local_R = torch.arange(rows.start, rows.stop, device=ids_R.device) if isinstance(rows, slice) else rows
        k1_R = chunk.logp_s_C_V[local_R, ids_R] - logp_t_R_V.gather(-1, ids_R.unsqueeze(-1)).squeeze(-1)
        chunk.add_value(rows, w_R * k1_R)
        chunk.add_probs(rows, -w_R * k1_R)
        chunk.add_onehot(local_R, ids_R, w_R * k1_R)
