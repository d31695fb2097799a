"""Score a batch of samples with weighted rewards, in parallel Ray tasks.

A reward that raises scores the sample as failed (0.0 for that reward), is
counted, and the run goes on: a plugin bug must never kill a training run.
"""

from __future__ import annotations

import inspect
import logging
import traceback
from dataclasses import dataclass, field

from .registry import RewardResult, resolve_reward

log = logging.getLogger(__name__)


@dataclass
class Sample:
    prompt: str
    completion: str
    fields: dict


@dataclass
class ScoredBatch:
    scores: list[float]  # weighted sum per sample
    per_reward: dict[str, list[float]]  # raw score per reward name
    failures: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)  # first few tracebacks, for the log


def _call(fn, sample: Sample) -> float:
    result = fn(sample.prompt, sample.completion, **sample.fields)
    if inspect.isawaitable(result):
        import asyncio

        result = asyncio.run(_await(result))
    return float(result.score if isinstance(result, RewardResult) else result)


async def _await(awaitable):
    return await awaitable


def score_locally(reward_specs: list[tuple[str, float]], samples: list[Sample]) -> ScoredBatch:
    """Score ``samples`` in this process (what each Ray task runs on its chunk)."""
    fns = {name: resolve_reward(name) for name, _ in reward_specs}
    per_reward = {name: [] for name, _ in reward_specs}
    failures = {name: 0 for name, _ in reward_specs}
    errors: list[str] = []
    for sample in samples:
        for name, _ in reward_specs:
            try:
                per_reward[name].append(_call(fns[name], sample))
            except Exception:  # noqa: BLE001 - a plugin may raise anything
                failures[name] += 1
                per_reward[name].append(0.0)
                if len(errors) < 3:
                    errors.append(f"reward {name!r}: {traceback.format_exc(limit=3)}")
    scores = [
        sum(weight * per_reward[name][i] for name, weight in reward_specs) for i in range(len(samples))
    ]
    return ScoredBatch(scores, per_reward, failures, errors)


def score_batch(reward_specs: list[tuple[str, float]], samples: list[Sample], chunks: int = 2) -> ScoredBatch:
    """Score ``samples`` in ``chunks`` parallel Ray tasks; merge in order."""
    import ray

    size = max(1, -(-len(samples) // chunks))
    task = ray.remote(num_cpus=0)(score_locally)
    parts = ray.get([task.remote(reward_specs, samples[i : i + size]) for i in range(0, len(samples), size)])
    merged = ScoredBatch([], {name: [] for name, _ in reward_specs}, {name: 0 for name, _ in reward_specs})
    for part in parts:
        merged.scores += part.scores
        for name in merged.per_reward:
            merged.per_reward[name] += part.per_reward[name]
            merged.failures[name] += part.failures[name]
        merged.errors += part.errors
    for error in merged.errors[:1]:
        log.warning("reward failures this batch: %s; first: %s", merged.failures, error)
    return merged
