"""Named, timed phases: each step's time breakdown comes for free."""

from __future__ import annotations

import time
from contextlib import contextmanager


class PhaseTimer:
    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def metrics(self, prefix: str = "time/") -> dict[str, float]:
        out = {f"{prefix}{name}": value for name, value in self.seconds.items()}
        out[f"{prefix}step"] = sum(self.seconds.values())
        return out
