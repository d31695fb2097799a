"""The GRPO loop for a specialist: one driver, a vLLM engine actor, a trainer actor.

Each step reads as the algorithm, phases named and timed::

    generate (vLLM) -> reward (Ray tasks) -> advantages -> log-probs (only if
    needed) -> update (trainer actor) -> weight_sync (trainer -> engine, in place)

Left out on purpose: a value model (GRPO needs none), multiple epochs per
batch (``minibatches > 1`` covers off-policy steps), and dynamic sampling of
zero-variance groups (they simply get zero advantage).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import ray
import torch
from rich.progress import Progress

from posttrain.chat import prompt_ids
from posttrain.policy import Sequences, trainer_actor
from posttrain.recipe import Recipe
from posttrain.rundir import RunDir
from posttrain.timing import PhaseTimer
from rewards import Sample, score_batch
from rollout.engine import EngineConfig, SamplingSpec, engine_actor

from .eval import evaluate_math
from .grpo import GrpoLoss, LossNormalizer, group_advantages
from .math_task import MathTask, heldout_problems

log = logging.getLogger("posttrain.grpo")


@dataclass
class Actors:
    engine: ray.actor.ActorHandle
    trainer: ray.actor.ActorHandle
    tokenizer: object


def start_actors(recipe: Recipe, model_path: str) -> Actors:
    from transformers import AutoTokenizer

    engine_cfg = EngineConfig(
        model=model_path,
        dtype=recipe.model.engine_dtype,
        max_model_len=recipe.model.max_model_len,
        seed=recipe.run.seed,
        kv_cache_gib=recipe.engine.kv_cache_gib,
        gpu_memory_utilization=recipe.engine.gpu_memory_utilization,
        tensor_parallel_size=recipe.engine.tensor_parallel_size,
    )
    engine = engine_actor(engine_cfg, num_cpus=recipe.engine.num_cpus, num_gpus=recipe.engine.num_gpus)
    trainer = trainer_actor(model_path, recipe.trainer, seed=recipe.run.seed)
    ray.get([engine.ready.remote(), trainer.peak_memory_gib.remote()])
    return Actors(engine, trainer, AutoTokenizer.from_pretrained(model_path))


def run_eval(recipe: Recipe, actors: Actors, task: MathTask, run: RunDir, tag: str) -> dict:
    sources = recipe.eval.sources or recipe.task.sources
    suites = heldout_problems(sources, recipe.eval.num_problems, recipe.run.seed)
    report = evaluate_math(
        actors.engine,
        actors.tokenizer,
        suites,
        task.user_message,
        max_tokens=recipe.eval.max_tokens or recipe.grpo.max_tokens,
        pass_k=recipe.eval.pass_k,
        temperature=recipe.eval.temperature,
    )
    run.save_eval(tag, report)
    for name, suite in report.items():
        passk = {k: v for k, v in suite.items() if k.startswith("pass@")}
        log.info("eval[%s] %s: accuracy %.3f %s over %d problems", tag, name, suite["accuracy"], passk, suite["problems"])
    return report


def train_specialist(recipe: Recipe, model_path: str, run: RunDir) -> dict:
    """Run GRPO per ``recipe``; returns ``{"before": eval, "after": eval, "checkpoint": path}``."""
    task = MathTask(recipe.task, seed=recipe.run.seed)
    actors = start_actors(recipe, model_path)
    results: dict = {}
    if recipe.eval.before:
        results["before"] = run_eval(recipe, actors, task, run, "before")
    cfg = recipe.grpo
    with Progress() as progress:
        bar = progress.add_task("GRPO", total=cfg.steps)
        for step in range(cfg.steps):
            metrics = grpo_step(recipe, actors, task, run, step)
            run.log_metrics(step, metrics)
            log.info(_step_line(step, metrics))
            if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0:
                ray.get(actors.trainer.save.remote(str(run.checkpoint_dir(step + 1)), model_path))
            progress.advance(bar)
    results["checkpoint"] = ray.get(actors.trainer.save.remote(str(run.checkpoint_dir(cfg.steps)), model_path))
    if recipe.eval.after:
        results["after"] = run_eval(recipe, actors, task, run, "after")
    for actor in (actors.engine, actors.trainer):
        ray.kill(actor)
    return results


def grpo_step(recipe: Recipe, actors: Actors, task: MathTask, run: RunDir, step: int) -> dict[str, float]:
    cfg, timer = recipe.grpo, PhaseTimer()
    problems = task.sample(step, cfg.prompts_per_step)
    prompts = [prompt_ids(actors.tokenizer, task.user_message(p)) for p in problems]
    spec = SamplingSpec(n=cfg.samples_per_prompt, temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens)
    with timer.phase("generate"):
        rollout = ray.get(actors.engine.generate.remote(prompts, spec))
    completions = rollout.completions  # prompt-major: G samples of prompt 0, then prompt 1, ...
    with timer.phase("reward"):
        samples = [Sample(task.user_message(problems[c.prompt_index]), c.text, problems[c.prompt_index].fields) for c in completions]
        scored = score_batch(task.rewards, samples)
    rewards_P_G = torch.tensor(scored.scores).view(cfg.prompts_per_step, cfg.samples_per_prompt)
    advantages_B = group_advantages(rewards_P_G, normalize_std=cfg.advantage == "grpo").flatten()
    seqs = Sequences([prompts[c.prompt_index] for c in completions], [c.token_ids for c in completions])
    extras: dict[str, list] = {"advantages": advantages_B.tolist()}
    with timer.phase("logprobs"):
        if cfg.minibatches > 1:
            extras["old_logprobs"] = ray.get(actors.trainer.logprobs.remote(seqs))
        if cfg.kl_coef > 0:
            extras["ref_logprobs"] = ray.get(actors.trainer.logprobs.remote(seqs, reference=True))
    with timer.phase("update"):
        update = _update(actors, cfg, seqs, extras)
    with timer.phase("weight_sync"):
        ray.get(actors.engine.update_weights.remote(actors.trainer.engine_weights.remote(recipe.model.engine_dtype)))
    run.log_samples(step, _sample_rows(samples, scored.scores, completions, cfg.log_samples))
    return _step_metrics(rollout, scored, rewards_P_G, update, timer, actors, cfg)


def _update(actors: Actors, cfg, seqs: Sequences, extras: dict) -> dict[str, float]:
    """``cfg.minibatches`` optimizer steps over the batch, each normalised over its own minibatch."""
    size = len(seqs) // cfg.minibatches
    totals: dict[str, float] = {}
    for start in range(0, len(seqs), size):
        indices = list(range(start, start + size))
        part = seqs.select(indices)
        norm = LossNormalizer(cfg.loss_agg, sum(map(len, part.completion_ids)), len(part), cfg.max_tokens)
        loss = GrpoLoss(norm, cfg.clip_low, cfg.clip_high, cfg.kl_coef)
        part_extras = {key: [values[i] for i in indices] for key, values in extras.items()}
        for key, value in ray.get(actors.trainer.update.remote(part, loss, part_extras)).items():
            totals[key] = totals.get(key, 0.0) + value
    for key in ("loss", "grad_norm"):  # per-step means; the other entries are counts
        totals[key] /= cfg.minibatches
    totals["tokens"] = sum(map(len, seqs.completion_ids))
    return totals


def _step_metrics(rollout, scored, rewards_P_G, update, timer, actors, cfg) -> dict[str, float]:
    lengths = torch.tensor([len(c.token_ids) for c in rollout.completions], dtype=torch.float32)
    truncated = sum(c.truncated for c in rollout.completions) / len(rollout.completions)
    if truncated > cfg.truncation_warn:
        log.warning(
            "%.0f%% of samples hit grpo.max_tokens=%d and were truncated; raise it or shape length",
            100 * truncated, cfg.max_tokens,
        )
    metrics = {
        "reward/mean": float(rewards_P_G.mean()),
        "reward/std": float(rewards_P_G.std()),
        "reward/solved_groups": float((rewards_P_G.max(dim=1).values > 0).float().mean()),
        "response/length_mean": float(lengths.mean()),
        "response/length_max": float(lengths.max()),
        "response/truncated_share": truncated,
        "rollout/tokens_per_s": rollout.num_tokens / max(rollout.seconds, 1e-9),
        "loss/policy": update["loss"],
        "loss/grad_norm": update["grad_norm"],
        "loss/clipped_token_share": update.get("clipped_tokens", 0.0) / max(update["tokens"], 1),
        "memory/trainer_peak_gib": ray.get(actors.trainer.peak_memory_gib.remote()),
        **{f"reward_failures/{name}": count for name, count in scored.failures.items()},
        **timer.metrics(),
    }
    if "kl_sum" in update:
        metrics["loss/kl"] = update["kl_sum"] / max(update["tokens"], 1)
    return metrics


def _sample_rows(samples, scores, completions, limit: int) -> list[dict]:
    return [
        {"prompt": s.prompt, "completion": s.completion, "reward": r, "truncated": c.truncated}
        for s, r, c in list(zip(samples, scores, completions))[:limit]
    ]


def _step_line(step: int, m: dict[str, float]) -> str:
    phases = " ".join(f"{k[5:]}={v:.1f}s" for k, v in m.items() if k.startswith("time/"))
    return (
        f"step {step}: reward {m['reward/mean']:.3f}±{m['reward/std']:.3f} len {m['response/length_mean']:.0f} "
        f"trunc {m['response/truncated_share']:.0%} loss {m['loss/policy']:.4f} | {phases} | "
        f"peak {m['memory/trainer_peak_gib']:.1f} GiB"
    )
