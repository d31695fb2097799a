"""The one driver every training loop (SFT, GRPO, distillation) runs on.

A loop brings only what differs -- its step and its eval -- as a ``Loop``;
the driver owns the skeleton they share::

    start actors (engine + trainer, from the recipe)
      -> resume (newest complete checkpoint: trainer state, engine weights, logs rewound)
      -> eval "before" (once; reused on resume)
      -> steps (timed, logged, checkpointed every N)
      -> final checkpoint -> eval "after" -> stop actors

It must not know any algorithm: no rewards, advantages or teachers here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import ray

from rollout.engine import EngineConfig, engine_actor
from rollout.engine_pool import EnginePool, engine_handles, stop_engines

from .group import start_trainer, stop_trainer
from .models import load_tokenizer
from .placement import check_cluster
from .resume import eval_once, final_checkpoint, resume_point, run_steps
from .rundir import RunDir
from .schema import Recipe

log = logging.getLogger("posttrain.driver")


@dataclass
class Actors:
    """The student's engine (vLLM) and trainer actors, and its tokenizer (on the driver). ``engine`` is the
    engine actor, or with ``engine.replicas > 1`` an ``EnginePool`` taking the same calls."""

    engine: ray.actor.ActorHandle | EnginePool
    trainer: ray.actor.ActorHandle
    tokenizer: object
    same_node: bool = True  # every engine shares /dev/shm with the trainer

    def sync_weights(self, dtype: str, full: bool = False) -> None:
        """Trainer -> engine(s), streamed in buckets (``posttrain/core/weights.py``; with LoRA only what
        changed, unless ``full``), each loaded in place by every replica as it arrives. On one node the buckets
        are written into shared memory; when an engine is on another node each bucket travels as its own Ray
        object. Either way no process holds more than one bucket beyond the model."""
        buckets = self.trainer.weight_buckets.options(num_returns="streaming").remote(dtype, full, self.same_node)
        ray.get([self.engine.load_weight_bucket.remote(bucket) for bucket in buckets])
        ray.get(self.engine.weights_loaded.remote())


def engine_config(recipe: Recipe, model_path: str) -> EngineConfig:
    """The vLLM engine a recipe asks for, serving ``model_path``."""
    return EngineConfig(
        model=model_path,
        dtype=recipe.model.engine_dtype,
        max_model_len=recipe.model.max_model_len,
        seed=recipe.run.seed,
        kv_cache_gib=recipe.engine.kv_cache_gib,
        gpu_memory_utilization=recipe.engine.gpu_memory_utilization,
        tensor_parallel_size=recipe.engine.tensor_parallel_size,
        budget_forcing=recipe.engine.budget_forcing,
        think_open=recipe.thinking_tags.open,
        think_close=recipe.thinking_tags.close,
        trust_remote_code=recipe.model.trust_remote_code,
    )


def launch_engines(recipe: Recipe, model_path: str):
    """``engine.replicas`` engine actors on ``model_path``: the actor itself for one, else an ``EnginePool``."""
    config = engine_config(recipe, model_path)
    cfg = recipe.engine
    replicas = [engine_actor(config, num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus) for _ in range(cfg.replicas)]
    if len(replicas) > 1:
        log.info("%d engine replicas (tensor parallel %d each)", len(replicas), cfg.tensor_parallel_size)
    return replicas[0] if len(replicas) == 1 else EnginePool(replicas)


def start_engine(recipe: Recipe, model_path: str):
    """The engine(s) on ``model_path`` (e.g. a checkpoint to evaluate), waited for until ready; ``stop_engines``."""
    engine = launch_engines(recipe, model_path)
    ray.get(engine.ready.remote())
    return engine


def start_actors(recipe: Recipe, model_path: str) -> Actors:
    """The engine(s) and the trainer (one actor, or rank 0 of a group of ``trainer.world_size``), ready."""
    check_cluster(recipe, [node["Resources"] for node in ray.nodes() if node.get("Alive")])
    engine = launch_engines(recipe, model_path)
    trainer = start_trainer(model_path, recipe.trainer, seed=recipe.run.seed, trust_remote_code=recipe.model.trust_remote_code)
    *engine_nodes, trainer_node = ray.get([*(e.node_id.remote() for e in engine_handles(engine)), trainer.node_id.remote()])
    same_node = all(node == trainer_node for node in engine_nodes)
    return Actors(engine, trainer, load_tokenizer(model_path, recipe.model), same_node=same_node)


class Loop(Protocol):
    """What a training loop gives the driver: its name, length, step and eval."""

    name: str  # "GRPO", "SFT", "distill": in log lines
    steps: int
    checkpoint_every: int

    def step(self, step: int) -> dict[str, float]:
        """One optimizer step (weights pushed to the engine included); its metrics."""

    def step_line(self, step: int, metrics: dict[str, float]) -> str:
        """The one log line of a step."""

    def evaluate(self, tag: str, before: dict | None) -> dict:
        """Held-out eval, saved under ``tag`` ("before"/"after"); ``before`` is the earlier report, if any."""


def run_loop(loop: Loop, recipe: Recipe, run: RunDir, actors: Actors, extra_actors=()) -> dict:
    """Resume, eval before, steps, final checkpoint, eval after; ``{"before", "after", "checkpoint"}``.

    The actors (``extra_actors`` too, e.g. a teacher pool) are stopped at the end, whatever happens.
    """
    try:
        sync_all = lambda: actors.sync_weights(recipe.model.engine_dtype, full=True)  # noqa: E731
        start = resume_point(run, actors.trainer, sync_all, recipe.run.resume)
        results: dict = {}
        if recipe.eval.before:
            results["before"] = eval_once(run, "before", start > 0, lambda: loop.evaluate("before", None))
        save = _saver(actors, run)
        run_steps(loop.name, run, start, loop.steps, loop.step, loop.step_line, loop.checkpoint_every, save)
        results["checkpoint"] = final_checkpoint(run, loop.steps, save)
        if recipe.eval.after:
            evaluate = lambda: loop.evaluate("after", results.get("before"))  # noqa: E731
            results["after"] = eval_once(run, "after", start == loop.steps, evaluate)
        return results
    finally:
        stop_engines(actors.engine)
        for actor in extra_actors:
            ray.kill(actor)
        stop_trainer(actors.trainer)


def _saver(actors: Actors, run: RunDir) -> Callable[[int], str]:
    return lambda step: ray.get(actors.trainer.save.remote(str(run.checkpoint_dir(step)), actors.tokenizer))


def phase_line(metrics: dict[str, float]) -> str:
    """``generate=1.2s reward=0.3s ...``: the timed phases of a step, for its log line."""
    return " ".join(f"{key[5:]}={value:.1f}s" for key, value in metrics.items() if key.startswith("time/"))
