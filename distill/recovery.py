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

from posttrain.core.evaluation import CellResult, cells_for, score_cells

from .objective import DistillLoss
from .routing import Router, completion_sequences, teacher_kls

log = logging.getLogger("posttrain.distill")
MIN_GAIN = 0.02  # below this teacher gain, "recovered share" is noise and is reported as None


def key_cells(recipe, router: Router, keys=None) -> dict[tuple[str, str], list]:
    """Per (domain, mode) key: the domain's held-out suites prompted in that mode, as eval cells."""
    cells = {}
    for key in keys or router.keys:
        task = router.tasks[key[0]]
        suites = task.heldout_suites(recipe.eval.suites, recipe.eval.num_problems)
        cells[key] = cells_for(task, suites, {key[1]: recipe.modes[key[1]]})
    return cells


def score_keys(actors, recipe, router: Router, cells: dict) -> tuple[dict, dict[tuple, list[CellResult]]]:
    """Greedy accuracy and token use per key (every key in one batched rollout); and the scored cells."""
    flat = [cell for key_cells_ in cells.values() for cell in key_cells_]
    results = iter(score_cells(actors.engine, actors.tokenizer, flat, recipe.thinking_tags))
    by_key = {key: [next(results) for _ in key_cells_] for key, key_cells_ in cells.items()}
    scores = {}
    for key, picked in by_key.items():
        completions = [c for r in picked for c in r.completions]
        count = max(len(completions), 1)
        scores[key] = {
            "accuracy": sum(v for r in picked for v in r.entry["scores"]["score"]) / count,
            "mean_thinking_tokens": sum(c.thinking_tokens for c in completions) / count,
            "mean_answer_tokens": sum(c.answer_tokens for c in completions) / count,
            "problems": len(completions),
        }
    return scores, by_key


def heldout_kl(actors, fleet, router: Router, by_key: dict) -> dict[str, float]:
    """Per-teacher mean per-token KL(student || teacher) on the student's greedy completions."""
    pairs = [(key, prompt, c) for key, results in by_key.items() for r in results
             for prompt, c in zip(r.prompts, r.completions) if c.token_ids]
    seqs = completion_sequences([prompt for _, prompt, _ in pairs], [c for _, _, c in pairs])
    extras = fleet.score(seqs, router.routing([key for key, _, _ in pairs]))
    loss = DistillLoss("reverse_kl", sum(map(sum, seqs.completion_mask)))
    return teacher_kls(ray.get(actors.trainer.evaluate.remote(seqs, loss, extras)), router)


def teacher_scores(actors, fleet, recipe, router: Router, cells: dict) -> dict[str, dict]:
    """Each teacher on its own key's suite, on the student's engine; the student's weights go back after."""
    scores = {}
    dtype = recipe.model.engine_dtype
    for index, teacher in enumerate(router.teachers):
        ray.get(actors.engine.update_weights.remote(fleet.engine_weights(index, dtype)))
        accuracy, _ = score_keys(actors, recipe, router, {teacher.key: cells[teacher.key]})
        scores[router.names[index]] = {"key": "/".join(teacher.key), **accuracy[teacher.key]}
    actors.sync_weights(dtype, full=True)  # the engine held a teacher: every weight goes back
    return scores


def recovery_eval(recipe, actors, fleet, router: Router, run, tag: str, before: dict | None = None) -> dict:
    """Student scores and held-out KL per teacher; teacher scores once (``before``); recovery after."""
    cells = key_cells(recipe, router)
    student, by_key = score_keys(actors, recipe, router, cells)
    report = {
        "student": {"/".join(key): value for key, value in student.items()},
        "kl": heldout_kl(actors, fleet, router, by_key),
        "examples": {"/".join(key): [c.text for r in results for c in r.completions][:2] for key, results in by_key.items()},
    }
    if before is None:
        report["teachers"] = teacher_scores(actors, fleet, recipe, router, cells)
    else:
        report["teachers"] = before["teachers"]
        report["recovery"] = recovery_table(before, report, router)
    run.save_eval(tag, report)
    _log_report(tag, report)
    step = 0 if tag == "before" else recipe.distill.steps  # trackers: eval/<domain>/<mode>/<metric>, eval/kl/<teacher>
    run.log_eval(step, tag, {**report["student"], "kl": report["kl"]})
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
