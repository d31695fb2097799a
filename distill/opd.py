"""The on-policy distillation loop: one driver, a vLLM engine, the student trainer, the teacher pool.

Each step reads as the algorithm, phases named and timed::

    route (prompts across (domain, mode) keys) -> generate (student, vLLM) ->
    teacher_score (TeacherPool: teachers' hidden states on the student's tokens,
    grouped by teacher) -> update (trainer: exact full-vocabulary loss) ->
    weight_sync (trainer -> engine)

The teachers' hidden states go from the pool straight into the trainer's update
as a Ray object; the driver never holds them.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from functools import partial

import ray

from posttrain.chat import prompt_ids
from posttrain.modes import sampling_spec
from posttrain.policy import Sequences
from posttrain.recipe import Recipe
from posttrain.resume import eval_once, final_checkpoint, resume_point, run_steps
from posttrain.rundir import RunDir
from posttrain.timing import PhaseTimer
from specialists.loop import start_actors
from rollout.engine import GenerateResult, sampling_seed
from specialists.task import Problem, Task, make_task

from .objective import DistillLoss, divergence_from
from .teachers import Teacher, resolve_teacher, teacher_pool_actor

log = logging.getLogger("posttrain.distill")


@dataclass
class RoutedPrompt:
    """A prompt and the (domain, mode) key that picks its teachers."""

    key: tuple[str, str]
    problem: Problem
    message: str
    prompt_ids: list[int]
    suite: str = ""  # the held-out suite an eval prompt belongs to (its scorer); "" for training


class Router:
    """Teachers by key, and the prompts of each step drawn uniformly across keys."""

    def __init__(self, recipe: Recipe, teachers: list[Teacher], tokenizer):
        cfg = recipe.distill
        self.teachers, self.tokenizer, self.seed = teachers, tokenizer, recipe.run.seed
        self.modes, self.tags = recipe.modes, recipe.thinking_tags
        self.by_key: dict[tuple[str, str], list[tuple[int, float]]] = {}
        for index, teacher in enumerate(teachers):
            self.by_key.setdefault(teacher.key, []).append((index, teacher.weight))
        self.keys = sorted(self.by_key)
        shared = {t.name for t in teachers if len(self.by_key[t.key]) > 1}
        self.names = [f"{t.name}#{i}" if t.name in shared else t.name for i, t in enumerate(teachers)]
        self.tasks = {domain: make_task(cfg.domains[domain], seed=recipe.run.seed) for domain, _ in self.keys}

    def format(self, key: tuple[str, str], problem: Problem, suite: str = "") -> RoutedPrompt:
        task = self.tasks[key[0]]
        message, system = task.user_message(problem), task.system_prompt(problem)
        ids = prompt_ids(self.tokenizer, message, system=system, mode=self.modes[key[1]], tags=self.tags)
        return RoutedPrompt(key, problem, message, ids, suite)

    def rollout(self, engine, prompts: list[RoutedPrompt], specs: list) -> GenerateResult:
        """Student samples for ``prompts``: single-turn domains in one engine call, multi-turn ones by their task."""
        groups: dict[str, list[int]] = {}  # multi-turn domain (or "": every single-turn one) -> prompt indices
        for index, prompt in enumerate(prompts):
            multi_turn = type(self.tasks[prompt.key[0]]).rollout is not Task.rollout
            groups.setdefault(prompt.key[0] if multi_turn else "", []).append(index)
        completions, seconds = [], 0.0
        for domain, indices in groups.items():
            # single-turn prompts of every domain share one engine call: the base rollout, no task's own
            rollout = self.tasks[domain].rollout if domain else partial(Task.rollout, None)
            result = rollout(
                engine, self.tokenizer, [prompts[i].problem for i in indices],
                [prompts[i].prompt_ids for i in indices], [specs[i] for i in indices],
            )
            for completion in result.completions:
                completion.prompt_index = indices[completion.prompt_index]
            completions += result.completions
            seconds += result.seconds
        completions.sort(key=lambda c: c.prompt_index)  # stable: a prompt's samples keep their order
        return GenerateResult(completions, seconds)

    def spec(self, key: tuple[str, str], n: int = 1, temperature: float = 1.0, top_p: float = 1.0):
        """How the student samples ``key``'s prompts: its mode's budget forcing and token allowance."""
        return sampling_spec(self.modes[key[1]], self.tags, n=n, temperature=temperature, top_p=top_p)

    def sample(self, step: int, count: int) -> list[RoutedPrompt]:
        """The prompts of step ``step``: a pure function of (seed, step), so a resumed run repeats it."""
        rng = random.Random(self.seed * 7_919 + step)
        counts = {key: 0 for key in self.keys}
        for key in rng.choices(self.keys, k=count):
            counts[key] += 1
        prompts = []
        for index, (key, n) in enumerate(counts.items()):
            if n:
                problems = self.tasks[key[0]].sample(step * len(self.keys) + index, n)
                prompts += [self.format(key, problem) for problem in problems]
        return prompts

    def routing(self, keys: list[tuple[str, str]]) -> list[list[tuple[int, float]]]:
        return [self.by_key[key] for key in keys]


def distill_student(recipe: Recipe, student_path: str, run: RunDir) -> dict:
    """Run on-policy distillation per ``recipe.distill``; returns evals, recovery and the checkpoint."""
    from .recovery import recovery_eval

    cfg = recipe.distill
    teachers = [resolve_teacher(t) for t in cfg.teachers]
    actors = start_actors(recipe, student_path)
    router = Router(recipe, teachers, actors.tokenizer)
    pool = teacher_pool_actor(teachers, cfg.teacher_num_cpus, cfg.teacher_num_gpus, recipe.trainer.micro_batch_size)
    head_index, heads = ray.get(pool.heads.remote())
    ray.get([
        actors.trainer.set_frozen.remote("teacher_heads", heads),
        actors.trainer.set_frozen.remote("teacher_head_index", head_index),
    ])
    log.info("%d teachers over %d keys, %d distinct output heads", len(teachers), len(router.keys), len(heads))
    results: dict = {}
    start = resume_point(run, actors.trainer, actors.engine, recipe.model.engine_dtype, recipe.run.resume)
    if recipe.eval.before:
        evaluate = lambda: recovery_eval(recipe, actors, pool, router, run, "before")  # noqa: E731
        results["before"] = eval_once(run, "before", start > 0, evaluate)
    save = lambda step: ray.get(actors.trainer.save.remote(str(run.checkpoint_dir(step)), student_path))  # noqa: E731
    step_fn = lambda step: distill_step(recipe, actors, pool, router, run, step)  # noqa: E731
    run_steps("distill", run, start, cfg.steps, step_fn, _step_line, cfg.checkpoint_every, save)
    results["checkpoint"] = final_checkpoint(run, cfg.steps, save)
    if recipe.eval.after:
        evaluate = lambda: recovery_eval(recipe, actors, pool, router, run, "after", results.get("before"))  # noqa: E731
        results["after"] = eval_once(run, "after", start == cfg.steps, evaluate)
    for actor in (actors.engine, actors.trainer, pool):
        ray.kill(actor)
    return results


def distill_step(recipe: Recipe, actors, pool, router: Router, run: RunDir, step: int) -> dict[str, float]:
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
        extras = pool.score.remote(seqs, router.routing(keys))
        ray.wait([extras], fetch_local=False)
    with timer.phase("update"):
        update = ray.get(actors.trainer.update.remote(seqs, loss, extras))
    with timer.phase("weight_sync"):
        ray.get(actors.engine.update_weights.remote(actors.trainer.engine_weights.remote(recipe.model.engine_dtype)))
    run.log_samples(step, [
        {"key": "/".join(prompts[c.prompt_index].key), "prompt": prompts[c.prompt_index].message, "completion": c.text}
        for c in completions[: cfg.log_samples]
    ])
    return _step_metrics(rollout, update, router, timer, actors)


def completion_sequences(prompts: list[list[int]], completions) -> Sequences:
    """The student's samples as training sequences; forced close tags (not sampled) are masked out.

    Temperature stays 1 even when the student samples at ``distill.temperature``: the loss is a
    divergence between the student's and the teachers' models (T = 1 distributions over the full
    vocabulary); the sampling temperature only chooses which completions it is measured on.
    """
    masks = [c.loss_mask or [1] * len(c.token_ids) for c in completions]
    return Sequences(prompts, [c.token_ids for c in completions], masks, temperature=1.0)


def teacher_kls(update: dict[str, float], router: Router) -> dict[str, float]:
    """Per-teacher mean per-token divergence, from ``DistillLoss``'s metrics."""
    out = {}
    for index, name in enumerate(router.names):
        tokens = update.get(f"tokens/{index}", 0.0)
        if tokens:
            out[name] = update[f"kl_sum/{index}"] / tokens
    return out


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


def _step_line(step: int, m: dict[str, float]) -> str:
    phases = " ".join(f"{k[5:]}={v:.1f}s" for k, v in m.items() if k.startswith("time/"))
    return (
        f"step {step}: loss {m['distill/loss']:.4f} len {m['response/length_mean']:.0f} "
        f"trunc {m['response/truncated_share']:.0%} | {phases} | peak {m['memory/trainer_peak_gib']:.1f} GiB"
    )
