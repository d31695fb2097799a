"""The on-policy distillation loop: one driver, a vLLM engine, the student trainer, the teacher pools.

Each step reads as the algorithm, phases named and timed::

    route (prompts across (domain, mode) keys) -> generate (student, vLLM) ->
    teacher_score (TeacherFleet: teachers' hidden states on the student's tokens,
    per micro-batch, on the shards holding its teachers) -> update (trainer: exact
    full-vocabulary loss) -> weight_sync (trainer -> engine)

The teachers' hidden states go from the pools straight to the trainer rank that runs
their micro-batch, one Ray object per micro-batch (``distill/fleet.py``); the driver never
holds them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import ray

from posttrain.core.driver import Actors, phase_line, run_loop, start_actors
from posttrain.core.remote_rows import wait_for_rows
from posttrain.core.rundir import RunDir
from posttrain.core.schema import Recipe
from posttrain.core.timing import PhaseTimer
from rollout.engine import sampling_seed

from .objective import DistillLoss, divergence_from
from .recovery import recovery_eval
from .routing import Router, completion_sequences, teacher_kls
from .fleet import TeacherFleet
from .teachers import resolve_teacher

log = logging.getLogger("posttrain.distill")


def distill_student(recipe: Recipe, student_path: str, run: RunDir) -> dict:
    """Run on-policy distillation per ``recipe.distill``; returns evals, recovery and the checkpoint."""
    cfg = recipe.distill
    teachers = [resolve_teacher(t) for t in cfg.teachers]
    actors = start_actors(recipe, student_path)
    router = Router(recipe, teachers, actors.tokenizer)
    fleet = TeacherFleet(teachers, cfg, recipe.trainer.micro_batch_size, recipe.model.trust_remote_code)
    heads = fleet.heads()
    ray.get(actors.trainer.install.remote(heads))
    log.info("%d teachers over %d keys, %d distinct output heads; %d shard(s) x %d replica(s)", len(teachers),
             len(router.keys), len(heads.heads_V_H), len(fleet.shards), cfg.teacher_replicas)
    loop = DistillLoop(recipe, actors, fleet, router, run)
    return run_loop(loop, recipe, run, actors, extra_actors=fleet.actors)


@dataclass
class DistillLoop:
    """What distillation brings to the shared driver (``posttrain.core.driver.run_loop``): its step and its eval."""

    recipe: Recipe
    actors: Actors
    fleet: TeacherFleet
    router: Router
    run: RunDir
    name = "distill"

    @property
    def steps(self) -> int:
        return self.recipe.distill.steps

    @property
    def checkpoint_every(self) -> int:
        return self.recipe.distill.checkpoint_every

    def step(self, step: int) -> dict[str, float]:
        return distill_step(self.recipe, self.actors, self.fleet, self.router, self.run, step)

    def step_line(self, step: int, m: dict[str, float]) -> str:
        return (
            f"loss {m['distill/loss']:.4f} len {m['response/length_mean']:.0f} "
            f"trunc {m['response/truncated_share']:.0%} | {phase_line(m)} | peak {m['memory/trainer_peak_gib']:.1f} GiB"
        )

    def evaluate(self, tag: str, before: dict | None) -> dict:
        return recovery_eval(self.recipe, self.actors, self.fleet, self.router, self.run, tag, before)


def distill_step(recipe: Recipe, actors: Actors, fleet, router: Router, run: RunDir, step: int) -> dict[str, float]:
    cfg, timer = recipe.distill, PhaseTimer()
    prompts = router.sample(step, cfg.prompts_per_step)
    specs = [router.spec(p.key, cfg.samples_per_prompt, cfg.temperature, cfg.top_p) for p in prompts]
    with timer.phase("generate"):
        ray.get(actors.engine.reseed.remote(sampling_seed(recipe.run.seed, step)))  # a resumed step samples the same
        rollout = router.rollout(actors.engine, prompts, specs)
    completions = rollout.completions
    seqs = completion_sequences([prompts[c.prompt_index].prompt_ids for c in completions], completions)
    keys = [prompts[c.prompt_index].key for c in completions]
    loss = DistillLoss(divergence_from(cfg.divergence, cfg.jsd_beta), sum(map(sum, seqs.completion_mask)), cfg.chunk_size)
    with timer.phase("teacher_score"):
        extras = fleet.score(seqs, router.routing(keys))
        wait_for_rows(extras)
    with timer.phase("update"):
        update = ray.get(actors.trainer.update.remote(seqs, loss, extras))
    with timer.phase("weight_sync"):
        actors.sync_weights(recipe.model.engine_dtype)
    run.log_samples(step, [
        {"key": "/".join(prompts[c.prompt_index].key), "prompt": prompts[c.prompt_index].message, "completion": c.text}
        for c in completions[: cfg.log_samples]
    ])
    return _step_metrics(rollout, update, router, timer, actors) | {"optim/lr": recipe.trainer.lr}  # constant: no schedule


def _step_metrics(rollout, update, router, timer, actors) -> dict[str, float]:
    lengths = [len(c.token_ids) for c in rollout.completions]
    thinking = [c.thinking_tokens for c in rollout.completions]
    metrics = {
        "response/thinking_tokens_mean": sum(thinking) / len(thinking),
        "response/forced_close_share": sum(c.forced_close for c in rollout.completions) / len(lengths),
        "distill/loss": update["loss"],
        "distill/grad_norm": update["grad_norm"],
        "response/length_mean": sum(lengths) / len(lengths),
        "response/truncated_share": sum(c.truncated for c in rollout.completions) / len(lengths),
        "rollout/tokens_per_s": rollout.num_tokens / max(rollout.seconds, 1e-9),
        "memory/trainer_peak_gib": ray.get(actors.trainer.peak_memory_gib.remote()),
        **{f"distill/kl/{name}": value for name, value in teacher_kls(update, router).items()},
        **timer.metrics(),
    }
    return metrics
