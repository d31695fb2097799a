"""The streamed full-vocabulary distillation loss equals the materialised one, and behaves like a KL.

Sizes are small and chunk boundaries do not divide T (37 tokens, chunks of 8), so
partial chunks, teachers that start mid-chunk and gathered (non-contiguous) rows are
all exercised. Runs in seconds on CPU.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from distill.losses import (
    DIVERGENCES,
    CachedHiddenTeacher,
    CallableTeacher,
    Divergence,
    GeneralizedJSD,
    chunked_distill_loss,
    naive_distill_loss,
    register_divergence,
)

T, V, H, K, CHUNK = 37, 1000, 32, 3, 8


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tensors this small gain nothing from threads; on a busy 2-core machine OMP barriers made these 5x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_student(seed: int = 0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    hidden_T_H = torch.randn(T, H, generator=gen).to(dtype).requires_grad_()
    head_V_H = torch.nn.Parameter((torch.randn(V, H, generator=gen) * 0.4).to(dtype))
    return hidden_T_H, head_V_H


def make_teachers(count: int = K, seed: int = 1, dtype=torch.float32) -> list[CachedHiddenTeacher]:
    gen = torch.Generator().manual_seed(seed)
    states = [(torch.randn(T, H, generator=gen), torch.randn(V, H, generator=gen) * 0.4) for _ in range(count)]
    return [CachedHiddenTeacher(hidden.to(dtype), head.to(dtype)) for hidden, head in states]


def mixed_weights_T_K() -> torch.Tensor:
    """Soft weights with zero runs, an unscored chunk, a teacher absent from whole chunks, and gaps."""
    weights_T_K = torch.rand(T, K, generator=torch.Generator().manual_seed(2))
    weights_T_K[5:9] = 0.0  # tokens no teacher scores
    weights_T_K[16:24] = 0.0  # a whole chunk no teacher scores: skipped
    weights_T_K[10:27, 1] = 0.0
    weights_T_K[::3, 2] = 0.0  # non-contiguous rows within each chunk
    return weights_T_K


def loss_and_grads(fn, hidden_T_H, head_V_H, *args, **kwargs):
    hidden_T_H.grad = head_V_H.grad = None
    loss = fn(hidden_T_H, head_V_H, *args, **kwargs)
    loss.backward()
    return loss.detach(), hidden_T_H.grad.clone(), head_V_H.grad.clone()


def assert_close_all(got, expected, rtol=1e-5, atol=1e-6):
    for got_x, expected_x in zip(got, expected):
        torch.testing.assert_close(got_x.float(), expected_x.float(), rtol=rtol, atol=atol)


DIVERGENCE_CASES = [
    "reverse_kl",
    "forward_kl",
    GeneralizedJSD(0.3),
    GeneralizedJSD(0.0),
    GeneralizedJSD(1.0),
    "sampled_token",
]


@pytest.mark.parametrize("divergence", DIVERGENCE_CASES, ids=lambda d: d if isinstance(d, str) else f"jsd{d.beta}")
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_chunked_equals_naive_loss_and_gradients(divergence, temperature):
    hidden_T_H, head_V_H = make_student()
    args = (make_teachers(), mixed_weights_T_K(), divergence)
    kwargs = {"sampled_ids_T": torch.randint(0, V, (T,)), "temperature": temperature, "num_tokens": 50}
    naive = loss_and_grads(naive_distill_loss, hidden_T_H, head_V_H, *args, **kwargs)
    chunked = loss_and_grads(chunked_distill_loss, hidden_T_H, head_V_H, *args, chunk_size=CHUNK, **kwargs)
    assert_close_all(chunked, naive)


@pytest.mark.parametrize("chunk_size", [1, 5, 37, 512])
def test_chunk_size_does_not_change_the_result(chunk_size):
    hidden_T_H, head_V_H = make_student()
    args = (make_teachers(), mixed_weights_T_K())
    reference = loss_and_grads(naive_distill_loss, hidden_T_H, head_V_H, *args)
    chunked = loss_and_grads(chunked_distill_loss, hidden_T_H, head_V_H, *args, chunk_size=chunk_size)
    assert_close_all(chunked, reference)


def test_one_teacher_equals_the_single_teacher_kl_by_hand():
    hidden_T_H, head_V_H = make_student()
    (teacher,) = make_teachers(1)
    chunked = loss_and_grads(chunked_distill_loss, hidden_T_H, head_V_H, [teacher], torch.ones(T, 1), chunk_size=CHUNK)

    hidden_T_H.grad = head_V_H.grad = None
    logp_s_T_V = F.log_softmax(hidden_T_H @ head_V_H.t(), -1)
    logp_t_T_V = F.log_softmax(teacher.hidden_T_H @ teacher.head_V_H.t(), -1)
    # kl_div(input, target) = sum target * (log target - input): input = teacher, target = student
    by_hand = F.kl_div(logp_t_T_V, logp_s_T_V, log_target=True, reduction="sum") / T
    by_hand.backward()
    assert_close_all(chunked, (by_hand.detach(), hidden_T_H.grad, head_V_H.grad))


def test_forward_kl_equals_kl_div_by_hand():
    hidden_T_H, head_V_H = make_student()
    (teacher,) = make_teachers(1)
    loss = chunked_distill_loss(hidden_T_H, head_V_H, [teacher], torch.ones(T, 1), "forward_kl", chunk_size=CHUNK)
    logp_s_T_V = F.log_softmax(hidden_T_H @ head_V_H.t(), -1)
    logp_t_T_V = F.log_softmax(teacher.hidden_T_H @ teacher.head_V_H.t(), -1)
    by_hand = F.kl_div(logp_s_T_V, logp_t_T_V, log_target=True, reduction="sum") / T
    torch.testing.assert_close(loss, by_hand)


def test_routing_equals_the_sum_of_per_teacher_losses_on_their_tokens():
    hidden_T_H, head_V_H = make_student()
    teachers = make_teachers()
    owner_T = torch.cat([torch.zeros(11), torch.randint(0, K, (15,), generator=torch.Generator().manual_seed(3)),
                         torch.full((11,), 2)]).long()  # a block, interleaved tokens, a block
    routed = loss_and_grads(
        chunked_distill_loss, hidden_T_H, head_V_H, teachers, F.one_hot(owner_T, K).float(), chunk_size=CHUNK
    )

    hidden_T_H.grad = head_V_H.grad = None
    total = 0.0
    for k, teacher in enumerate(teachers):
        rows = (owner_T == k).nonzero().flatten()
        subset = CachedHiddenTeacher(teacher.hidden_T_H[rows], teacher.head_V_H)
        total = total + chunked_distill_loss(
            hidden_T_H[rows], head_V_H, [subset], torch.ones(len(rows), 1), chunk_size=CHUNK, num_tokens=T
        )
    total.backward()
    assert_close_all(routed, (total.detach(), hidden_T_H.grad, head_V_H.grad))


def test_micro_batches_sum_to_the_full_batch_loss():
    hidden_T_H, head_V_H = make_student()
    teachers, weights_T_K = make_teachers(), mixed_weights_T_K()
    full = chunked_distill_loss(hidden_T_H, head_V_H, teachers, weights_T_K, chunk_size=CHUNK)
    parts = 0.0
    for rows in (slice(0, 20), slice(20, T)):
        sub_teachers = [CachedHiddenTeacher(t.hidden_T_H[rows], t.head_V_H) for t in teachers]
        parts = parts + chunked_distill_loss(
            hidden_T_H[rows], head_V_H, sub_teachers, weights_T_K[rows], chunk_size=CHUNK, num_tokens=T
        )
    torch.testing.assert_close(full, parts)


def test_reverse_kl_is_zero_for_an_identical_teacher_and_positive_otherwise():
    hidden_T_H, head_V_H = make_student()
    same = CachedHiddenTeacher(hidden_T_H.detach().clone(), head_V_H.detach().clone())
    ones_T_1 = torch.ones(T, 1)
    with torch.no_grad():
        assert abs(float(chunked_distill_loss(hidden_T_H, head_V_H, [same], ones_T_1, chunk_size=CHUNK))) < 1e-6
        assert float(chunked_distill_loss(hidden_T_H, head_V_H, make_teachers(1), ones_T_1, chunk_size=CHUNK)) > 1e-2


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
def test_generalized_jsd_is_bounded_by_the_binary_entropy_of_beta(beta):
    gen = torch.Generator().manual_seed(4)
    s_T_V, t_T_V = torch.randn(T, V, generator=gen) * 30, torch.randn(T, V, generator=gen) * 30  # near-disjoint
    jsd_T = GeneralizedJSD(beta).per_token(s_T_V, t_T_V)
    bound = -(beta * math.log(beta) + (1 - beta) * math.log(1 - beta))
    assert bool((jsd_T >= -1e-6).all()) and bool((jsd_T <= bound + 1e-5).all())
    assert bound <= math.log(2) + 1e-12
    if beta == 0.5:
        assert float(jsd_T.max()) > 0.9 * math.log(2)  # peaked, different distributions approach log 2


def test_sampled_token_gradient_is_k1_times_the_score_function():
    hidden_T_H, head_V_H = make_student()
    (teacher,) = make_teachers(1)
    ids_T = torch.randint(0, V, (T,))
    loss, grad_hidden_T_H, _ = loss_and_grads(
        chunked_distill_loss, hidden_T_H, head_V_H, [teacher], torch.ones(T, 1), "sampled_token",
        chunk_size=CHUNK, sampled_ids_T=ids_T,
    )
    with torch.no_grad():
        logp_s_T_V = F.log_softmax(hidden_T_H @ head_V_H.t(), -1)
        logp_t_T_V = F.log_softmax(teacher.hidden_T_H @ teacher.head_V_H.t(), -1)
        k1_T = logp_s_T_V.gather(1, ids_T[:, None]).squeeze(1) - logp_t_T_V.gather(1, ids_T[:, None]).squeeze(1)
        dz_T_V = k1_T[:, None] * (F.one_hot(ids_T, V).float() - logp_s_T_V.exp()) / T
    torch.testing.assert_close(loss, k1_T.mean())
    torch.testing.assert_close(grad_hidden_T_H, dz_T_V @ head_V_H.detach(), rtol=1e-5, atol=1e-7)


def test_gradient_steps_move_the_student_toward_the_teacher():
    hidden_T_H, head_V_H = make_student()
    teachers, weights_T_K = make_teachers(), mixed_weights_T_K()
    optimizer = torch.optim.SGD([hidden_T_H, head_V_H], lr=0.5)
    losses = []
    for _ in range(5):
        optimizer.zero_grad()
        loss = chunked_distill_loss(hidden_T_H, head_V_H, teachers, weights_T_K, chunk_size=CHUNK)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert all(later < earlier for earlier, later in zip(losses, losses[1:])), losses


def test_callable_teacher_matches_cached_and_its_logits_are_left_untouched():
    hidden_T_H, head_V_H = make_student()
    teachers, weights_T_K = make_teachers(), mixed_weights_T_K()
    cache_K_T_V = [t.hidden_T_H @ t.head_V_H.t() for t in teachers]
    snapshot = [c.clone() for c in cache_K_T_V]
    callables = [CallableTeacher(lambda rows, c=c: c[rows], vocab_size=V) for c in cache_K_T_V]
    reference = loss_and_grads(chunked_distill_loss, hidden_T_H, head_V_H, teachers, weights_T_K, chunk_size=CHUNK)
    got = loss_and_grads(
        chunked_distill_loss, hidden_T_H, head_V_H, callables, weights_T_K, chunk_size=CHUNK, temperature=1.0
    )
    assert_close_all(got, reference)
    assert all(torch.equal(c, s) for c, s in zip(cache_K_T_V, snapshot))


def test_bfloat16_student_and_teachers_follow_naive():
    hidden_T_H, head_V_H = make_student(dtype=torch.bfloat16)
    args = (make_teachers(dtype=torch.bfloat16), mixed_weights_T_K())
    naive = loss_and_grads(naive_distill_loss, hidden_T_H, head_V_H, *args)
    chunked = loss_and_grads(chunked_distill_loss, hidden_T_H, head_V_H, *args, chunk_size=CHUNK)
    assert chunked[1].dtype == chunked[2].dtype == torch.bfloat16
    assert_close_all(chunked, naive, rtol=2e-2, atol=2e-3)


def test_no_grad_gives_the_same_loss():
    hidden_T_H, head_V_H = make_student()
    args = (make_teachers(), mixed_weights_T_K())
    with torch.no_grad():
        loss = chunked_distill_loss(hidden_T_H, head_V_H, *args, chunk_size=CHUNK)
    assert loss.grad_fn is None
    torch.testing.assert_close(loss, naive_distill_loss(hidden_T_H, head_V_H, *args).detach())


# ---- errors ----------------------------------------------------------------------------


@pytest.mark.parametrize("fn", [chunked_distill_loss, naive_distill_loss])
def test_vocab_mismatch_names_the_teacher_and_both_sizes(fn):
    hidden_T_H, head_V_H = make_student()
    teachers = make_teachers()
    teachers[1] = CachedHiddenTeacher(teachers[1].hidden_T_H, teachers[1].head_V_H[:999])
    with pytest.raises(ValueError, match=r"teacher 1: vocab size 999 != student vocab size 1000"):
        fn(hidden_T_H, head_V_H, teachers, torch.ones(T, K))
    teachers[1] = CallableTeacher(lambda rows: torch.zeros(1, 1), vocab_size=1024)
    with pytest.raises(ValueError, match=r"teacher 1: vocab size 1024 != student vocab size 1000"):
        fn(hidden_T_H, head_V_H, teachers, torch.ones(T, K))


def test_a_teacher_returning_the_wrong_shape_is_named():
    hidden_T_H, head_V_H = make_student()
    liar = CallableTeacher(lambda rows: torch.zeros(3, V), vocab_size=V)
    with pytest.raises(ValueError, match=r"teacher 0 returned logits of shape \(3, 1000\)"):
        chunked_distill_loss(hidden_T_H, head_V_H, [liar], torch.ones(T, 1), chunk_size=CHUNK)


@pytest.mark.parametrize("shape", [(T, K + 1), (T - 1, K), (T,)])
def test_weights_shape_mismatch_raises(shape):
    hidden_T_H, head_V_H = make_student()
    with pytest.raises(ValueError, match=r"weights_T_K has shape .* expected \(T, K\) = \(37, 3\)"):
        chunked_distill_loss(hidden_T_H, head_V_H, make_teachers(), torch.ones(shape))


def test_other_bad_inputs_fail_before_any_work():
    hidden_T_H, head_V_H = make_student()
    teachers, ones_T_K = make_teachers(), torch.ones(T, K)
    with pytest.raises(ValueError, match="needs sampled_ids_T"):
        chunked_distill_loss(hidden_T_H, head_V_H, teachers, ones_T_K, "sampled_token")
    with pytest.raises(ValueError, match="unknown divergence 'kl'"):
        chunked_distill_loss(hidden_T_H, head_V_H, teachers, ones_T_K, "kl")
    with pytest.raises(ValueError, match="beta must lie in"):
        GeneralizedJSD(1.5)
    with pytest.raises(ValueError, match="cached tokens"):
        short = [CachedHiddenTeacher(t.hidden_T_H[:-1], t.head_V_H) for t in teachers]
        chunked_distill_loss(hidden_T_H, head_V_H, short, ones_T_K)
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_distill_loss(hidden_T_H, head_V_H, teachers, ones_T_K, chunk_size=0)


def test_registry_refuses_a_duplicate_name():
    assert {"reverse_kl", "forward_kl", "generalized_jsd", "sampled_token"} <= set(DIVERGENCES)

    class Again(Divergence):
        name = "reverse_kl"

    with pytest.raises(ValueError, match="already registered"):
        register_divergence(Again)


@pytest.mark.parametrize("divergence", ["reverse_kl", "forward_kl", "generalized_jsd", "sampled_token"])
def test_token_losses_are_each_tokens_weighted_divergence(divergence):
    hidden_T_H, head_V_H = make_student()
    teachers, weights_T_K = make_teachers(), mixed_weights_T_K()
    ids_T = torch.randint(0, V, (T,), generator=torch.Generator().manual_seed(5))
    token_losses_T = torch.full((T,), float("nan"))
    loss = chunked_distill_loss(
        hidden_T_H, head_V_H, teachers, weights_T_K, divergence,
        chunk_size=CHUNK, sampled_ids_T=ids_T, num_tokens=50, token_losses_T=token_losses_T,
    )
    div = DIVERGENCES[divergence]()
    with torch.no_grad():
        s_T_V = hidden_T_H @ head_V_H.t()
        expected_T = sum(
            weights_T_K[:, k] * div.per_token(s_T_V, t.hidden_T_H @ t.head_V_H.t(), ids_T) for k, t in enumerate(teachers)
        ) / 50
    torch.testing.assert_close(token_losses_T, expected_T, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(token_losses_T.sum(), loss.detach(), atol=1e-6, rtol=1e-5)
    assert token_losses_T[16:24].abs().sum() == 0
