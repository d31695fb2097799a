"""Per-sample cost of scoring cheap rewards: in-process loop vs the old Ray-task path vs the worker pool.

    flock /tmp/posttrain-heavy.lock env PYTHONPATH=$PWD python bench/reward_scoring.py [--sizes 32 256] [--rounds 5]

The reward is ``math_verify`` on short completions (a GRPO math step's reward
phase). Three ways of scoring the same samples, in one run:

- ``in-process loop``: ``math_verify`` called in a plain loop here (no isolation,
  no timeout): the reward's own work, the floor;
- ``ray tasks (old)``: what ``score_batch`` did before the worker pool -- the
  functions resolved here and shipped to two ``num_cpus=0`` Ray tasks, each
  scoring its half in a loop under a per-call ``SIGALRM``;
- ``worker pool (new)``: ``rewards.score_batch`` today (long-lived forkserver
  workers, every call isolated, parent-enforced timeouts).

``first`` is the first batch (for the first size, of a fresh process: the
pool's or Ray's start-up and cold imports); ``warm`` the median of the later
rounds. Target: the pool's warm per-sample time <= 1.2x the old path's, and far
below it.

Measured here (2 cores shared with other agents' jobs: load 14-15, so noisy;
``--rounds 7``, rounds alternating): warm ms/sample, pool vs old vs loop:
32 samples 4.69 vs 24.26 vs 3.31 (pool 0.19x the old path); 256 samples 2.60
vs 7.08 vs 4.01 (0.37x; two workers beat the one-process loop). First batch
of a fresh process: old 25.6 s (Ray workers start and import ``rewards`` and
torch), pool 19.5 s (the forkserver's one-time import of the same). Earlier
runs with methods in sequence instead of alternating ranged from 0.40x (load
5) to 1.32x (256 samples, load 10-15) the old path. The pool's own cost per
call, with a reward that returns 1.0: ~67 us.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def make_samples(count: int, seed: int = 0):
    from rewards import Sample

    rng = random.Random(seed)
    out = []
    for _ in range(count):
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        said = a + b if rng.random() < 0.6 else a + b + rng.randint(1, 9)
        completion = rng.choice([f"{a} + {b} = {said}, so the answer is {said}.", f"The answer is \\boxed{{{said}}}"])
        out.append(Sample(f"What is {a} + {b}?", completion, {"answer": str(a + b)}))
    return out


def in_process(samples) -> list[float]:
    from rewards.math import math_verify

    return [math_verify(s.prompt, s.completion, **s.fields) for s in samples]


def _alarm(signum, frame):
    raise TimeoutError


def _old_chunk(fn, samples, timeout_s):
    """One old Ray task: a plain loop, each call under SIGALRM, failures as 0."""
    signal.signal(signal.SIGALRM, _alarm)
    scores = []
    for sample in samples:
        signal.setitimer(signal.ITIMER_REAL, timeout_s)
        try:
            scores.append(float(fn(sample.prompt, sample.completion, **sample.fields)))
        except Exception:  # noqa: BLE001
            scores.append(0.0)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    return scores


def ray_tasks(samples, chunks: int = 2) -> list[float]:
    import ray

    from rewards import resolve_reward

    task = ray.remote(num_cpus=0, max_retries=0)(_old_chunk)
    fn = resolve_reward("math_verify")
    size = max(1, -(-len(samples) // chunks))
    refs = [task.remote(fn, samples[i : i + size], 30.0) for i in range(0, len(samples), size)]
    return [score for part in ray.get(refs) for score in part]


def worker_pool(samples) -> list[float]:
    from rewards import score_batch

    return score_batch([("math_verify", 1.0)], samples).scores


def measure(methods: dict, samples, rounds: int) -> dict[str, tuple[float, float, list[float]]]:
    """Per method: (first batch seconds, median of the later rounds, scores).

    Rounds alternate the methods, so load from other processes hits them alike.
    """
    times: dict[str, list[float]] = {name: [] for name in methods}
    scores: dict[str, list[float]] = {}
    for _ in range(rounds):
        for name, run in methods.items():
            start = time.perf_counter()
            scores[name] = run(samples)
            times[name].append(time.perf_counter() - start)
    return {name: (t[0], statistics.median(t[1:]), scores[name]) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 256])
    parser.add_argument("--rounds", type=int, default=5, help="batches per method and size; the first is 'first'")
    args = parser.parse_args()
    import ray

    from rewards.pool import default_size

    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": REPO}})
    methods = {"in-process loop": in_process, "ray tasks (old)": ray_tasks, "worker pool (new)": worker_pool}
    print(f"math_verify, best-case cheap reward; {args.rounds} rounds (first = fresh process state, warm = median "
          f"of the rest); pool of {default_size()} workers; load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"{'method':20s} {'samples':>7s} {'first s':>8s} {'warm ms':>8s} {'ms/sample':>9s} {'vs loop':>8s} "
          f"{'vs old':>7s}")
    for size in args.sizes:
        samples = make_samples(size)
        results = measure(methods, samples, args.rounds)
        expected = results["in-process loop"][2]
        for name, (first, warm, scores) in results.items():
            assert scores == expected, f"{name} scored differently"
            loop_warm, old_warm = results["in-process loop"][1], results["ray tasks (old)"][1]
            print(f"{name:20s} {size:7d} {first:8.2f} {1000 * warm:8.1f} {1000 * warm / size:9.3f} "
                  f"{warm / loop_warm:7.2f}x {warm / old_warm:6.3f}x")
    print(f"load after: {os.getloadavg()[0]:.1f}")
    ray.shutdown()


if __name__ == "__main__":
    main()
