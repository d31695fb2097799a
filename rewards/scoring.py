"""Score a batch of samples with weighted rewards, each plugin call isolated from the caller and the batch.

A reward plugin is arbitrary Python: it may raise, hang, exit the interpreter,
crash it, or return garbage. Whatever it does costs only the samples it did it
on: each such call scores 0 for that reward and is counted (``failures``,
``timeouts``, and ``reasons``: ``raised``, ``timeout``, ``exit``,
``interrupt``, ``crashed``, ``non_finite``, ``not_a_number``, ``unloadable``),
the first errors (bounded to a few KB each) go to the log, and every other
score of the batch comes back exactly. A plugin bug must never kill a training
run, nor poison it with a NaN.

Calls run in a small pool of long-lived worker processes (``rewards/pool.py``:
warm imports, a dead worker replaced at once), each call under ``timeout_s``:
cooperatively inside the worker (``SIGALRM`` for plain functions,
``asyncio.wait_for`` for ``async def`` ones, which run concurrently), and, for
a call that ignores that, by the parent killing its worker ``grace_s`` later.

No Ray here: a Ray task's start-up and cold imports cost ~100x a cheap reward
(``bench/reward_scoring.py``). The code reward's programs run in the sandbox,
which enforces its own limits (``rewards/sandbox.py``).
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import pickle
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from .pool import default_size, shared_pool
from .registry import resolve_reward
from .workers import Job, Outcome, RewardTimeout, failure

__all__ = ["RewardTimeout", "Sample", "ScoredBatch", "WeightedReward", "as_weighted", "score_batch", "score_locally"]

log = logging.getLogger(__name__)
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_GRACE_S = 2.0  # past its timeout, how long a call that ignores it runs before its worker is killed
MAX_LOGGED_ERRORS = 3


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
    per_reward: dict[str, list[float]]  # raw score per reward name (0.0 where the call failed)
    failures: dict[str, int] = field(default_factory=dict)  # every failed call, timeouts included
    timeouts: dict[str, int] = field(default_factory=dict)
    components: dict[str, list[float]] = field(default_factory=dict)  # "reward/component" -> values returned
    errors: list[str] = field(default_factory=list)  # first few errors (each bounded), for the log
    reasons: dict[str, dict[str, int]] = field(default_factory=dict)  # reward -> failure reason -> count


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


def score_locally(reward_specs: Sequence, samples: list[Sample], fns: dict | None = None,
                  grace_s: float = DEFAULT_GRACE_S) -> ScoredBatch:
    """Score ``samples`` in this machine's reward workers; nothing a plugin does reaches the caller.

    ``fns`` maps reward names to functions the caller already has (e.g. a lambda);
    otherwise names are resolved here, so an unknown one fails in the caller.
    Functions travel to the workers pickled: by reference when importable (the
    caller's ``sys.path`` and working directory go along), else by value.
    """
    specs = as_weighted(reward_specs)
    fns = fns or {spec.name: resolve_reward(spec.name) for spec in specs}
    outcomes: list[list[Outcome | None]] = [[None] * len(samples) for _ in specs]

    def on_outcome(reward_index: int, sample_index: int, outcome: Outcome) -> None:
        outcomes[reward_index][sample_index] = outcome

    if samples:
        pool = shared_pool()
        pool.run(_jobs(specs, samples, fns, pool.size), grace_s, on_outcome)
    return _collect(specs, outcomes, len(samples))


def score_batch(reward_specs: Sequence, samples: list[Sample], chunks: int | None = None,
                grace_s: float = DEFAULT_GRACE_S) -> ScoredBatch:
    """``score_locally``, then one bounded warning line when any call failed.

    ``chunks`` is accepted for old callers and ignored: the pool splits the work.
    """
    scored = score_locally(reward_specs, samples, grace_s=grace_s)
    if any(scored.failures.values()):
        reasons = {name: counts for name, counts in scored.reasons.items() if counts}
        log.warning("reward failures this batch: %s (timeouts %s; reasons %s); first: %s",
                    scored.failures, scored.timeouts, reasons, scored.errors[0] if scored.errors else "?")
    return scored


def _jobs(specs: list[WeightedReward], samples: list[Sample], fns: dict, workers: int) -> list[Job]:
    """Each reward's calls in a few jobs per worker.

    Sync calls in two jobs per worker: few round trips to the parent (each one a
    gap in which the worker waits), yet a worker done early takes the next job.
    A hang costs one call, not its job: the rest of the job is requeued. Async
    calls in one job per worker, which runs them all concurrently.
    """
    path, cwd = list(sys.path), os.getcwd()
    jobs = []
    for reward_index, spec in enumerate(specs):
        fn = fns[spec.name]
        accepted = accepted_fields(fn)
        calls = [(index, sample.prompt, sample.completion, _only(sample.fields, accepted)) for index, sample in enumerate(samples)]
        is_async = inspect.iscoroutinefunction(fn)
        size = -(-len(calls) // (workers if is_async else 2 * workers))
        blob = _pickled(fn)
        for start in range(0, len(calls), size):
            jobs.append(Job(reward_index, blob, is_async, spec.timeout_s, calls[start : start + size], path, cwd))
    return jobs


def accepted_fields(fn) -> frozenset[str] | None:
    """The keyword arguments ``fn`` takes beyond (prompt, completion); None: every one (it has ``**fields``).

    A sample's fields are the problem's columns -- a dataset source passes every column of its file -- so a
    reward that names only the fields it reads (``def r(prompt, completion, *, answer)``) gets only those,
    and a column it does not know never breaks it; ``**fields`` receives them all."""
    try:
        parameters = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # a builtin or C callable without a signature: give it everything
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    positional = [p for p in parameters if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    return frozenset(p.name for p in parameters[min(2, len(positional)):] if p.kind is not inspect.Parameter.POSITIONAL_ONLY)


def _only(fields: dict, accepted: frozenset[str] | None) -> dict:
    return fields if accepted is None else {name: value for name, value in fields.items() if name in accepted}


@functools.lru_cache(maxsize=256)
def _pickled(fn) -> bytes:
    """By reference when the function is importable; by value (cloudpickle) for lambdas, closures, ``__main__``."""
    try:
        import cloudpickle
    except ImportError:  # plain pickle: importable functions only
        return pickle.dumps(fn)
    return cloudpickle.dumps(fn)


def _collect(specs: list[WeightedReward], outcomes: list[list[Outcome | None]], count: int) -> ScoredBatch:
    names = [spec.name for spec in specs]
    batch = ScoredBatch([], {n: [] for n in names}, dict.fromkeys(names, 0), dict.fromkeys(names, 0),
                        reasons={n: {} for n in names})
    for name, row in zip(names, outcomes):
        for outcome in row:
            _record(batch, name, outcome or failure("crashed", "no outcome came back (a scoring bug)"))
    batch.scores = [sum(spec.weight * batch.per_reward[spec.name][i] for spec in specs) for i in range(count)]
    return batch


def _record(batch: ScoredBatch, name: str, outcome: Outcome) -> None:
    if outcome.reason is None:
        batch.per_reward[name].append(outcome.score)
        for component, value in outcome.components.items():
            batch.components.setdefault(f"{name}/{component}", []).append(value)
        return
    batch.per_reward[name].append(0.0)
    batch.failures[name] += 1
    batch.timeouts[name] += outcome.reason == "timeout"
    batch.reasons[name][outcome.reason] = batch.reasons[name].get(outcome.reason, 0) + 1
    if len(batch.errors) < MAX_LOGGED_ERRORS:
        batch.errors.append(f"reward {name!r} ({outcome.reason}): {outcome.detail}")
