"""Held-out eval of distillation: the student against each teacher on that teacher's own suite.

For every teacher (domain, mode): the held-out problems of its domain, prompted in
its mode, scored greedily on the vLLM engine by the domain's own scorer, for
- the base (the student before distillation),
- the teacher (its merged weights pushed into the same engine, then the student's back),
- the student after distillation;
and ``recovered = (student - base) / (teacher - base)``: the share of the teacher's
gain the student kept. Also the held-out reverse KL(student || teacher) per token on
the student's own greedy completions, which on-policy distillation drives down.
"""

from __future__ import annotations

import logging

import ray


from .objective import DistillLoss
from .opd import RoutedPrompt, Router, completion_sequences, teacher_kls

log = logging.getLogger("posttrain.distill")
MIN_GAIN = 0.02  # below this teacher gain, "recovered share" is noise and is reported as None


def key_suites(recipe, router: Router) -> dict[tuple[str, str], list[RoutedPrompt]]:
    suites = {}
    for key in router.keys:
        per_suite = router.tasks[key[0]].heldout_suites(recipe.eval.suites, recipe.eval.num_problems)
        suites[key] = [router.format(key, problem, name) for name, problems in per_suite.items() for problem in problems]
    return suites


def score_suites(engine, router: Router, suites: dict) -> tuple[dict, dict]:
    """Greedy accuracy and token use per key, every mode in one batched engine call; and the completions."""
    flat = [(key, prompt) for key, prompts in suites.items() for prompt in prompts]
    specs = [router.spec(key, temperature=0.0) for key, _ in flat]
    result = router.rollout(engine, [prompt for _, prompt in flat], specs)
    completions: dict = {key: [] for key in suites}
    for (key, prompt), completion in zip(flat, result.completions):
        completions[key].append((prompt, completion))
    scores = {}
    for key, rows in completions.items():
        count = max(len(rows), 1)
        correct = 0.0
        for suite in dict.fromkeys(p.suite for p, _ in rows):
            picked = [(p, c) for p, c in rows if p.suite == suite]
            task = router.tasks[key[0]]
            correct += sum(task.score_suite(suite, [p.problem for p, _ in picked], [c for _, c in picked])["score"])
        scores[key] = {
            "accuracy": correct / count,
            "mean_thinking_tokens": sum(c.thinking_tokens for _, c in rows) / count,
            "mean_answer_tokens": sum(c.answer_tokens for _, c in rows) / count,
            "problems": len(rows),
        }
    return scores, completions


def heldout_kl(actors, pool, router: Router, completions: dict) -> dict[str, float]:
    """Per-teacher mean per-token KL(student || teacher) on the student's greedy completions."""
    pairs = [(key, prompt, c) for key, rows in completions.items() for prompt, c in rows if c.token_ids]
    seqs = completion_sequences([prompt.prompt_ids for _, prompt, _ in pairs], [c for _, _, c in pairs])
    extras = pool.score.remote(seqs, router.routing([key for key, _, _ in pairs]))
    loss = DistillLoss("reverse_kl", sum(map(sum, seqs.completion_mask)))
    return teacher_kls(ray.get(actors.trainer.evaluate.remote(seqs, loss, extras)), router)


def teacher_scores(actors, pool, router: Router, suites: dict, dtype: str) -> dict[str, dict]:
    """Each teacher on its own key's suite, on the student's engine; the student's weights go back after."""
    scores = {}
    for index, teacher in enumerate(router.teachers):
        ray.get(actors.engine.update_weights.remote(pool.engine_weights.remote(index, dtype)))
        accuracy, _ = score_suites(actors.engine, router, {teacher.key: suites[teacher.key]})
        scores[router.names[index]] = {"key": "/".join(teacher.key), **accuracy[teacher.key]}
    ray.get(actors.engine.update_weights.remote(actors.trainer.engine_weights.remote(dtype)))
    return scores


def recovery_eval(recipe, actors, pool, router: Router, run, tag: str, before: dict | None = None) -> dict:
    """Student scores and held-out KL per teacher; teacher scores once (``before``); recovery after."""
    suites = key_suites(recipe, router)
    student, completions = score_suites(actors.engine, router, suites)
    report = {
        "student": {"/".join(key): value for key, value in student.items()},
        "kl": heldout_kl(actors, pool, router, completions),
        "examples": {"/".join(key): [c.text for _, c in rows[:2]] for key, rows in completions.items()},
    }
    if before is None:
        report["teachers"] = teacher_scores(actors, pool, router, suites, recipe.model.engine_dtype)
    else:
        report["teachers"] = before["teachers"]
        report["recovery"] = recovery_table(before, report, router)
    run.save_eval(tag, report)
    _log_report(tag, report)
    return report


def recovery_table(before: dict, after: dict, router: Router) -> dict[str, dict]:
    table = {}
    for teacher, name in zip(router.teachers, router.names):
        key = "/".join(teacher.key)
        base, student = before["student"][key]["accuracy"], after["student"][key]["accuracy"]
        score = after["teachers"][name]["accuracy"]
        gain = score - base
        table[name] = {
            "base": base,
            "teacher": score,
            "student": student,
            "recovered": (student - base) / gain if gain >= MIN_GAIN else None,
            "kl_before": before["kl"].get(name),
            "kl_after": after["kl"].get(name),
            "student_thinking_tokens": after["student"][key]["mean_thinking_tokens"],
            "student_answer_tokens": after["student"][key]["mean_answer_tokens"],
        }
    return table


def _log_report(tag: str, report: dict) -> None:
    for name, row in report.get("recovery", {}).items():
        recovered = "n/a" if row["recovered"] is None else f"{row['recovered']:.0%}"
        log.info(
            "recovery %s: base %.3f teacher %.3f student %.3f recovered %s | KL %.3f -> %.3f",
            name, row["base"], row["teacher"], row["student"], recovered, row["kl_before"] or 0, row["kl_after"] or 0,
        )
    if "recovery" not in report:
        for name, row in report["teachers"].items():
            log.info("eval[%s] %s: student %.3f teacher %.3f KL %.3f", tag, name,
                     report["student"][row["key"]]["accuracy"], row["accuracy"], report["kl"].get(name, 0.0))
