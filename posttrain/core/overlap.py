"""Rollouts ahead of training, with bounded staleness: generation of later steps overlaps the update.

With ``max_staleness = k > 0`` a loop asks for step ``s + k``'s rollout as soon as
step ``s``'s samples are scored, and trains step ``s`` while the engine
generates it::

    step s:  take(s) -> reward -> ahead(s) [engine: generate s+k] -> update s [trainer]
             -> before_sync() [wait for s+k] -> weight sync -> synced(s)

Rollouts run one at a time, in step order, on one driver thread, and every
pending rollout finishes before a weight sync (``before_sync``), so a rollout's
weights are exactly those of the last sync before it was asked for: step ``s``
trains on samples of the policy after step ``s - k`` (its staleness, logged
per step, is ``k`` once the pipeline is full, less at the start). The loss
corrects for it with the engine's own log-probs of the sampled tokens (the
rollout correction). ``k = 0`` produces each rollout when it is taken, on the
caller's thread: the synchronous loop, call for call.

It knows no algorithm: ``produce(step)`` is the loop's (prompts + engine call).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

Rollout = TypeVar("Rollout")


@dataclass
class Taken(Generic[Rollout]):
    rollout: Rollout
    staleness: int  # optimizer steps between the weights that sampled it and the ones it trains


class RolloutsAhead(Generic[Rollout]):
    def __init__(self, produce: Callable[[int], Rollout], max_staleness: int, total_steps: int):
        self.produce, self.max_staleness, self.total_steps = produce, max_staleness, total_steps
        self._pending: dict[int, tuple[Future, int]] = {}  # step -> (its rollout, engine weights version)
        self._version = 0  # optimizer steps the engine's weights have seen (relative to the first step)
        self._first: int | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rollout-ahead") if max_staleness else None

    def take(self, step: int) -> Taken[Rollout]:
        """Step ``step``'s rollout: asked for earlier (waited for), or produced now."""
        if self._first is None:
            self._first = step
        version = self._version
        if step in self._pending:
            future, version = self._pending.pop(step)
            rollout = future.result()
        else:
            rollout = self.produce(step)
        return Taken(rollout, (step - self._first) - version)

    def ahead(self, step: int) -> None:
        """Step ``step``'s samples are in: ask for the rollouts up to ``step + max_staleness``."""
        if not self._executor:
            return
        for later in range(step + 1, min(step + self.max_staleness, self.total_steps - 1) + 1):
            if later not in self._pending:
                self._pending[later] = (self._executor.submit(self.produce, later), self._version)

    def before_sync(self) -> None:
        """Wait for every pending rollout: none may straddle a weight sync."""
        for future, _ in self._pending.values():
            future.result()

    def synced(self) -> None:
        """The engine now holds the weights after one more optimizer step."""
        self._version += 1

    def close(self) -> None:
        if self._executor:
            self._executor.shutdown(wait=True, cancel_futures=True)
