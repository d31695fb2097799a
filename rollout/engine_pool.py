"""EnginePool: several ``RolloutEngine`` actors (``engine.replicas``) behind the calls one engine takes.

The loops hold an engine handle and call ``engine.generate.remote(...)``,
``engine.reseed.remote(...)``, ``engine.update_weights.remote(...)``, ... and ``ray.get``
the result. A pool answers the same calls on the driver, so a loop cannot tell one
engine from M (with one replica the driver hands out the actor itself: no pool, no hop):

- ``generate``: the call's prompts are spread over the replicas by load -- the
  token allowance (prompt + ``n * max_tokens``) of the work each replica has in flight
  -- the costliest first onto the least loaded; all samples of a prompt go to one
  replica (one request, one prefix), and so do prompts sharing ``SamplingSpec.affinity``.
  The parts come back as one ``GenerateResult`` in prompt order (a zero-CPU Ray task
  joins them, so the caller still gets one object ref).
- ``submit`` / ``poll`` (a multi-turn rollout, through ``engine_client``): an episode's
  affinity key is pinned to the replica its first turn went to, so every later turn
  reuses that replica's KV/prefix cache; ``poll`` returns what any replica finished.
- ``reseed``, ``update_weights`` (the whole dict), ``load_weight_bucket`` (each streamed
  bucket, loaded by every replica while the next is written), ``weights_loaded``,
  ``ready``: every replica, one ref that resolves when all have done it.

Seeds do not depend on the replica: a prompt's seed key is fixed here before the
prompts are spread (``rollout/seeds.py``: ``(call, position)`` numbered over the whole
call, as one engine numbers them), and budget forcing runs inside each replica as in one.

It must not know about recipes, trainers or algorithms.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from dataclasses import replace
from functools import partial

import ray

from .engine import Completion, EngineClient, GenerateResult, SamplingSpec


def prompt_cost(prompt: list[int], spec: SamplingSpec) -> int:
    """A prompt's share of a replica's work: its prefill and its samples' token allowance."""
    return len(prompt) + spec.n * spec.max_tokens


def place(costs: list[float], loads: list[float]) -> list[int]:
    """The replica of each unit of work (``costs``): the costliest first onto the least loaded replica
    (``loads``: the work each already has; ties go to the lower index). ``loads`` is updated."""
    replicas = [0] * len(costs)
    for unit in sorted(range(len(costs)), key=lambda index: (-costs[index], index)):
        target = min(range(len(loads)), key=lambda replica: (loads[replica], replica))
        replicas[unit] = target
        loads[target] += costs[unit]
    return replicas


def units_by_affinity(specs: list[SamplingSpec]) -> list[list[int]]:
    """Prompt positions that must share a replica: one list per affinity key (in first-seen order), one per
    prompt without a key."""
    keyed: dict[int, list[int]] = {}
    units: list[list[int]] = []
    for position, spec in enumerate(specs):
        if spec.affinity is None:
            units.append([position])
        elif spec.affinity in keyed:
            keyed[spec.affinity].append(position)
        else:
            keyed[spec.affinity] = [position]
            units.append(keyed[spec.affinity])
    return units


class _ActorStyle:
    """Makes ``pool.method.remote(...)`` call the pool's method, as on a Ray actor handle."""

    def __init__(self, method: Callable):
        self.method = method

    def __get__(self, pool, owner=None):
        if pool is None:
            return self
        return _BoundRemote(partial(self.method, pool))


class _BoundRemote:
    def __init__(self, call: Callable):
        self.remote = call


@ray.remote(num_cpus=0)
def _joined(positions: list[list[int]], *parts: GenerateResult) -> GenerateResult:
    """The replicas' results as one, in the call's prompt order (``positions[r]``: replica r's prompts)."""
    completions: list[Completion] = []
    for where, part in zip(positions, parts):
        for completion in part.completions:
            completion.prompt_index = where[completion.prompt_index]
            completions.append(completion)
    completions.sort(key=lambda completion: completion.prompt_index)  # stable: a prompt's samples keep their order
    metrics: dict[str, float] = {}
    for part in parts:
        metrics |= part.metrics
    return GenerateResult(completions, max((part.seconds for part in parts), default=0.0), metrics=metrics)


@ray.remote(num_cpus=0)
def _all_done(*values):
    """Every replica answered: the slowest one's figure (seconds), or the shared answer (``ready``, None)."""
    figures = [value for value in values if isinstance(value, float)]
    return max(figures) if figures else (values[0] if values else None)


class EnginePool:
    """``engines``: ``RolloutEngine`` actors with one config. Thread-safe (a rollout sampled ahead runs on a
    driver thread)."""

    def __init__(self, engines: list):
        if len(engines) < 2:
            raise ValueError("a pool is for 2 engines or more; use the engine actor itself")
        self.engines = list(engines)
        self._lock = threading.Lock()
        self._in_flight: list[dict] = [{} for _ in self.engines]  # replica -> {generate ref: cost}
        self._turn_load = [0] * len(self.engines)  # open multi-turn tickets' cost per replica
        self._calls = 0  # submit calls since the reseed, numbered as one engine numbers them

    # -- the calls a loop makes on an engine handle -------------------------------------------

    @_ActorStyle
    def generate(self, prompts: list[list[int]], spec: SamplingSpec | list[SamplingSpec], use_tqdm: bool = False):
        """One object ref of the whole call's ``GenerateResult``, its parts sampled on the replicas."""
        specs = self.keyed_specs(prompts, spec)
        positions = self.route(prompts, specs)
        parts, used = [], []
        for replica, where in enumerate(positions):
            if not where:
                continue
            ref = self.engines[replica].generate.remote([prompts[i] for i in where], [specs[i] for i in where])
            with self._lock:
                self._in_flight[replica][ref] = sum(prompt_cost(prompts[i], specs[i]) for i in where)
            parts.append(ref)
            used.append(where)
        return _joined.remote(used, *parts)

    @_ActorStyle
    def reseed(self, seed: int):
        with self._lock:
            self._calls = 0
        return self._on_every("reseed", seed)

    @_ActorStyle
    def update_weights(self, named_tensors):
        """The whole state dict (or an object ref of it, resolved by each replica) into every replica."""
        if not isinstance(named_tensors, ray.ObjectRef):  # stored once, not once per replica
            named_tensors = ray.put(named_tensors)
        return self._on_every("update_weights", named_tensors)

    @_ActorStyle
    def load_weight_bucket(self, bucket):
        """One streamed bucket, loaded by every replica: a ``weight_buckets.BucketRef`` (from the one shared file)
        or a Ray object of its tensors (each replica's node fetches it)."""
        return self._on_every("load_weight_bucket", bucket)

    @_ActorStyle
    def weights_loaded(self):
        return self._on_every("weights_loaded")

    @_ActorStyle
    def ready(self):
        return self._on_every("ready")

    @_ActorStyle
    def max_model_len(self):
        return self.engines[0].max_model_len.remote()

    def _on_every(self, method: str, *args):
        return _all_done.remote(*[getattr(engine, method).remote(*args) for engine in self.engines])

    # -- routing ----------------------------------------------------------------------------

    def keyed_specs(self, prompts: list[list[int]], spec: SamplingSpec | list[SamplingSpec]) -> list[SamplingSpec]:
        """One spec per prompt, each with its seed key: the caller's, else ``(call, position)`` (``rollout/seeds.py``)."""
        specs = [spec] * len(prompts) if isinstance(spec, SamplingSpec) else list(spec)
        if len(specs) != len(prompts):
            raise ValueError(f"{len(specs)} sampling specs for {len(prompts)} prompts")
        with self._lock:
            call, self._calls = self._calls, self._calls + 1
        return [one if one.seed_key is not None else replace(one, seed_key=(call, index)) for index, one in enumerate(specs)]

    def route(self, prompts: list[list[int]], specs: list[SamplingSpec], pinned: dict[int, int] | None = None) -> list[list[int]]:
        """Prompt positions per replica: an affinity key in ``pinned`` goes to its replica, the rest by load
        (a new key is pinned where it lands)."""
        loads = self.loads()
        positions: list[list[int]] = [[] for _ in self.engines]
        free = []
        for unit in units_by_affinity(specs):
            key = specs[unit[0]].affinity
            if pinned is not None and key in pinned:
                positions[pinned[key]] += unit
                loads[pinned[key]] += sum(prompt_cost(prompts[i], specs[i]) for i in unit)
            else:
                free.append(unit)
        costs = [sum(prompt_cost(prompts[i], specs[i]) for i in unit) for unit in free]
        for unit, replica in zip(free, place(costs, loads)):
            positions[replica] += unit
            if pinned is not None and specs[unit[0]].affinity is not None:
                pinned[specs[unit[0]].affinity] = replica
        return [sorted(where) for where in positions]

    def loads(self) -> list[float]:
        """Each replica's work in flight (token allowance), finished generate calls dropped."""
        with self._lock:
            refs = [ref for flight in self._in_flight for ref in flight]
        done = set(ray.wait(refs, num_returns=len(refs), timeout=0)[0]) if refs else set()
        with self._lock:
            for flight in self._in_flight:
                for ref in done & flight.keys():
                    del flight[ref]
            return [sum(flight.values()) + turns for flight, turns in zip(self._in_flight, self._turn_load)]

    def add_turn_load(self, replica: int, cost: int) -> None:
        with self._lock:
            self._turn_load[replica] += cost

    def client(self) -> PoolClient:
        """A multi-turn rollout's ``submit``/``poll`` over the replicas (one per rollout: its episodes' pins)."""
        return PoolClient(self)


class PoolClient:
    """``EngineClient`` over a pool: each affinity key (a multi-turn episode) stays on one replica.

    ``served`` records ``(affinity, replica)`` for every submitted prompt, in submit order.
    """

    def __init__(self, pool: EnginePool):
        self.pool = pool
        self.pinned: dict[int, int] = {}  # affinity key -> replica
        self.served: list[tuple[int | None, int]] = []
        self._tickets = itertools.count()
        self._submits: list[list[tuple]] = [[] for _ in pool.engines]  # per replica: (submit ref, its tickets)
        self._global: dict[tuple[int, int], int] = {}  # (replica, engine ticket) -> our ticket
        self._open: dict[int, tuple[int, int, int]] = {}  # our ticket -> (replica, position in its call, cost)
        self._polls: dict[int, ray.ObjectRef] = {}  # replica -> its poll in flight

    def submit(self, prompts: list[list[int]], specs: list[SamplingSpec]) -> list[int]:
        specs = self.pool.keyed_specs(prompts, specs)
        tickets = [next(self._tickets) for _ in prompts]
        for replica, where in enumerate(self.pool.route(prompts, specs, self.pinned)):
            if not where:
                continue
            ref = self.pool.engines[replica].submit.remote([prompts[i] for i in where], [specs[i] for i in where])
            self._submits[replica].append((ref, [tickets[i] for i in where]))
            for i in where:
                cost = prompt_cost(prompts[i], specs[i])
                self._open[tickets[i]] = (replica, i, cost)
                self.pool.add_turn_load(replica, cost)
        self.served += [(spec.affinity, self._open[ticket][0]) for spec, ticket in zip(specs, tickets)]
        return tickets

    def poll(self) -> list[tuple[int, list[Completion]]]:
        """Wait until some replica finishes a prompt; every finished ``(ticket, completions)`` of the replicas
        that answered ([] when nothing is open)."""
        busy = {replica for replica, _, _ in self._open.values()}
        for replica in busy - self._polls.keys():
            self._polls[replica] = self.pool.engines[replica].poll.remote()
        if not self._polls:
            return []
        refs = list(self._polls.values())
        ray.wait(refs, num_returns=1)  # the first to finish; then whatever else is done by now
        ready = set(ray.wait(refs, num_returns=len(refs), timeout=0)[0])
        finished = []
        for replica in [replica for replica, ref in self._polls.items() if ref in ready]:
            finished += self._take(replica, ray.get(self._polls.pop(replica)))
        return sorted(finished, key=lambda pair: pair[0])

    def _take(self, replica: int, finished: list[tuple[int, list[Completion]]]) -> list[tuple[int, list[Completion]]]:
        """A replica's finished tickets as ours, its completions numbered by position in our submit call."""
        for ref, tickets in self._submits[replica]:  # done by now: the actor ran them before or right after the poll
            self._global |= {(replica, local): ours for local, ours in zip(ray.get(ref), tickets)}
        self._submits[replica] = []
        if not finished:
            raise RuntimeError(f"replica {replica} returned nothing for its running prompts")
        out = []
        for local, completions in finished:
            ours = self._global.pop((replica, local))
            _, position, cost = self._open.pop(ours)
            self.pool.add_turn_load(replica, -cost)
            for completion in completions:
                completion.prompt_index = position
            out.append((ours, completions))
        return out


def engine_client(engine) -> EngineClient | PoolClient:
    """``submit``/``poll`` (a multi-turn rollout) on an engine actor or an ``EnginePool``."""
    return engine.client() if isinstance(engine, EnginePool) else EngineClient(engine)


def engine_handles(engine) -> list:
    """The engine actors behind ``engine`` (an actor, or an ``EnginePool``)."""
    return list(engine.engines) if isinstance(engine, EnginePool) else [engine]


def stop_engines(engine) -> None:
    """Kill the engine actor, or every replica of an ``EnginePool``."""
    for handle in engine_handles(engine):
        ray.kill(handle)
