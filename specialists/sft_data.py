"""SFT examples: chat-formatted exactly like RL prompts, with the reference completion after them.

Every example goes through ``chat.prompt_ids`` in its effort mode (the mode's
instruction, and for a thinking mode the thinking tags with the prompt ending in
the open tag), so SFT data looks to the model exactly as a GRPO prompt will. The
completion is the assistant text (thinking + close tag + answer in a thinking
mode) plus EOS; the loss covers all of it and none of the prompt.

Sources (``sft.data``): the task's own references (``Task.reference``, e.g.
math's ``arithmetic_traces``), or a dataset loaded with ``datasets`` (a local
jsonl / json / parquet file or a hub id) with a ``messages`` column or a
prompt/response pair of columns. A batch is a pure function of (seed, step),
so a resumed SFT run sees the same examples. This module starts nothing.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from datasets import Dataset

from posttrain.core.chat import prompt_ids
from posttrain.core.dataset_source import DatasetError, open_split
from posttrain.core.modes import assign_modes
from posttrain.core.policy import Sequences
from posttrain.core.tasks import Task

SFT_STREAM = 1_000_000  # task.sample step offset: SFT draws a problem stream apart from GRPO's


@dataclass
class SftExample:
    prompt_ids: list[int]
    completion_ids: list[int]  # the reference text's tokens + EOS: every one carries loss
    mode: str
    prompt: str  # the user message (for samples.jsonl)
    completion: str


def as_sequences(examples: list[SftExample]) -> Sequences:
    """Prompt / completion split for the trainer; no mask: every completion token is trained."""
    return Sequences([e.prompt_ids for e in examples], [e.completion_ids for e in examples])


def sft_mode_weights(recipe) -> dict[str, float]:
    return dict(recipe.sft.modes or recipe.task.modes)


def load_rows(cfg) -> Dataset:
    """The dataset of ``sft.data`` (source: dataset), through the one dataset loader (``core/dataset_source.py``:
    a local json / jsonl / parquet / csv file or directory, or a hub id)."""
    return open_split(cfg.path, cfg.split, cfg.subset, cfg.format)


def check_dataset(cfg, mode_names: list[str]) -> list[str]:
    """Problems with an SFT dataset, each with its field path: a file that is missing or unreadable, a hub id
    that cannot be reached, an empty split, a column that is not there (and the columns that are)."""
    try:
        rows = load_rows(cfg)
    except DatasetError as error:
        return [f"sft.data.path: {error}"]
    if len(rows) == 0:
        return [f"sft.data.split: split {cfg.split!r} of {cfg.path} is empty (columns: {rows.column_names})"]
    wanted = {"messages_column": cfg.messages_column} if cfg.messages_column else {
        "prompt_column": cfg.prompt_column, "response_column": cfg.response_column}
    if cfg.mode_column:
        wanted["mode_column"] = cfg.mode_column
    problems = [f"sft.data.{field}: no column {name!r} in {cfg.path} (columns: {rows.column_names})"
                for field, name in wanted.items() if name not in rows.column_names]
    if not problems and cfg.mode_column:
        unknown = sorted(set(rows[cfg.mode_column]) - set(mode_names))
        if unknown:
            problems.append(f"sft.data.mode_column: modes {unknown} are not defined (defined: {sorted(mode_names)})")
    return problems


class SftData:
    """Batches of ``SftExample`` for step ``step`` of the recipe's SFT stage."""

    def __init__(self, recipe, task: Task, tokenizer):
        self.recipe, self.task, self.tokenizer = recipe, task, tokenizer
        self.cfg = recipe.sft.data
        self.weights = sft_mode_weights(recipe)
        self.rows = load_rows(self.cfg) if self.cfg.source == "dataset" else None

    def batch(self, step: int, size: int) -> list[SftExample]:
        modes = assign_modes(self.weights, size, self.recipe.run.seed, SFT_STREAM + step)
        if self.rows is None:
            return self._task_examples(step, modes)
        rng = random.Random(f"sft-{self.recipe.run.seed}-{step}")
        rows = [self.rows[rng.randrange(len(self.rows))] for _ in range(size)]
        return [self._row_example(row, mode) for row, mode in zip(rows, modes)]

    def _task_examples(self, step: int, modes: list[str]) -> list[SftExample]:
        examples = []
        for problem, name in zip(self.task.sample(SFT_STREAM + step, len(modes)), modes):
            mode = self.recipe.modes[name]
            text = self.task.reference(problem, name, mode, self.recipe.thinking_tags)
            if text is None:
                raise ValueError(
                    f"sft.data.source: task {self.task.domain!r} has no reference completion for source "
                    f"{problem.source!r} (use a source with references, e.g. arithmetic_traces, or source: dataset)"
                )
            user = self.task.user_message(problem)
            examples.append(self._example(user, self.task.system_prompt(problem), name, text))
        return examples

    def _row_example(self, row: dict, mode: str) -> SftExample:
        cfg = self.cfg
        mode = row[cfg.mode_column] if cfg.mode_column else mode
        history = []
        if cfg.messages_column:
            system, history, user, response = split_chat(row[cfg.messages_column])
        else:
            system, user, response = None, row[cfg.prompt_column], row[cfg.response_column]
        return self._example(user, system, mode, response, history)

    def _example(self, user: str, system: str | None, mode_name: str, text: str, history=()) -> SftExample:
        mode, tags = self.recipe.modes[mode_name], self.recipe.thinking_tags
        if mode.thinking:
            text = text.lstrip().removeprefix(tags.open).lstrip("\n")  # the prompt already ends with the open tag
            if tags.close not in text:
                raise ValueError(f"SFT example in thinking mode {mode_name!r} has no {tags.close!r}: {text[:80]!r}")
        ids = prompt_ids(self.tokenizer, user, system=system, mode=mode, tags=tags, history=history)
        completion = self.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
        return SftExample(ids, completion, mode_name, user, text)


def split_chat(messages: list[dict]) -> tuple[str | None, list[dict], str, str]:
    """``(system, earlier turns, last user turn, last assistant turn)`` of a chat whose last turn is the
    assistant's; the earlier user/assistant turns (few-shot pairs, a conversation) stay in the prompt."""
    if not messages or messages[-1].get("role") != "assistant":
        raise ValueError("an SFT chat must end with an assistant turn")
    if len(messages) < 2 or messages[-2].get("role") != "user":
        raise ValueError("an SFT chat needs a user turn right before the last assistant turn")
    systems = [m["content"] for m in messages if m.get("role") == "system"]
    history = [{"role": m["role"], "content": m["content"]} for m in messages[:-2] if m.get("role") in ("user", "assistant")]
    return (systems[0] if systems else None), history, messages[-2]["content"], messages[-1]["content"]
