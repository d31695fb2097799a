"""Trainer log-probs: the whole ``[B, T, V]`` logits at once against ``logprob_chunk_tokens`` chunks.

    python bench/logprobs.py                       # SmolLM2's head (V=49152, H=576), B=16
    python bench/logprobs.py --lengths 256 400 --chunks 0 1024 4096

One forward + backward of ``sum(w * log p(target))`` through the output head, under
bfloat16 autocast as ``PolicyTrainer.token_logprobs`` runs it; each configuration in a
fresh process, peak memory above the inputs (VmHWM reset on CPU, the allocator peak on
CUDA) and the median of ``--repeats`` timed calls. Chunk 0 = the whole micro-batch.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout that is not pip-installed
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from distill_loss import _cpu_peak_bytes, _cpu_peak_start, _release_freed_memory  # noqa: E402

from posttrain.core.policy import chunked_target_logprobs  # noqa: E402

GIB = 2**30


def measure(batch: int, length: int, vocab: int, width: int, chunk: int, repeats: int, device: str):
    """(peak GiB above the inputs, median seconds) of forward + backward; runs in its own process."""
    torch.manual_seed(0)
    cuda = device.startswith("cuda")
    hidden = torch.randn(batch, length, width, device=device, requires_grad=True)
    head = torch.randn(vocab, width, device=device, requires_grad=True) * 0.02
    head = head.detach().requires_grad_()
    targets = torch.randint(0, vocab, (batch, length), device=device)
    weights = torch.randn(batch, length, device=device)

    def step() -> None:
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
            logprobs = chunked_target_logprobs(hidden, head, targets, chunk)
        (logprobs * weights).sum().backward()
        hidden.grad = head.grad = None
        if cuda:
            torch.cuda.synchronize()

    step()  # warm-up
    _release_freed_memory()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        before, reset = torch.cuda.memory_allocated(), False
    else:
        before, reset = _cpu_peak_start()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() if cuda else _cpu_peak_bytes(reset)
    return (peak - before) / GIB, statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16, help="sequences per micro-batch (the recipe default)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 400], help="completion tokens per sequence")
    parser.add_argument("--chunks", type=int, nargs="+", default=[0, 1024, 4096])
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--width", type=int, default=576)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    print(f"B={args.batch} V={args.vocab} H={args.width} {args.device}, bf16 autocast, forward+backward")
    print(f"{'T':>5} {'chunk':>6} {'peak GiB':>9} {'seconds':>8} {'memory whole/this':>18} {'time this/whole':>16}")
    context = get_context("spawn")
    for length in args.lengths:
        whole = None
        for chunk in args.chunks:
            with ProcessPoolExecutor(1, mp_context=context) as pool:
                peak, seconds = pool.submit(
                    measure, args.batch, length, args.vocab, args.width, chunk, args.repeats, args.device
                ).result()
            whole = whole or (peak, seconds)
            label = "whole" if chunk == 0 else str(chunk)
            print(f"{length:>5} {label:>6} {peak:>9.2f} {seconds:>8.2f} {whole[0] / peak:>17.1f}x {seconds / whole[1]:>15.2f}x")


if __name__ == "__main__":
    main()
