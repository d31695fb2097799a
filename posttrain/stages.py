"""Running pipeline stages: each in its own Ray placement group, recorded in a ledger that makes re-runs skip.

``StageLedger`` is ``pipeline.json``: per stage its status (running, done,
failed), attempts, seconds and outputs, rewritten atomically after every
change. A stage marked done is skipped on a re-run; a stage that was running
or failed runs again, and the stage itself resumes from its newest checkpoint.

``run_in_placement_group`` reserves a stage's CPUs/GPUs as one bundle on one
node, then runs the stage driver as a zero-CPU Ray task inside it with
``placement_group_capture_child_tasks``: the engine, trainer and teacher pool it
creates land in the bundle. Specialists launched together therefore run side by
side when the cluster has room and queue (never deadlock half-placed) when it
does not.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("posttrain.pipeline")
Job = tuple[Callable, object, dict]  # (stage function, its argument, its resources)


class StageFailed(RuntimeError):
    """A stage ended with an error; the message names it. Its checkpoints are intact."""


class StageLedger:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.stages: dict[str, dict] = json.loads(self.path.read_text()) if self.path.exists() else {}

    def run(self, name: str, job: Callable[[], dict]) -> dict:
        """``job()``'s outputs, or the recorded ones when ``name`` is already done."""
        if (done := self._done(name)) is not None:
            return done
        started = self._start(name)
        try:
            outputs = job()
        except Exception as error:
            self._fail(name, started, error)
            raise StageFailed(_failure_message(name, error)) from error
        return self._finish(name, started, outputs)

    def run_parallel(self, jobs: dict[str, Job]) -> dict[str, dict]:
        """Launch every unfinished job at once (each in its placement group); wait for all; then report failures."""
        import ray

        results = {name: done for name in jobs if (done := self._done(name)) is not None}
        launched = {}
        for name, (fn, arg, resources) in jobs.items():
            if name not in results:
                launched[name] = (launch_in_placement_group(fn, arg, resources), self._start(name))
        failures = []
        for name, ((ref, group), started) in launched.items():
            try:
                results[name] = self._finish(name, started, ray.get(ref))
            except Exception as error:  # noqa: BLE001 - every stage gets its say before we stop
                self._fail(name, started, error)
                failures.append(_failure_message(name, error))
            finally:
                _remove(group)
        if failures:
            raise StageFailed("\n".join(failures))
        return {name: results[name] for name in jobs}

    def _done(self, name: str) -> dict | None:
        entry = self.stages.get(name, {})
        if entry.get("status") == "done":
            log.info("stage %s: done in an earlier run (%.0f s); skipping", name, entry.get("seconds", 0))
            return entry["outputs"]
        return None

    def _start(self, name: str) -> float:
        entry = self.stages.setdefault(name, {"attempts": 0})
        entry.update(status="running", attempts=entry["attempts"] + 1, error=None)
        self._save()
        log.info("stage %s: starting (attempt %d)", name, entry["attempts"])
        return time.perf_counter()

    def _finish(self, name: str, started: float, outputs: dict) -> dict:
        seconds = time.perf_counter() - started
        self.stages[name].update(status="done", seconds=seconds, outputs=outputs)
        self._save()
        log.info("stage %s: done in %.0f s", name, seconds)
        return outputs

    def _fail(self, name: str, started: float, error: Exception) -> None:
        self.stages[name].update(status="failed", seconds=time.perf_counter() - started, error=str(error)[-2000:])
        self._save()

    def _save(self) -> None:
        partial = self.path.with_suffix(".partial")
        partial.write_text(json.dumps(self.stages, indent=2))
        os.replace(partial, self.path)


def _failure_message(name: str, error: Exception) -> str:
    cause = str(error).strip().splitlines()
    return (
        f"stage {name!r} failed: {type(error).__name__}: {cause[-1] if cause else ''}\n"
        f"  its checkpoints are intact; re-run the recipe to resume it (finished stages are skipped)"
    )


def run_in_placement_group(fn: Callable, arg, resources: dict[str, float], *extra):
    """Run ``fn(arg, *extra)`` as a Ray task inside a placement group of ``resources``; wait for it."""
    import ray

    ref, group = launch_in_placement_group(fn, arg, resources, *extra)
    try:
        return ray.get(ref)
    finally:
        _remove(group)


def launch_in_placement_group(fn: Callable, arg, resources: dict[str, float], *extra):
    """Reserve ``resources`` as one bundle, then start ``fn`` in it; returns ``(ObjectRef, placement group)``."""
    import ray
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    wanted = {key: value for key, value in resources.items() if value > 0}
    task = ray.remote(num_cpus=0, max_retries=0)(_stage_entry)
    if not wanted:
        return task.remote(fn, arg, *extra), None
    check_fits(wanted)
    group = placement_group([wanted], strategy="PACK")
    strategy = PlacementGroupSchedulingStrategy(group, placement_group_capture_child_tasks=True)
    return task.options(scheduling_strategy=strategy).remote(fn, arg, *extra), group


def check_fits(wanted: dict[str, float]) -> None:
    """Fail now, not hang, when no node of the cluster could ever hold the bundle."""
    import ray

    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    if not any(all(node.get(key, 0) >= value for key, value in wanted.items()) for node in nodes):
        offered = [{key: node.get(key, 0) for key in wanted} for node in nodes]
        raise StageFailed(f"a stage needs {wanted} on one node; the cluster's nodes offer {offered}")


def _stage_entry(fn: Callable, arg, *extra):
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    return fn(arg, *extra)


def _remove(group) -> None:
    if group is not None:
        from ray.util.placement_group import remove_placement_group

        remove_placement_group(group)
