"""Our streamed generalized JSD (``distill/losses.py``) beside Liger-Kernel's fused linear JSD, on one GPU.

    python bench/liger_jsd.py                      # T=8192, V=151936, H=2048, beta=0.5, bf16 inputs
    python bench/liger_jsd.py --tokens 4096 --vocab 49152 --hidden 576

Same inputs for both (student hidden states and head, one teacher's hidden states and head), forward
and backward to the student's hidden states and head; median seconds of ``--repeats`` and the CUDA peak
memory above the inputs. Liger's ``LigerFusedLinearJSD`` (Triton) takes ``(student_input, student_weight,
teacher_input, teacher_weight)``; its beta weighs the same two KL terms (GKD's generalized JSD). The two
losses are printed side by side: they must agree (to bf16 rounding) for the timing to mean anything.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from distill.divergences import GeneralizedJSD  # noqa: E402
from distill.losses import CachedHiddenTeacher, chunked_distill_loss  # noqa: E402


def inputs(tokens: int, vocab: int, hidden: int, dtype):
    generator = torch.Generator(device="cuda").manual_seed(0)
    scale = 3.0 / hidden**0.5
    make = lambda *shape, s=1.0: (torch.randn(*shape, device="cuda", generator=generator) * s).to(dtype)  # noqa: E731
    return make(tokens, hidden), make(vocab, hidden, s=scale), make(tokens, hidden), make(vocab, hidden, s=scale)


def ours(student_T_H, head_V_H, teacher_T_H, teacher_head_V_H, beta: float, chunk: int):
    weights_T_K = torch.ones(student_T_H.shape[0], 1, device="cuda")
    teacher = CachedHiddenTeacher(teacher_T_H, teacher_head_V_H)
    return chunked_distill_loss(student_T_H, head_V_H, [teacher], weights_T_K, GeneralizedJSD(beta), chunk_size=chunk)


def liger(beta: float):
    from liger_kernel.transformers import LigerFusedLinearJSD

    fused = LigerFusedLinearJSD(jsd_beta=beta)
    return lambda s, sw, t, tw: fused(s, sw, t, tw)


def measure(fn, tensors, repeats: int) -> tuple[float, float, float]:
    student, head, teacher, teacher_head = tensors
    times, loss = [], 0.0
    for index in range(repeats + 1):
        s, w = student.detach().requires_grad_(), head.detach().requires_grad_()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        start = time.perf_counter()
        out = fn(s, w, teacher, teacher_head)
        out.backward()
        torch.cuda.synchronize()
        if index:
            times.append(time.perf_counter() - start)
        loss = float(out)
    return statistics.median(times), (torch.cuda.max_memory_allocated() - base) / 2**30, loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--beta", type=float, default=0.5)
    parser.add_argument("--chunks", default="1024,4096")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    tensors = inputs(args.tokens, args.vocab, args.hidden, torch.bfloat16)
    print(f"{torch.cuda.get_device_name()}  T={args.tokens} V={args.vocab} H={args.hidden} beta={args.beta} (bf16 inputs)")
    print(f"{'loss':28s} {'seconds':>8s} {'peak GiB':>9s} {'value':>10s}")
    for chunk in map(int, args.chunks.split(",")):
        fn = lambda s, w, t, tw, c=chunk: ours(s, w, t, tw, args.beta, c)  # noqa: E731
        seconds, peak, value = measure(fn, tensors, args.repeats)
        print(f"{'ours, chunk ' + str(chunk):28s} {seconds:8.3f} {peak:9.2f} {value:10.5f}")
    try:
        seconds, peak, value = measure(liger(args.beta), tensors, args.repeats)
        print(f"{'liger fused linear JSD':28s} {seconds:8.3f} {peak:9.2f} {value:10.5f}")
    except ImportError as error:
        print(f"liger fused linear JSD: not installed ({error})")


if __name__ == "__main__":
    main()
