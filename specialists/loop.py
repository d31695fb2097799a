"""The GRPO loop for a specialist: one driver, a vLLM engine actor, a trainer actor.

Each step reads as the algorithm, phases named and timed::

    generate (vLLM) -> reward (worker pool) -> length shaping + advantages ->
    log-probs (only if needed) -> update (trainer actor) -> weight_sync
    (trainer -> engine, streamed in buckets, in place)

``grpo.max_staleness = k > 0``: step ``s + k`` is sampled while step ``s`` trains
(``posttrain/core/overlap.py``); the rollout correction (TIS / MIS against the
engine's log-probs at sampling time) reweights the stale samples, and
``async/staleness`` is logged per step. ``k = 0`` is the synchronous loop.

Effort modes: each step's prompts are spread over the task's modes
(``modes.assign_modes``); a prompt's G samples share its mode, so a group
compares like with like. Thinking modes are budget-forced by the engine; the
reward scores the answer (the text after the close tag); length shaping uses
each sample's own mode; metrics are also logged per mode (``mode/<name>/...``).

Left out on purpose: a value model (GRPO needs none), multiple epochs per
batch (``minibatches > 1`` covers off-policy steps), and dynamic sampling of
zero-variance groups (they simply get zero advantage).
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass

import ray
import torch

from posttrain.core.driver import Actors, phase_line, run_loop, start_actors
from posttrain.core.evaluation import budget_sweep, evaluate_suites
from posttrain.core.modes import assign_modes, eval_mode_names, sampling_spec, sweep_mode_name
from posttrain.core.overlap import RolloutsAhead
from posttrain.core.plots import plot_budget_sweeps
from posttrain.core.policy import Sequences
from posttrain.core.rundir import RunDir
from posttrain.core.schema import Recipe
from posttrain.core.tasks import Task, make_task
from posttrain.core.timing import PhaseTimer
from rewards import score_batch, warm_pool
from rollout.engine import sampling_seed

from .grpo import GrpoLoss, LossNormalizer, group_advantages, merge_metrics, mismatch_metrics
from .shaping import length_penalties_B, mode_metrics

log = logging.getLogger("posttrain.grpo")


def train_specialist(recipe: Recipe, model_path: str, run: RunDir) -> dict:
    """Run GRPO per ``recipe``; returns ``{"before": eval, "after": eval, "checkpoint": path}``."""
    task = make_task(recipe.task, seed=recipe.run.seed)
    warm_pool()  # the reward workers' imports, while the engine starts
    actors = start_actors(recipe, model_path)
    return run_loop(GrpoLoop(recipe, actors, task, run), recipe, run, actors)


@dataclass
class GrpoLoop:
    """What GRPO brings to the shared driver (``posttrain.core.driver.run_loop``): its step and its eval."""

    recipe: Recipe
    actors: Actors
    task: Task
    run: RunDir
    name = "GRPO"
    _ahead: RolloutsAhead | None = None  # rollouts sampled ahead (grpo.max_staleness), made at the first step

    @property
    def steps(self) -> int:
        return self.recipe.grpo.steps

    @property
    def checkpoint_every(self) -> int:
        return self.recipe.grpo.checkpoint_every

    def step(self, step: int) -> dict[str, float]:
        """``eval.every``: the eval of the weights after ``step`` updates opens step ``step``
        (the engine holds them; trackers see it at that step, as ``before`` at 0 and ``after`` at the end)."""
        extra = {}
        if eval_due(self.recipe, step):
            started = time.perf_counter()
            specialist_eval(self.recipe, self.actors, self.task, self.run, f"step_{step}", step)
            extra["time/eval"] = time.perf_counter() - started
        if self._ahead is None:
            produce = functools.partial(produce_rollout, self.recipe, self.actors, self.task)
            self._ahead = RolloutsAhead(produce, self.recipe.grpo.max_staleness, self.steps)
        metrics = grpo_step(self.recipe, self.actors, self.task, self.run, step, self._ahead)
        if step == self.steps - 1:
            self._ahead.close()
        return metrics | extra

    def step_line(self, step: int, m: dict[str, float]) -> str:
        return (
            f"reward {m['reward/mean']:.3f}±{m['reward/std']:.3f} len {m['response/length_mean']:.0f} "
            f"trunc {m['response/truncated_share']:.0%} loss {m['loss/policy']:.4f} | {phase_line(m)} | "
            f"peak {m['memory/trainer_peak_gib']:.1f} GiB"
        )

    def evaluate(self, tag: str, before: dict | None = None) -> dict:
        return specialist_eval(self.recipe, self.actors, self.task, self.run, tag, 0 if tag == "before" else self.steps)


def specialist_eval(recipe: Recipe, actors: Actors, task: Task, run: RunDir, tag: str, step: int | None = None) -> dict:
    """The task's held-out suites in every eval mode (and the budget sweep), saved under ``tag``;
    with ``step``, its scalars and a few outputs also go to the trackers at that step."""
    suites = task.heldout_suites(recipe.eval.suites, recipe.eval.num_problems)
    modes = {name: eval_mode(recipe, name) for name in eval_mode_names(recipe)}
    outputs: list[dict] = []
    report = evaluate_suites(actors.engine, actors.tokenizer, task, suites, modes, recipe.thinking_tags,
                             pass_k=recipe.eval.pass_k, temperature=recipe.eval.temperature, outputs=outputs)
    run.save_eval(tag, report)
    run.save_eval_outputs(tag, outputs)
    if step is not None:
        run.log_eval(step, tag, report, outputs)
    for name, suite in report.items():
        passk = {k: v for k, v in suite.items() if k.startswith("pass@")}
        log.info(
            "eval[%s] %s: accuracy %.3f %s over %d problems, thinking %.1f + answer %.1f tokens",
            tag, name, suite["accuracy"], passk, suite["problems"], suite["mean_thinking_tokens"],
            suite["mean_answer_tokens"],
        )
    if recipe.eval.budget_sweep:
        name = sweep_mode_name(recipe)
        sweep = budget_sweep(actors.engine, actors.tokenizer, [(task, suites)], recipe.modes[name],
                             recipe.eval.budget_sweep, recipe.thinking_tags)
        run.save_eval(f"{tag}_budget_sweep", {"mode": name, **sweep})
        plot_budget_sweeps(sorted((run.path / "eval").glob("*_budget_sweep.json")), run.path / "eval" / "budget_sweep.png")
    return report


def eval_mode(recipe: Recipe, name: str):
    """``eval.max_tokens`` overrides the allowance of non-thinking modes (the pre-modes behaviour)."""
    mode = recipe.modes[name]
    if recipe.eval.max_tokens and not mode.thinking:
        return mode.model_copy(update={"max_tokens": recipe.eval.max_tokens})
    return mode


@dataclass
class StepRollout:
    """What one step sampled: its problems, their modes and prompts, and the engine's completions."""

    problems: list
    mode_names: list[str]
    prompts: list[list[int]]
    result: object  # GenerateResult
    seconds: float  # the rollout's own time (with overlap it runs during the previous update)


def produce_rollout(recipe: Recipe, actors: Actors, task: Task, step: int) -> StepRollout:
    """Step ``step``'s prompts (a pure function of ``(seed, step)``), sampled on the engine."""
    start, cfg = time.perf_counter(), recipe.grpo
    problems = task.sample(step, cfg.prompts_per_step)
    mode_names = assign_modes(recipe.task.modes, cfg.prompts_per_step, recipe.run.seed, step)
    modes = [recipe.modes[name] for name in mode_names]
    prompts = [task.prompt_ids(actors.tokenizer, p, mode=m, tags=recipe.thinking_tags) for p, m in zip(problems, modes)]
    specs = [sampling_spec(m, recipe.thinking_tags, cfg.samples_per_prompt, cfg.temperature, cfg.top_p) for m in modes]
    ray.get(actors.engine.reseed.remote(sampling_seed(recipe.run.seed, step)))  # a resumed step samples the same
    result = task.rollout(actors.engine, actors.tokenizer, problems, prompts, specs)
    return StepRollout(problems, mode_names, prompts, result, time.perf_counter() - start)


def grpo_step(recipe: Recipe, actors: Actors, task: Task, run: RunDir, step: int, ahead: RolloutsAhead) -> dict[str, float]:
    """One GRPO step; its rollout comes from ``ahead`` (sampled now, or during the previous update)."""
    cfg, timer = recipe.grpo, PhaseTimer()
    with timer.phase("generate"):
        taken = ahead.take(step)
    sampled = taken.rollout
    problems, mode_names, prompts, rollout = sampled.problems, sampled.mode_names, sampled.prompts, sampled.result
    modes = [recipe.modes[name] for name in mode_names]
    completions = rollout.completions  # prompt-major: G samples of prompt 0, then prompt 1, ...
    with timer.phase("reward"):
        samples = [task.reward_sample(problems[c.prompt_index], c) for c in completions]
        scored = score_batch(task.rewards, samples)
    ahead.ahead(step)  # with max_staleness > 0 the engine samples later steps during this update
    scores_B = torch.tensor(scored.scores, dtype=torch.float32)
    lengths_B = torch.tensor([len(c.token_ids) for c in completions], dtype=torch.float32)
    penalties_B = length_penalties_B(lengths_B, [modes[c.prompt_index] for c in completions])
    rewards_P_G = (scores_B + penalties_B).view(cfg.prompts_per_step, cfg.samples_per_prompt)
    advantages_B = group_advantages(rewards_P_G, normalize_std=cfg.advantage == "grpo").flatten()
    seqs = Sequences(
        [prompts[c.prompt_index] for c in completions],
        [c.token_ids for c in completions],
        [c.loss_mask or [1] * len(c.token_ids) for c in completions],
        temperature=cfg.temperature,  # log-probs of the distribution that sampled
    )
    extras: dict[str, list] = {"advantages": advantages_B.tolist(), "rollout_logprobs": [c.logprobs for c in completions]}
    with timer.phase("logprobs"):
        if cfg.minibatches > 1:
            extras["old_logprobs"] = ray.get(actors.trainer.logprobs.remote(seqs))
        if cfg.kl_coef > 0:
            extras["ref_logprobs"] = ray.get(actors.trainer.logprobs.remote(seqs, reference=True))
    with timer.phase("update"):
        max_tokens = max(recipe.modes[name].max_tokens for name in recipe.task.modes)
        update = _update(actors, cfg, seqs, extras, max_tokens)
    if cfg.max_staleness:
        with timer.phase("wait_rollout"):
            ahead.before_sync()
    with timer.phase("weight_sync"):
        actors.sync_weights(recipe.model.engine_dtype)
    ahead.synced()
    sample_modes = [mode_names[c.prompt_index] for c in completions]
    run.log_samples(step, _sample_rows(samples, scores_B + penalties_B, completions, sample_modes, cfg))
    metrics = _step_metrics(rollout, scored, rewards_P_G, update, timer, actors, cfg)
    metrics["optim/lr"] = recipe.trainer.lr  # constant: the trainer has no schedule
    warn_without_signal(step, rewards_P_G)
    if metrics["response/truncated_share"] > cfg.truncation_warn:
        log.warning("step %d: %.0f%% of samples hit their mode's max_tokens and were truncated; raise it or shape "
                    "length", step, 100 * metrics["response/truncated_share"])
    if cfg.max_staleness:
        metrics |= {"async/staleness": float(taken.staleness), "async/rollout_seconds": sampled.seconds}
    return metrics | mode_metrics(sample_modes, completions, scores_B, penalties_B)


def eval_due(recipe: Recipe, step: int) -> bool:
    """``eval.every``: whether an eval of the weights after ``step`` updates opens step ``step`` (never at 0:
    that is ``before``)."""
    every = recipe.eval.every
    return bool(every) and step > 0 and step % every == 0


def zero_variance_share(rewards_P_G: torch.Tensor) -> float:
    """The share of groups whose G samples all got the same reward: zero advantage, no gradient."""
    spread_P = rewards_P_G.max(dim=1).values - rewards_P_G.min(dim=1).values
    return float((spread_P == 0).float().mean())


def warn_without_signal(step: int, rewards_P_G: torch.Tensor) -> None:
    """One warning for a step with no learning signal at all (every group zero-variance)."""
    if zero_variance_share(rewards_P_G) == 1.0:
        log.warning(
            "step %d: all %d groups have zero reward variance (every sample of a prompt scored %s): "
            "no learning signal this step; if this persists, the prompts are too easy or too hard "
            "for the model, or the reward cannot tell samples apart",
            step, rewards_P_G.shape[0], "the same" if rewards_P_G.unique().numel() > 1 else f"{float(rewards_P_G[0, 0]):g}",
        )


def _update(actors: Actors, cfg, seqs: Sequences, extras: dict, max_tokens: int) -> dict[str, float]:
    """``cfg.minibatches`` optimizer steps over the batch, each normalised over its own minibatch.

    Only trained tokens count (a forced close tag is masked out); ``max_tokens`` is
    Dr.GRPO's constant normaliser, the largest allowance among the training modes.
    """
    size = len(seqs) // cfg.minibatches
    totals: dict[str, float] = {}
    for start in range(0, len(seqs), size):
        indices = list(range(start, start + size))
        part = seqs.select(indices)
        norm = LossNormalizer(cfg.loss_agg, sum(map(sum, part.completion_mask)), len(part), max_tokens)
        loss = GrpoLoss(norm, cfg.clip_low, cfg.clip_high, cfg.kl_coef, cfg.rollout_correction, cfg.correction_cap)
        part_extras = {key: [values[i] for i in indices] for key, values in extras.items()}
        merge_metrics(totals, ray.get(actors.trainer.update.remote(part, loss, part_extras)))
    for key in ("loss", "grad_norm"):  # per-step means; the other entries are counts
        totals[key] /= cfg.minibatches
    totals["tokens"] = sum(map(sum, seqs.completion_mask))
    return totals


def _step_metrics(rollout, scored, rewards_P_G, update, timer, actors, cfg) -> dict[str, float]:
    lengths = torch.tensor([len(c.token_ids) for c in rollout.completions], dtype=torch.float32)
    truncated = sum(c.truncated for c in rollout.completions) / len(rollout.completions)
    metrics = {
        "reward/mean": float(rewards_P_G.mean()),  # task reward + length shaping: what advantages see
        "reward/task_mean": sum(scored.scores) / len(scored.scores),
        "reward/std": float(rewards_P_G.std()),
        "reward/solved_groups": float((rewards_P_G.max(dim=1).values > 0).float().mean()),
        "reward/zero_variance_groups": zero_variance_share(rewards_P_G),
        "response/length_mean": float(lengths.mean()),
        "response/length_max": float(lengths.max()),
        "response/truncated_share": truncated,
        "rollout/tokens_per_s": rollout.num_tokens / max(rollout.seconds, 1e-9),
        "loss/policy": update["loss"],
        "loss/grad_norm": update["grad_norm"],
        "loss/clipped_token_share": update.get("clipped_tokens", 0.0) / max(update["tokens"], 1),
        "memory/trainer_peak_gib": ray.get(actors.trainer.peak_memory_gib.remote()),
        **{f"reward_failures/{name}": count for name, count in scored.failures.items()},
        **{f"reward_timeouts/{name}": count for name, count in scored.timeouts.items()},
        **{f"reward_failures/{name}/{reason}": count for name, reasons in scored.reasons.items()
           for reason, count in reasons.items()},
        **{f"reward_raw/{name}": sum(values) / len(values) for name, values in scored.per_reward.items() if values},
        **{f"reward/{key}": sum(values) / len(values) for key, values in scored.components.items() if values},
        **rollout.metrics,
        **timer.metrics(),
    }
    metrics |= mismatch_metrics(update, cfg.correction_cap)
    if "kl_sum" in update:
        metrics["loss/kl"] = update["kl_sum"] / max(update["tokens"], 1)
    return metrics


def _sample_rows(samples, rewards_B, completions, mode_names, cfg) -> list[dict]:
    """The first sample of each of the first ``log_samples`` groups, so the log spans modes."""
    picked = range(0, len(samples), cfg.samples_per_prompt)[: cfg.log_samples]
    return [
        {
            "mode": mode_names[i], "prompt": samples[i].prompt, "completion": completions[i].text,
            "reward": float(rewards_B[i]), "thinking_tokens": completions[i].thinking_tokens,
            "forced_close": completions[i].forced_close, "truncated": completions[i].truncated,
        }
        for i in picked
    ]
