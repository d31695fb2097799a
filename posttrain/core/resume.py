"""Resuming a run where it stopped, and the step loop the GRPO and distillation drivers share.

A run directory holds whole checkpoints only (``PolicyTrainer.save`` renames one into
place when complete). Re-running a recipe into the same directory continues from the
newest one: the trainer gets its weights, optimizer and RNG state back, the engine
gets the trainer's weights, the logs forget the steps after it, and the loop goes on
from that step. A step's prompts are a pure function of (seed, step), so the data
stream continues exactly; what is lost is at most the steps since that checkpoint.
A finished run re-run does no training and reuses its saved evals.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import ray
from rich.progress import Progress

from .rundir import RunDir

log = logging.getLogger("posttrain")


def resume_point(run: RunDir, trainer, sync_engine: Callable[[], None], enabled: bool = True) -> int:
    """Load the newest complete checkpoint into ``trainer``, then ``sync_engine()`` (every weight, streamed);
    the step to go on from (0: fresh)."""
    latest = run.latest_checkpoint() if enabled else None
    if latest is None:
        if run.has_logs():  # killed before its first checkpoint: step 0 is redone, so its old rows go
            run.rewind(0)
        return 0
    step, path = latest
    ray.get(trainer.load.remote(str(path)))
    sync_engine()
    run.rewind(step)
    log.info("resumed from %s: continuing at step %d", path, step)
    return step


def run_steps(
    title: str,
    run: RunDir,
    start: int,
    total: int,
    step_fn: Callable[[int], dict[str, float]],
    step_line: Callable[[int, dict], str],
    checkpoint_every: int,
    save: Callable[[int], str],
) -> None:
    """Steps ``start .. total-1``: each logged (metrics.jsonl, TensorBoard, a log line), checkpointed on schedule.

    The log line reads ``GRPO step i/N (eta 3m20s): <the loop's step line>``, ``i`` the steps done.
    """
    began = time.perf_counter()
    with Progress() as progress:
        bar = progress.add_task(title, total=total, completed=start)
        for step in range(start, total):
            metrics = step_fn(step)
            run.log_metrics(step, metrics)
            eta = (time.perf_counter() - began) / (step + 1 - start) * (total - step - 1)
            log.info("%s step %d/%d (eta %s): %s", title, step + 1, total, format_duration(eta), step_line(step, metrics))
            if checkpoint_every and (step + 1) % checkpoint_every == 0:
                save(step + 1)
            progress.advance(bar)


def format_duration(seconds: float) -> str:
    """``45s``, ``3m20s``, ``2h05m``: an ETA for a log line."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def final_checkpoint(run: RunDir, total: int, save: Callable[[int], str]) -> str:
    path = run.checkpoint_dir(total)
    return str(path) if (path / "trainer_state.pt").exists() else save(total)


def eval_once(run: RunDir, tag: str, reuse: bool, evaluate: Callable[[], dict]) -> dict:
    """``evaluate()``, unless ``reuse`` and the run directory already holds this eval."""
    saved = run.load_eval(tag) if reuse else None
    if saved is not None:
        log.info("eval[%s]: reusing %s", tag, run.path / "eval" / f"{tag}.json")
        return saved
    return evaluate()
