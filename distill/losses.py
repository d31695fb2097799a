"""Full-vocabulary multi-teacher distillation loss, streamed so memory does not grow with K or T.

DeepSeek-V4-style on-policy distillation scores every student token against the
teacher(s) of its prompt's (domain, mode) over the *whole* vocabulary:
``loss = (1/N) * sum_t sum_k w[t, k] * D(student_t || teacher_k,t)``.

``chunked_distill_loss`` computes it exactly from the student's last hidden states and
output head. Per token chunk it builds the student's ``[C, V]`` logits once; for each
teacher weighted there it rebuilds that teacher's logits on those rows only and adds
the divergence's analytic gradient w.r.t. the student logits; the chunk's gradient
goes through the head (``dz @ W``, ``dz^T @ h``) before the next chunk. So a few
``[C, V]`` buffers plus the ``[V, H]`` head gradient are all that live at once.
``naive_distill_loss`` materialises everything: the reference for tests and benches.
It must not materialise more than a chunk of ``[T, V]`` logits, keep a teacher's graph, or sync per chunk.

Divergences (float32 logits, one temperature for student and teacher, no ``tau^2``):
``reverse_kl`` (default, as on-policy distillation), ``forward_kl``, ``generalized_jsd``,
``sampled_token`` (the one-sampled-token ablation); they live in ``distill.divergences``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from .divergences import (  # noqa: F401  (re-exported: the loss's public names)
    DIVERGENCES,
    Divergence,
    ForwardKL,
    GeneralizedJSD,
    ReverseKL,
    SampledToken,
    register_divergence,
    resolve_divergence,
)

Rows = slice | torch.Tensor  # rows of a chunk (or of the sequence): a slice or a LongTensor of indices


# ---- teacher sources -----------------------------------------------------------------


class TeacherLogits(Protocol):
    """A frozen teacher's logits, a few token rows at a time.

    ``rows`` indexes the token axis (a slice or a LongTensor; both work as ``x[rows]``);
    ``out`` is an ``[R, V]`` float32 buffer the source may write into, or ignore.
    """

    vocab_size: int

    def logits(self, rows: Rows, out: torch.Tensor | None = None) -> torch.Tensor: ...


@dataclass
class CachedHiddenTeacher:
    """A teacher given by its cached last hidden states ``[T, H_k]`` and output head ``[V, H_k]``
    (caching hidden states instead of logits stores ``H_k`` floats per token, not ``V``)."""

    hidden_T_H: torch.Tensor
    head_V_H: torch.Tensor

    @property
    def vocab_size(self) -> int:
        return self.head_V_H.shape[0]

    @property
    def num_tokens(self) -> int:
        return self.hidden_T_H.shape[0]

    def logits(self, rows: Rows, out: torch.Tensor | None = None) -> torch.Tensor:
        hidden_R_H = self.hidden_T_H[rows].to(self.head_V_H.dtype)
        return _head_logits(hidden_R_H, self.head_V_H, out)


@dataclass
class CallableTeacher:
    """A teacher whose logits come from ``fn(rows) -> [R, V]`` (a live model, a cache); only read."""

    fn: Callable[[Rows], torch.Tensor]
    vocab_size: int

    def logits(self, rows: Rows, out: torch.Tensor | None = None) -> torch.Tensor:
        return self.fn(rows).float()


def _head_logits(hidden_R_H: torch.Tensor, head_V_H: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    """float32 ``hidden @ head^T``; straight into ``out`` when the matmul is float32 already."""
    if out is not None and head_V_H.dtype == torch.float32:
        return torch.mm(hidden_R_H, head_V_H.t(), out=out)
    return torch.mm(hidden_R_H, head_V_H.t()).float()


# ---- one chunk of the student ----------------------------------------------------------


class _Scratch:
    """Named ``[C, V]`` float32 buffers reused across chunks and teachers: on CPU each fresh
    buffer this size is mmap'd and page-faulted anew, measured as slow as the math on it."""

    def __init__(self, n_rows: int, vocab: int, device: torch.device):
        self.shape, self.device = (n_rows, vocab), device
        self._buffers: dict[str, torch.Tensor] = {}

    def get(self, name: str, n_rows: int) -> torch.Tensor:
        if name not in self._buffers:
            self._buffers[name] = torch.empty(self.shape, dtype=torch.float32, device=self.device)
        return self._buffers[name][:n_rows]


class _StudentChunk:
    """The student on one token chunk, with the loss and gradient (w.r.t. its logits) so far.

    Divergences report through these, so the softmax Jacobian is applied once per chunk:
    - ``add_expectation(rows, g, c)``: loss += c * E_{p_s}[g], gradient += J^T (c g) =
      c p_s (g - E_{p_s}[g]); right when c g is dD/dp_s up to a per-row constant (reverse
      KL: g = log p_s - log p_t, and the ``+1`` from differentiating p log p drops out);
    - ``add_probs``, ``add_dense("direct", ...)``, ``add_onehot``: gradient += c p_s, c x, c e_y;
    - ``add_value``: loss terms whose gradient the calls above already carry.
    ``rows`` are chunk-local.
    """

    def __init__(self, scratch: _Scratch, hidden_C_H: torch.Tensor, head_V_H: torch.Tensor):
        self.n_rows = n_rows = hidden_C_H.shape[0]
        self._scratch = scratch
        logits_C_V = _head_logits(hidden_C_H, head_V_H, scratch.get("logp_s", n_rows))
        self.logp_s_C_V = torch.log_softmax(logits_C_V, -1, out=scratch.get("logp_s", n_rows))
        self.p_s_C_V = torch.exp(self.logp_s_C_V, out=scratch.get("p_s", n_rows))
        self.probs_coef_C = torch.zeros(n_rows, dtype=torch.float32, device=hidden_C_H.device)
        self.value_C = torch.zeros(n_rows, dtype=torch.float32, device=hidden_C_H.device)  # per-token loss
        self._dense: dict[str, torch.Tensor] = {}  # "score" and "direct", each [C, V], made on first use
        self._onehots: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def scratch(self, name: str, n_rows: int) -> torch.Tensor:
        return self._scratch.get(name, n_rows)

    def logp_s(self, rows: Rows) -> torch.Tensor:
        """log p_s on ``rows``: a view for a slice, a gathered copy for an index."""
        if isinstance(rows, slice):
            return self.logp_s_C_V[rows]
        return torch.index_select(self.logp_s_C_V, 0, rows, out=self.scratch("rows_logp_s", rows.numel()))

    def add_value(self, rows: Rows, value_R: torch.Tensor) -> None:
        self.value_C[rows] += value_R

    def add_expectation(self, rows: Rows, g_R_V: torch.Tensor, coef_R: torch.Tensor) -> None:
        self.add_dense("score", rows, g_R_V, coef_R)

    def add_probs(self, rows: Rows, coef_R: torch.Tensor) -> None:
        self.probs_coef_C[rows] += coef_R  # index rows are unique, so this needs no accumulate

    def add_dense(self, name: str, rows: Rows, x_R_V: torch.Tensor, coef_R: torch.Tensor) -> None:
        """``name[rows] += coef * x`` (buffers zeroed on first use); ``x`` is scratch, may be overwritten."""
        if name not in self._dense:
            self._dense[name] = self.scratch(name, self.n_rows).zero_()
        if isinstance(rows, slice):
            self._dense[name][rows].addcmul_(x_R_V, coef_R.unsqueeze(1))
        else:
            self._dense[name].index_add_(0, rows, x_R_V.mul_(coef_R.unsqueeze(1)))

    def add_onehot(self, local_R: torch.Tensor, ids_R: torch.Tensor, coef_R: torch.Tensor) -> None:
        self._onehots.append((local_R, ids_R, coef_R))

    def finish(self, want_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The chunk's per-token loss ``[C]`` and (if wanted) d(loss)/d(student logits), in scratch."""
        probs_coef_C = self.probs_coef_C
        if "score" in self._dense:
            grad_C_V = self._dense["score"].mul_(self.p_s_C_V)  # p_s * g, in place
            expectation_C = grad_C_V.sum(-1)
            self.value_C += expectation_C
            probs_coef_C = probs_coef_C - expectation_C
        else:
            grad_C_V = self.scratch("score", self.n_rows).zero_()
        if not want_grad:
            return self.value_C, None
        grad_C_V.addcmul_(self.p_s_C_V, probs_coef_C.unsqueeze(1))
        if "direct" in self._dense:
            grad_C_V.add_(self._dense["direct"])
        for local_R, ids_R, coef_R in self._onehots:
            grad_C_V.index_put_((local_R, ids_R), coef_R, accumulate=True)
        return self.value_C, grad_C_V


# ---- the streamed loss -------------------------------------------------------------------


@dataclass
class _Spec:
    teachers: list[TeacherLogits]
    weights_T_K: torch.Tensor  # already divided by the number of tokens
    divergence: Divergence
    chunk_size: int
    sampled_ids_T: torch.Tensor | None
    temperature: float
    grad_hidden: bool
    grad_head: bool
    token_losses_T: torch.Tensor | None = None  # filled with each token's share of the loss


def _routes(active_T_K: torch.Tensor, start: int, stop: int, device) -> list[tuple[int, Rows]]:
    """Teachers weighted in tokens ``start:stop``, with their chunk-local rows: a slice when
    contiguous (a sequence belongs to one teacher), so only interleaved teachers gather."""
    block_C_K = active_T_K[start:stop]
    routes: list[tuple[int, Rows]] = []
    for k in block_C_K.any(0).nonzero().flatten().tolist():
        index_R = block_C_K[:, k].nonzero().flatten()
        first, last = int(index_R[0]), int(index_R[-1])
        contiguous = last - first + 1 == index_R.numel()
        routes.append((k, slice(first, last + 1) if contiguous else index_R.to(device)))
    return routes


def _teacher_term(chunk: _StudentChunk, spec: _Spec, k: int, start: int, rows: Rows, vocab: int):
    """Adds sum over ``rows`` of w * D(student || teacher k), and its gradient, to ``chunk``."""
    token_rows = slice(start + rows.start, start + rows.stop) if isinstance(rows, slice) else rows + start
    n_rows = rows.stop - rows.start if isinstance(rows, slice) else rows.numel()
    logits_R_V = spec.teachers[k].logits(token_rows, out=chunk.scratch("t", n_rows))
    if tuple(logits_R_V.shape) != (n_rows, vocab):
        got = tuple(logits_R_V.shape)
        raise ValueError(f"teacher {k} returned logits of shape {got}, expected ({n_rows}, {vocab})")
    if spec.temperature != 1.0:
        logits_R_V = torch.mul(logits_R_V, 1.0 / spec.temperature, out=chunk.scratch("t", n_rows))
    logp_t_R_V = torch.log_softmax(logits_R_V, -1, out=chunk.scratch("t", n_rows))
    w_R = spec.weights_T_K[token_rows, k]
    ids_R = spec.sampled_ids_T[token_rows] if spec.divergence.needs_sampled_ids else None
    spec.divergence.accumulate(chunk, rows, logp_t_R_V, w_R, ids_R)


def _stream(hidden_T_H: torch.Tensor, head_V_H: torch.Tensor, spec: _Spec):
    """Forward over token chunks; returns the loss and its gradients w.r.t. hidden and head."""
    n_tokens, vocab = hidden_T_H.shape[0], head_V_H.shape[0]
    device, inv_tau = hidden_T_H.device, 1.0 / spec.temperature
    active_T_K = (spec.weights_T_K != 0).cpu()  # the one device sync of the call
    scratch = _Scratch(min(spec.chunk_size, n_tokens), vocab, device)
    loss = torch.zeros((), dtype=torch.float32, device=device)
    grad_hidden_T_H = torch.zeros_like(hidden_T_H) if spec.grad_hidden else None
    grad_head_V_H = torch.zeros(head_V_H.shape, dtype=torch.float32, device=device) if spec.grad_head else None
    for start in range(0, n_tokens, spec.chunk_size):
        stop = min(start + spec.chunk_size, n_tokens)
        routes = _routes(active_T_K, start, stop, device)
        if not routes:
            continue  # no teacher scores these tokens: no student logits either
        hidden_C_H = hidden_T_H[start:stop].to(head_V_H.dtype)
        if spec.temperature != 1.0:
            hidden_C_H = hidden_C_H * inv_tau  # z / tau == (h / tau) W^T: scale [C, H], not [C, V]
        chunk = _StudentChunk(scratch, hidden_C_H, head_V_H)
        for k, rows in routes:
            _teacher_term(chunk, spec, k, start, rows, vocab)
        chunk_loss_C, grad_C_V = chunk.finish(want_grad=spec.grad_hidden or spec.grad_head)
        loss += chunk_loss_C.sum()
        if spec.token_losses_T is not None:
            spec.token_losses_T[start:stop] = chunk_loss_C
        if grad_C_V is None:
            continue
        grad_C_V = grad_C_V.to(head_V_H.dtype)
        if grad_hidden_T_H is not None:
            grad_hidden_T_H[start:stop] = torch.mm(grad_C_V, head_V_H).mul_(inv_tau)
        if grad_head_V_H is not None:
            if grad_C_V.dtype == torch.float32:
                grad_head_V_H.addmm_(grad_C_V.t(), hidden_C_H)  # hidden_C_H carries the 1/tau
            else:
                grad_head_V_H.add_(torch.mm(grad_C_V.t(), hidden_C_H))
    return loss, grad_hidden_T_H, grad_head_V_H


class _ChunkedDistill(torch.autograd.Function):
    """Forward computes the gradients too; the loss is a scalar, so backward only rescales them."""

    @staticmethod
    def forward(ctx, hidden_T_H, head_V_H, spec: _Spec):
        loss, ctx.grad_hidden_T_H, ctx.grad_head_V_H = _stream(hidden_T_H, head_V_H, spec)
        ctx.head_dtype = head_V_H.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden_T_H = None if ctx.grad_hidden_T_H is None else ctx.grad_hidden_T_H * grad_loss
        grad_head_V_H = None if ctx.grad_head_V_H is None else (ctx.grad_head_V_H * grad_loss).to(ctx.head_dtype)
        return grad_hidden_T_H, grad_head_V_H, None


def chunked_distill_loss(
    student_hidden_T_H: torch.Tensor,
    student_head_V_H: torch.Tensor,
    teachers: list[TeacherLogits],
    weights_T_K: torch.Tensor,
    divergence: str | Divergence = "reverse_kl",
    chunk_size: int = 512,
    sampled_ids_T: torch.Tensor | None = None,
    num_tokens: int | None = None,
    temperature: float = 1.0,
    token_losses_T: torch.Tensor | None = None,
) -> torch.Tensor:
    """(1/num_tokens) * sum_t sum_k w[t,k] * D(student_t || teacher_k,t), exact over the vocabulary.

    Peak extra memory is 4 (reverse KL) to 7 ``[chunk_size, V]`` float32 buffers plus a
    float32 ``[V, H]`` head gradient, whatever K and T. ``weights_T_K[t, k] == 0`` skips teacher
    k's logits on token t. ``num_tokens`` (default T) is the batch-wide normaliser, so
    micro-batch losses sum to the full-batch loss. Temperature divides student and
    teacher logits alike. Gradients flow to ``student_hidden_T_H`` and
    ``student_head_V_H`` (whichever require grad), never to teachers or weights.
    ``token_losses_T`` (float32 ``[T]``), if given, receives each token's term of the loss
    (``sum_k w[t,k] D_k(t) / num_tokens``): per-teacher metrics at no extra cost.
    """
    div = resolve_divergence(divergence)
    _validate(student_hidden_T_H, student_head_V_H, teachers, weights_T_K, div, sampled_ids_T, chunk_size, temperature)
    w_T_K = weights_T_K.to(student_hidden_T_H.device, torch.float32) / (num_tokens or student_hidden_T_H.shape[0])
    grad_on = torch.is_grad_enabled()
    grads = (grad_on and student_hidden_T_H.requires_grad, grad_on and student_head_V_H.requires_grad)
    if token_losses_T is not None:
        token_losses_T.zero_()
    spec = _Spec(list(teachers), w_T_K, div, chunk_size, sampled_ids_T, temperature, *grads, token_losses_T)
    return _ChunkedDistill.apply(student_hidden_T_H, student_head_V_H, spec)


def naive_distill_loss(  # chunked_distill_loss's signature
    student_hidden_T_H, student_head_V_H, teachers, weights_T_K, divergence="reverse_kl",
    chunk_size=512, sampled_ids_T=None, num_tokens=None, temperature=1.0
) -> torch.Tensor:
    """The same loss with every ``[T, V]`` tensor materialised at once (student logits with
    their graph, all K teachers' logits): the reference. ``chunk_size`` is ignored."""
    div = resolve_divergence(divergence)
    _validate(student_hidden_T_H, student_head_V_H, teachers, weights_T_K, div, sampled_ids_T, chunk_size, temperature)
    n_tokens = student_hidden_T_H.shape[0]
    s_T_V = _head_logits(student_hidden_T_H.to(student_head_V_H.dtype), student_head_V_H, None) / temperature
    with torch.no_grad():
        t_K_T_V = [teacher.logits(slice(0, n_tokens)).float() / temperature for teacher in teachers]
    w_T_K = weights_T_K.to(s_T_V.device, torch.float32) / (num_tokens or n_tokens)
    per_token_K_T = [div.per_token(s_T_V, t_T_V, sampled_ids_T) for t_T_V in t_K_T_V]
    return sum((w_T_K[:, k] * d_T).sum() for k, d_T in enumerate(per_token_K_T))


def _validate(hidden_T_H, head_V_H, teachers, weights_T_K, div, sampled_ids_T, chunk_size, temperature) -> None:
    """Fail before any work: shapes, vocabularies, and the inputs the divergence needs."""
    if hidden_T_H.dim() != 2 or head_V_H.dim() != 2 or head_V_H.shape[1] != hidden_T_H.shape[1]:
        shapes = f"{tuple(hidden_T_H.shape)} and {tuple(head_V_H.shape)}"
        raise ValueError(f"expected student hidden [T, H] and head [V, H], got {shapes}")
    n_tokens, vocab = hidden_T_H.shape[0], head_V_H.shape[0]
    if not teachers:
        raise ValueError("at least one teacher is needed")
    for k, teacher in enumerate(teachers):
        if teacher.vocab_size != vocab:
            sizes = f"vocab size {teacher.vocab_size} != student vocab size {vocab}"
            raise ValueError(f"teacher {k}: {sizes} (teachers and student must share one tokenizer)")
        teacher_tokens = getattr(teacher, "num_tokens", n_tokens)
        if teacher_tokens != n_tokens:
            raise ValueError(f"teacher {k}: {teacher_tokens} cached tokens != {n_tokens} student tokens")
    if tuple(weights_T_K.shape) != (n_tokens, len(teachers)):
        expected = f"(T, K) = ({n_tokens}, {len(teachers)})"
        raise ValueError(f"weights_T_K has shape {tuple(weights_T_K.shape)}, expected {expected}")
    if div.needs_sampled_ids and (sampled_ids_T is None or tuple(sampled_ids_T.shape) != (n_tokens,)):
        got = None if sampled_ids_T is None else tuple(sampled_ids_T.shape)
        raise ValueError(f"divergence {div.name!r} needs sampled_ids_T of shape ({n_tokens},), got {got}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
