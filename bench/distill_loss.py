"""Peak memory and time of the full-vocabulary multi-teacher distillation loss: naive vs chunked.

Workload (fp32): student hidden states ``[T, H]`` (requires grad) and a trainable head
``[V, H]``; K teachers given as cached hidden states ``[T, H]`` plus their own heads
``[V, H]``; reverse KL; dense weights 1/K, so every teacher scores every token (the
worst case for both methods; a "routed" row at the largest K gives each token one teacher).
Defaults: CPU ``T=2048, V=49152, H=576`` (SmolLM2-135M); GPU (``--device cuda``)
``T=8192, V=151936`` (Qwen-size vocabulary).

What is measured, per config, in a fresh spawned process (so no run inherits another's
heap): inputs are built, one small warm-up call (64 tokens) starts the thread pools,
freed memory is handed back to the OS (``malloc_trim``); then one forward+backward is
timed (wall clock). Peak memory is what the loss needed *on top of its inputs*,
gradients included: on CPU the resident-set high-water mark (``VmHWM``, reset just
before the call through ``/proc/self/clear_refs``; ``ru_maxrss`` if that is not
writable) minus the resident set just before; on CUDA ``max_memory_allocated`` minus
``memory_allocated`` before. "others' CPU" is the cores other processes used meanwhile:
rerun if it is far from 0, timings are then inflated.

Naive configs whose estimated peak exceeds ``--mem-limit-gib`` run at T/4 and T/2 and are
extrapolated linearly to T (memory and time both grow linearly in T); they are marked ``*``.

Run: ``python bench/distill_loss.py`` (about 6 minutes on 2 cores);
GPU: ``python bench/distill_loss.py --device cuda``.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from multiprocessing import get_context
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout that is not pip-installed

import psutil  # noqa: E402
import torch  # noqa: E402

from distill.losses import CachedHiddenTeacher, chunked_distill_loss, naive_distill_loss  # noqa: E402

GIB = 2**30
DEFAULTS = {"cpu": {"tokens": 2048, "vocab": 49152}, "cuda": {"tokens": 8192, "vocab": 151936}}
# Naive peak in [T, V] float32 buffers, measured here (T=512: K=1 0.67 GiB, K=4 1.79 GiB):
# ~3.1 for the student (logits, log-probs, probs, their grads) + ~4 per teacher.
NAIVE_BUFFERS = (3.1, 4.0)


@dataclass(frozen=True)
class Config:
    method: str  # "naive" | "chunked" | "trl" (TRL's GKD loss on materialised logits; K=1)
    teachers: int
    tokens: int
    vocab: int
    hidden: int
    chunk: int
    device: str
    threads: int
    routed: bool = False
    divergence: str = "reverse_kl"


@dataclass
class Result:
    peak_gib: float
    seconds: float
    others_cores: float
    loss: float
    scaled: bool = False


def build_inputs(cfg: Config, tokens: int, seed: int = 0):
    """Student hidden/head and K cached-hidden teachers; logits come out with std ~3."""
    torch.manual_seed(seed)
    device, scale = torch.device(cfg.device), 3.0 / cfg.hidden**0.5
    hidden_T_H = torch.randn(tokens, cfg.hidden, device=device).requires_grad_()
    head_V_H = torch.nn.Parameter(torch.randn(cfg.vocab, cfg.hidden, device=device) * scale)
    teachers = [
        CachedHiddenTeacher(torch.randn(tokens, cfg.hidden, device=device), torch.randn_like(head_V_H) * scale)
        for _ in range(cfg.teachers)
    ]
    if cfg.routed:  # contiguous blocks of tokens per teacher, as sequences of one (domain, mode) give
        owner_T = torch.arange(tokens, device=device) * cfg.teachers // tokens
        weights_T_K = torch.nn.functional.one_hot(owner_T, cfg.teachers).float()
    else:
        weights_T_K = torch.full((tokens, cfg.teachers), 1.0 / cfg.teachers, device=device)
    return hidden_T_H, head_V_H, teachers, weights_T_K


TRL_BETA = {"reverse_kl": 1.0, "forward_kl": 0.0, "generalized_jsd": 0.5}  # TRL's beta convention


def trl_loss(cfg: Config, hidden_T_H, head_V_H, teachers):
    """TRL's ``GKDTrainer.generalized_jsd_loss`` on the same inputs: both [T, V] logits materialised."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from trl.experimental.gkd import GKDTrainer
    (teacher,) = teachers
    student_1_T_V = (hidden_T_H @ head_V_H.t()).unsqueeze(0)
    with torch.no_grad():
        teacher_1_T_V = teacher.logits(slice(0, cfg.tokens)).unsqueeze(0)
    loss = GKDTrainer.generalized_jsd_loss(student_1_T_V, teacher_1_T_V, beta=TRL_BETA[cfg.divergence])
    return loss / cfg.tokens  # "batchmean" over a batch of one sums the tokens


def loss_call(cfg: Config, hidden_T_H, head_V_H, teachers, weights_T_K):
    if cfg.method == "trl":
        return trl_loss(cfg, hidden_T_H, head_V_H, teachers)
    if cfg.method == "naive":
        return naive_distill_loss(hidden_T_H, head_V_H, teachers, weights_T_K, cfg.divergence)
    return chunked_distill_loss(hidden_T_H, head_V_H, teachers, weights_T_K, cfg.divergence, chunk_size=cfg.chunk)


def _release_freed_memory() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # freed heap pages back to the OS: a clean baseline
    except OSError:
        pass


def _cpu_peak_start() -> tuple[int, bool]:
    rss = psutil.Process().memory_info().rss
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # resets VmHWM to the current resident set
        return rss, True
    except OSError:
        return rss, False


def _cpu_peak_bytes(hwm_reset: bool) -> int:
    if hwm_reset:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def cpu_seconds() -> tuple[float, float]:
    """(machine-wide busy CPU seconds, this process's CPU seconds)."""
    return sum(psutil.cpu_times()[:3]), sum(psutil.Process().cpu_times()[:2])


def measure(cfg: Config) -> Result:
    """One forward+backward of one config; runs in its own fresh process."""
    torch.set_num_threads(cfg.threads)
    cuda = cfg.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    inputs = build_inputs(cfg, cfg.tokens)
    hidden_T_H, head_V_H, teachers, weights_T_K = inputs
    warm = [CachedHiddenTeacher(t.hidden_T_H[:64], t.head_V_H) for t in teachers]  # shares the heads
    loss_call(cfg, hidden_T_H[:64], head_V_H, warm, weights_T_K[:64]).backward()
    hidden_T_H.grad = head_V_H.grad = None
    del warm
    _release_freed_memory()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        before, hwm_reset = torch.cuda.memory_allocated(), False
    else:
        before, hwm_reset = _cpu_peak_start()
    machine, own = cpu_seconds()
    start = time.perf_counter()
    loss = loss_call(cfg, *inputs)
    loss.backward()
    sync()
    seconds = time.perf_counter() - start
    machine_after, own_after = cpu_seconds()
    peak = torch.cuda.max_memory_allocated() if cuda else _cpu_peak_bytes(hwm_reset)
    others = max(0.0, (machine_after - machine) - (own_after - own)) / seconds
    return Result((peak - before) / GIB, seconds, 0.0 if cuda else others, float(loss.detach()))


def run_fresh(cfg: Config) -> Result | None:
    """``measure`` in a new spawned process; None if it failed (CUDA out of memory) or died (CPU OOM kill)."""
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        try:
            return pool.submit(measure, cfg).result()
        except BrokenProcessPool:
            error = "the process died (out of memory?)"
        except RuntimeError as failure:  # torch.OutOfMemoryError included
            error = f"{type(failure).__name__}: {str(failure)[:200]}"
    print(f"  {cfg.method} K={cfg.teachers} T={cfg.tokens} chunk={cfg.chunk}: {error}", flush=True)
    return None


def naive_estimate_gib(cfg: Config) -> float:
    base, per_teacher = NAIVE_BUFFERS
    return cfg.tokens * cfg.vocab * 4 * (base + per_teacher * cfg.teachers) / GIB


def run_naive(cfg: Config, limit_gib: float) -> Result | None:
    """Measure naive at T, or at T/4 and T/2 extrapolated linearly to T when it would not fit."""
    if naive_estimate_gib(cfg) <= limit_gib:
        return run_fresh(cfg)
    quarter, half = cfg.tokens // 4, cfg.tokens // 2
    small, large = run_fresh(replace(cfg, tokens=quarter)), run_fresh(replace(cfg, tokens=half))
    if small is None or large is None:
        return None
    stretch = (cfg.tokens - half) / (half - quarter)
    return Result(
        peak_gib=large.peak_gib + (large.peak_gib - small.peak_gib) * stretch,
        seconds=large.seconds + (large.seconds - small.seconds) * stretch,
        others_cores=max(small.others_cores, large.others_cores),
        loss=float("nan"),
        scaled=True,
    )


def _fmt(result: Result | None, digits: int = 2) -> tuple[str, str]:
    if result is None:
        return "died", "died"
    mark = "*" if result.scaled else ""
    return f"{result.peak_gib:.{digits}f}{mark}", f"{result.seconds:.1f}{mark}"


def print_table(rows: list[tuple[Config, Result | None, Result | None]]) -> None:
    header = (
        "K", "T", "naive GiB", "naive s", "weights", "chunk", "ours GiB", "ours s",
        "mem naive/ours", "time ours/naive", "loss rel diff", "others' CPU n/o",
    )
    lines = [header]
    for cfg, naive, ours in rows:
        ratio_mem = ratio_time = loss_diff = "-"
        if naive is not None and ours is not None:
            ratio_mem = f"{naive.peak_gib / ours.peak_gib:.1f}x"
            ratio_time = f"{ours.seconds / naive.seconds:.2f}x"
            if not naive.scaled and not cfg.routed:  # same inputs: the losses must agree
                loss_diff = f"{abs(ours.loss - naive.loss) / abs(naive.loss):.1e}"
        others = "/".join("-" if r is None else f"{r.others_cores:.1f}" for r in (naive, ours))
        weights = "routed" if cfg.routed else "dense"
        lines.append(
            (str(cfg.teachers), str(cfg.tokens), *_fmt(naive), weights, str(cfg.chunk), *_fmt(ours, 3),
             ratio_mem, ratio_time, loss_diff, others)
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for index, line in enumerate(lines):
        print("  ".join(cell.rjust(width) for cell, width in zip(line, widths)))
        if index == 0:
            print("  ".join("-" * width for width in widths))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--tokens", type=int, help="T (default 2048 on CPU, 8192 on CUDA)")
    parser.add_argument("--vocab", type=int, help="V (default 49152 on CPU, 151936 on CUDA)")
    parser.add_argument("--hidden", type=int, default=576, help="H, student and teachers")
    parser.add_argument("--teachers", default="1,4,12", help="comma-separated K values")
    parser.add_argument("--chunks", default="256,512,1024", help="comma-separated chunk sizes for ours")
    parser.add_argument("--divergence", default="reverse_kl", choices=("reverse_kl", "forward_kl", "generalized_jsd"))
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--mem-limit-gib", type=float, help="naive above this runs at T/4, T/2 and is scaled")
    parser.add_argument(
        "--routed", action=argparse.BooleanOptionalAction, default=True,
        help="also time ours at the largest K with one teacher per token",
    )
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--trl", action=argparse.BooleanOptionalAction, default=True,
                        help="also time TRL's GKD loss at K=1 (it takes one teacher)")
    args = parser.parse_args()
    kind = "cuda" if args.device.startswith("cuda") else "cpu"
    args.tokens = args.tokens or DEFAULTS[kind]["tokens"]
    args.vocab = args.vocab or DEFAULTS[kind]["vocab"]
    args.teachers = [int(k) for k in args.teachers.split(",")]
    args.chunks = [int(c) for c in args.chunks.split(",")]
    if args.mem_limit_gib is None and kind == "cuda":
        args.mem_limit_gib = 0.85 * torch.cuda.get_device_properties(0).total_memory / GIB
    elif args.mem_limit_gib is None:
        args.mem_limit_gib = 0.8 * psutil.virtual_memory().available / GIB
    return args


def run_all(args) -> list[tuple[Config, Result | None, Result | None]]:
    """Naive once per K, ours per chunk size (and routed at the largest K), each in a fresh process."""
    rows = []
    for teachers in args.teachers:
        base = Config("naive", teachers, args.tokens, args.vocab, args.hidden, 0, args.device, args.threads)
        base = replace(base, divergence=args.divergence)
        naive = None if args.skip_naive else run_naive(base, args.mem_limit_gib)
        for chunk in args.chunks:
            cfg = replace(base, method="chunked", chunk=chunk)
            rows.append((cfg, naive, run_fresh(cfg)))
            print(f"  done K={teachers} chunk={chunk}", flush=True)
        if args.routed and teachers == max(args.teachers) > 1:
            cfg = replace(base, method="chunked", chunk=args.chunks[0], routed=True)
            rows.append((cfg, naive, run_fresh(cfg)))
    return rows


def run_trl(args) -> tuple[Config, Result | None] | None:
    if not args.trl or 1 not in args.teachers:
        return None
    cfg = Config("trl", 1, args.tokens, args.vocab, args.hidden, 0, args.device, args.threads, divergence=args.divergence)
    return cfg, run_naive(cfg, args.mem_limit_gib)


def main() -> None:
    args = parse_args()
    print(
        f"device={args.device} T={args.tokens} V={args.vocab} H={args.hidden} fp32 {args.divergence} "
        f"threads={args.threads}; naive runs above {args.mem_limit_gib:.1f} GiB (estimated) are scaled from T/4, T/2",
        flush=True,
    )
    rows = run_all(args)
    trl = run_trl(args)
    print()
    print_table(rows)
    if trl is not None:
        ours = min((r for c, _, r in rows if c.teachers == 1 and r is not None), key=lambda r: r.seconds, default=None)
        peak, seconds = _fmt(trl[1])
        versus = "" if ours is None or trl[1] is None else (
            f"; ours (best chunk): {trl[1].peak_gib / ours.peak_gib:.1f}x less memory, "
            f"{ours.seconds / trl[1].seconds:.2f}x the time, loss rel diff {abs(ours.loss - trl[1].loss) / abs(trl[1].loss):.1e}"
        )
        print(f"\nTRL GKDTrainer.generalized_jsd_loss, K=1 (beta={TRL_BETA[args.divergence]}): {peak} GiB, {seconds} s{versus}")
    print(
        "\nGiB: peak memory of one forward+backward above the inputs (gradients included); s: its wall time."
        "\n* = naive does not fit: measured at T/4 and T/2, extrapolated linearly to T."
        "\nloss rel diff: |ours - naive| / naive on identical inputs (where naive ran at full T)."
        "\nrouted rows: ours with each token scored by one teacher, vs naive's dense run (naive computes"
        " every teacher regardless of weights)."
    )


if __name__ == "__main__":
    main()
