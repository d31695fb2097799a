"""Score a batch of samples with weighted rewards, in parallel Ray tasks, each call under a timeout.

A reward that raises, or runs past its timeout, scores that sample as failed
(0.0 for that reward); failures and timeouts are counted per reward and the
first tracebacks logged, and the run goes on: a plugin bug must never kill a
training run.

Timeouts, by kind of reward:

- ``async def`` rewards run concurrently (one event loop per chunk), each call
  under ``asyncio.wait_for`` -- the right shape for rewards that wait on I/O
  (an LLM judge, a remote verifier);
- plain functions run one after another, each under a ``SIGALRM`` timer when
  called on the main thread (Ray runs task code there), which interrupts pure
  Python and sleeping calls;
- a chunk whose task is still running ``grace_s`` after every reward in it
  should have timed out (a call stuck in C code ignores the alarm) is
  cancelled with ``ray.cancel(force=True)``: its samples score as timed out.

The code reward does not rely on any of this: its program runs in the sandbox,
which enforces its own limits (``rewards/sandbox.py``).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
import threading
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field

from .registry import RewardResult, resolve_reward

log = logging.getLogger(__name__)
DEFAULT_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class WeightedReward:
    name: str  # registered name, "module:function", or an entry point
    weight: float = 1.0
    timeout_s: float = DEFAULT_TIMEOUT_S


@dataclass
class Sample:
    prompt: str
    completion: str
    fields: dict


@dataclass
class ScoredBatch:
    scores: list[float]  # weighted sum per sample
    per_reward: dict[str, list[float]]  # raw score per reward name
    failures: dict[str, int] = field(default_factory=dict)  # raised or timed out
    timeouts: dict[str, int] = field(default_factory=dict)
    components: dict[str, list[float]] = field(default_factory=dict)  # "reward/component" -> values returned
    errors: list[str] = field(default_factory=list)  # first few tracebacks, for the log


class RewardTimeout(TimeoutError):
    pass


def as_weighted(specs: Sequence) -> list[WeightedReward]:
    """Accept ``WeightedReward``s, recipe ``RewardSpec``s or ``(name, weight[, timeout_s])`` tuples."""
    out = []
    for spec in specs:
        if isinstance(spec, WeightedReward):
            out.append(spec)
        elif isinstance(spec, tuple):
            out.append(WeightedReward(*spec))
        else:
            out.append(WeightedReward(spec.name, spec.weight, getattr(spec, "timeout_s", DEFAULT_TIMEOUT_S)))
    return out


def score_locally(reward_specs: Sequence, samples: list[Sample], fns: dict | None = None) -> ScoredBatch:
    """Score ``samples`` in this process (what each Ray task runs on its chunk).

    ``fns`` maps reward names to functions resolved by the caller: the driver
    resolves once and ships the functions, so a reward registered in the
    driver's own modules is found in every Ray worker.
    """
    specs = as_weighted(reward_specs)
    fns = fns or {spec.name: resolve_reward(spec.name) for spec in specs}
    batch = _empty(specs)
    for spec in specs:
        fn = fns[spec.name]
        if inspect.iscoroutinefunction(fn):
            outcomes = asyncio.run(_call_async_all(fn, samples, spec.timeout_s))
        else:
            outcomes = [_call_sync(fn, sample, spec.timeout_s) for sample in samples]
        for outcome in outcomes:
            _record(batch, spec.name, outcome)
    batch.scores = [sum(s.weight * batch.per_reward[s.name][i] for s in specs) for i in range(len(samples))]
    return batch


def score_batch(reward_specs: Sequence, samples: list[Sample], chunks: int = 2, grace_s: float = 5.0) -> ScoredBatch:
    """Score ``samples`` in ``chunks`` parallel Ray tasks; merge in order; cancel chunks stuck past their timeouts."""
    import ray

    specs = as_weighted(reward_specs)
    size = max(1, -(-len(samples) // chunks))
    parts = [samples[i : i + size] for i in range(0, len(samples), size)]
    task = ray.remote(num_cpus=0, max_retries=0)(score_locally)
    fns = {spec.name: resolve_reward(spec.name) for spec in specs}
    refs = [task.remote(specs, part, fns) for part in parts]
    deadline = grace_s + max(len(part) for part in parts) * sum(s.timeout_s for s in specs) if parts else 0
    done, _ = ray.wait(refs, num_returns=len(refs), timeout=deadline)
    merged = _empty(specs)
    for ref, part in zip(refs, parts):
        if ref in done:
            _merge(merged, ray.get(ref))
            continue
        ray.cancel(ref, force=True)
        stuck = _empty(specs)
        for spec in specs:
            for _ in part:
                _record(stuck, spec.name, RewardTimeout(f"chunk still running after {deadline:.0f}s; cancelled"))
        stuck.scores = [0.0] * len(part)
        _merge(merged, stuck)
    if any(merged.failures.values()):
        log.warning("reward failures this batch: %s (timeouts %s); first: %s",
                    merged.failures, merged.timeouts, (merged.errors or ["?"])[0])
    return merged


def _call_sync(fn, sample: Sample, timeout_s: float):
    """The reward's score, or the exception it raised (a ``RewardTimeout`` past ``timeout_s``)."""
    use_alarm = threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")
    if use_alarm:
        previous = signal.signal(signal.SIGALRM, _raise_timeout)
        signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        result = fn(sample.prompt, sample.completion, **sample.fields)
        if inspect.isawaitable(result):  # a sync function that returned a coroutine
            result = asyncio.run(asyncio.wait_for(_await(result), timeout_s))
        return result
    except Exception as error:  # noqa: BLE001 - a plugin may raise anything
        return _with_traceback(error)
    finally:
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


async def _call_async_all(fn, samples: list[Sample], timeout_s: float) -> list:
    async def one(sample: Sample):
        try:
            return await asyncio.wait_for(fn(sample.prompt, sample.completion, **sample.fields), timeout_s)
        except TimeoutError:
            return RewardTimeout(f"async reward ran past {timeout_s}s")
        except Exception as error:  # noqa: BLE001
            return _with_traceback(error)

    return await asyncio.gather(*(one(sample) for sample in samples))


async def _await(awaitable):
    return await awaitable


def _raise_timeout(signum, frame):
    raise RewardTimeout("reward ran past its timeout")


def _with_traceback(error: Exception) -> Exception:
    error.formatted = "".join(traceback.format_exception(error, limit=4))
    return error


def _empty(specs: list[WeightedReward]) -> ScoredBatch:
    names = [spec.name for spec in specs]
    return ScoredBatch([], {n: [] for n in names}, {n: 0 for n in names}, {n: 0 for n in names})


def _record(batch: ScoredBatch, name: str, outcome) -> None:
    """Add one call's outcome (a float, a ``RewardResult`` or an exception) to ``batch``."""
    if isinstance(outcome, Exception):
        batch.failures[name] += 1
        batch.timeouts[name] += isinstance(outcome, RewardTimeout)
        batch.per_reward[name].append(0.0)
        if len(batch.errors) < 3:
            detail = getattr(outcome, "formatted", f"{type(outcome).__name__}: {outcome}")
            batch.errors.append(f"reward {name!r}: {detail}")
        return
    try:
        score = float(outcome.score if isinstance(outcome, RewardResult) else outcome)
    except (TypeError, ValueError) as error:
        _record(batch, name, TypeError(f"returned {outcome!r}, not a number or RewardResult ({error})"))
        return
    batch.per_reward[name].append(score)
    if isinstance(outcome, RewardResult):
        for component, value in outcome.components.items():
            batch.components.setdefault(f"{name}/{component}", []).append(float(value))


def _merge(into: ScoredBatch, part: ScoredBatch) -> None:
    into.scores += part.scores
    for name in into.per_reward:
        into.per_reward[name] += part.per_reward[name]
        into.failures[name] += part.failures[name]
        into.timeouts[name] += part.timeouts[name]
    for key, values in part.components.items():
        into.components.setdefault(key, []).extend(values)
    into.errors += part.errors
