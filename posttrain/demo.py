"""Make the demo teachers a distillation recipe names, so OPD can run on a laptop.

    python -m posttrain.demo recipes/distill_demo.yaml [--steps 8] [--batch 32]

Real teachers are specialists from GRPO runs. For a CPU demo of twelve of them
this builds each missing (domain, mode) teacher in about half a minute: a LoRA
adapter over the student's base, fine-tuned on its domain's training problems
answered in its mode's style (terse for ``non_think``, a worked line for ``high``,
worked and checked for ``max``). Each gains real held-out accuracy on its own
suite, and the modes differ in length, so the student has something to recover.
"""

from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path

import yaml
from transformers import AutoTokenizer

from distill.routing import Router
from distill.teachers import Teacher
from specialists.math_task import MathTask, Problem
from specialists.sft import sft_sequences, sft_step

from .core.models import resolve_model
from .core.policy import PolicyTrainer
from .core.schema import LoraConfig, Recipe, TrainerConfig
from .recipe import apply_overrides

log = logging.getLogger("posttrain.demo")


def reference_answer(problem: Problem, mode_name: str, close_tag: str | None) -> str:
    """The demo teacher's answer to ``problem`` in its mode's style.

    ``close_tag`` is set for thinking modes, whose prompt already ends with the open tag:
    the answer then thinks (a worked line; worked and checked for ``max``), closes, answers.
    """
    match = re.search(r"What is (.+)\?", problem.question)
    expression, answer = (match.group(1) if match else "the result"), problem.answer
    if close_tag is None:
        return answer
    thinking = f"{expression} = {answer}"
    if mode_name == "max":
        thinking = f"Let me work it out step by step.\n{thinking}.\nCheck: the value of {expression} is {answer}."
    return f"{thinking}\n{close_tag}\nThe answer is {answer}."


def make_teacher(recipe: Recipe, teacher_cfg, steps: int, batch: int, lr: float, lora: bool = True) -> str:
    """SFT one teacher for ``teacher_cfg`` (domain, mode), a LoRA adapter or a full model, saved to its path."""
    base = resolve_model(recipe.model.path)
    tokenizer = AutoTokenizer.from_pretrained(base)
    placeholder = Teacher(teacher_cfg.domain, teacher_cfg.mode, "", None)
    router = Router(recipe, [placeholder], tokenizer)
    trainer_cfg = TrainerConfig(lr=lr, micro_batch_size=16, lora=LoraConfig(r=8, alpha=16) if lora else None)
    trainer = PolicyTrainer(base, trainer_cfg, seed=recipe.run.seed)
    task: MathTask = router.tasks[teacher_cfg.domain]
    for step in range(steps):
        prompts = [router.format(placeholder.key, p) for p in task.sample(10_000 + step, batch)]
        mode = recipe.modes[teacher_cfg.mode]
        close_tag = recipe.thinking_tags.close if mode.thinking else None
        answers = [reference_answer(p.problem, teacher_cfg.mode, close_tag) for p in prompts]
        metrics = sft_step(trainer, sft_sequences(tokenizer, [p.prompt_ids for p in prompts], answers))
        log.info("%s step %d: nll %.3f", placeholder.name, step, metrics["loss"])
    return trainer.save(teacher_cfg.path, tokenizer=tokenizer)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m distill.demo", description=__doc__.split("\n")[0])
    parser.add_argument("recipe")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    data = apply_overrides(yaml.safe_load(Path(args.recipe).read_text()), args.overrides)
    recipe = Recipe.model_validate(data)  # the teachers do not exist yet: schema only
    for teacher_cfg in recipe.distill.teachers:
        if Path(teacher_cfg.path).exists():
            log.info("%s/%s: %s exists, kept", teacher_cfg.domain, teacher_cfg.mode, teacher_cfg.path)
            continue
        log.info("%s/%s: -> %s", teacher_cfg.domain, teacher_cfg.mode, make_teacher(recipe, teacher_cfg, args.steps, args.batch, args.lr))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
