"""Supervised fine-tuning: a stage of its own before RL (``sft:``), and the quick way to make teachers.

``SftLoss`` is the token-mean negative log-likelihood over the whole batch, so it plugs into
``PolicyTrainer.update`` like ``GrpoLoss`` does (micro-batches sum to the batch loss).

``SftLoop`` runs on the shared driver (``posttrain.core.driver.run_loop``): each step
draws a batch of chat-formatted examples (``specialists/sft_data.py``: the mode's
instruction and thinking tags, exactly as GRPO prompts), trains on the completion
tokens only (thinking included), and checkpoints / resumes like GRPO. The engine
only serves the evals, so weights are pushed before an eval, not every step. The
eval is the specialist's (``loop.specialist_eval``): same suites, modes and sweep.

``train_sft`` ends with a full model directory (a LoRA adapter merged into its
base) that the GRPO stage starts from.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import ray
import torch

from posttrain.core.checkpoints import merge_adapter
from posttrain.core.driver import Actors, phase_line, run_loop, start_actors
from posttrain.core.models import load_tokenizer
from posttrain.core.policy import Sequences
from posttrain.core.rundir import RunDir
from posttrain.core.schema import Recipe
from posttrain.core.tasks import Task, make_task
from posttrain.core.timing import PhaseTimer

from .loop import eval_due, specialist_eval
from .sft_data import SftData, as_sequences

log = logging.getLogger("posttrain.sft")


@dataclass
class SftLoss:
    num_tokens: int  # completion tokens in the whole batch

    def __call__(self, student, extras: dict, installed=None) -> tuple[torch.Tensor, dict]:
        nll = -(student.logprobs() * student.mask_B_T).sum()
        return nll / self.num_tokens, {"nll_sum": float(nll.detach())}


def sft_sequences(tokenizer, prompts: list[list[int]], completions: list[str]) -> Sequences:
    """Prompt ids + reference completion texts -> ``Sequences``, each completion ending in EOS
    (the chat turn's end for instruct models), so the trained model learns to stop."""
    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for text in completions]
    return Sequences(list(prompts), ids)


def sft_step(trainer, seqs: Sequences) -> dict[str, float]:
    """One optimizer step of SFT on ``seqs`` (``trainer``: a ``PolicyTrainer`` or its Ray actor)."""
    loss = SftLoss(sum(map(sum, seqs.completion_mask)) if seqs.completion_mask else sum(map(len, seqs.completion_ids)))
    update = getattr(trainer, "update")
    if hasattr(update, "remote"):
        return ray.get(update.remote(seqs, loss, {}))
    return update(seqs, loss, {})


def sft_recipe(recipe: Recipe) -> Recipe:
    """The recipe the SFT stage runs: its own learning rate when ``sft.lr`` is set."""
    if recipe.sft.lr is None:
        return recipe
    return recipe.model_copy(update={"trainer": recipe.trainer.model_copy(update={"lr": recipe.sft.lr})})


def train_sft(recipe: Recipe, model_path: str, run: RunDir) -> dict:
    """SFT per ``recipe.sft`` into ``run``; ``{"before", "after", "checkpoint", "model"}`` (``model``: a full
    model directory of the final weights, for the next stage)."""
    recipe = sft_recipe(recipe)
    task = make_task(recipe.task, seed=recipe.run.seed)
    data = SftData(recipe, task, load_tokenizer(model_path, recipe.model))
    data.batch(0, 1)  # a source without references (or a bad row) fails here, before any actor starts
    actors = start_actors(recipe, model_path)
    loop = SftLoop(recipe, actors, task, run, data)
    results = run_loop(loop, recipe, run, actors)
    results["model"] = final_model_dir(Path(results["checkpoint"]), run.path / "model", model_path,
                                       recipe.model.trust_remote_code)
    return results


def final_model_dir(checkpoint: Path, target: Path, base: str, trust_remote_code: bool = False) -> str:
    """A full model directory of ``checkpoint``: itself for full fine-tuning, else base + adapter merged
    into ``target`` (written whole, then renamed, so a crash never leaves a half model)."""
    if not (checkpoint / "adapter_config.json").exists():
        return str(checkpoint.resolve())
    if not (target / "config.json").exists():
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        merge_adapter(checkpoint, partial, base, trust_remote_code)
        partial.rename(target)
    return str(target.resolve())


@dataclass
class SftLoop:
    """What SFT brings to the shared driver: its step (one optimizer step on a batch) and its eval."""

    recipe: Recipe
    actors: Actors
    task: Task
    run: RunDir
    data: SftData
    name = "SFT"

    @property
    def steps(self) -> int:
        return self.recipe.sft.steps

    @property
    def checkpoint_every(self) -> int:
        return self.recipe.sft.checkpoint_every

    def step(self, step: int) -> dict[str, float]:
        """One optimizer step; ``eval.every`` opens step ``step`` with the eval of the weights after ``step``
        updates (pushed to the engine first: SFT samples nothing, so the engine holds them only for evals)."""
        cfg, timer = self.recipe.sft, PhaseTimer()
        if eval_due(self.recipe, step):
            with timer.phase("eval"):
                self.actors.sync_weights(self.recipe.model.engine_dtype)
                specialist_eval(self.recipe, self.actors, self.task, self.run, f"step_{step}", step)
        with timer.phase("data"):
            examples = self.data.batch(step, cfg.batch_size)
            seqs = as_sequences(examples)
        tokens = sum(map(len, seqs.completion_ids))
        with timer.phase("update"):
            update = ray.get(self.actors.trainer.update.remote(seqs, SftLoss(tokens), {}))
        self.run.log_samples(step, [{"mode": e.mode, "prompt": e.prompt, "completion": e.completion}
                                    for e in examples[: cfg.log_samples]])
        lengths = [len(ids) for ids in seqs.completion_ids]
        modes = {e.mode for e in examples}
        return {
            "loss/nll": update["loss"], "loss/grad_norm": update["grad_norm"], "sft/tokens": float(tokens),
            "optim/lr": self.recipe.trainer.lr,  # the stage's (sft.lr or trainer.lr); constant: no schedule
            "sft/completion_length_mean": sum(lengths) / len(lengths), "sft/completion_length_max": float(max(lengths)),
            **{f"mode/{m}/examples": float(sum(e.mode == m for e in examples)) for m in sorted(modes)},
            **timer.metrics(),
        }

    def step_line(self, step: int, m: dict[str, float]) -> str:
        return (f"nll {m['loss/nll']:.4f} grad {m['loss/grad_norm']:.2f} "
                f"len {m['sft/completion_length_mean']:.0f} | {phase_line(m)}")

    def evaluate(self, tag: str, before: dict | None = None) -> dict:
        if tag != "before":  # the engine serves evals only: give it the trained weights first
            self.actors.sync_weights(self.recipe.model.engine_dtype)
        return specialist_eval(self.recipe, self.actors, self.task, self.run, tag, 0 if tag == "before" else self.steps)
