"""Prompt sources for the math specialist: GSM8K and a procedural arithmetic generator.

Every source loads through ``datasets`` and yields rows ``{question, answer, source}``.
Held-out rows are chosen by a stable hash of the question, so the training
stream and the held-out suite can never share a problem, whatever the seed.
"""

from __future__ import annotations

import random
from pathlib import Path

from datasets import Dataset

from posttrain.core.dataset_source import HELDOUT_PERCENT, is_heldout, open_split  # noqa: F401  (re-exported)


def split_rows(dataset: Dataset, heldout: bool) -> Dataset:
    return dataset.filter(lambda row: is_heldout(row["question"]) == heldout)


def load_gsm8k(path: str) -> Dataset:
    """GSM8K from a local file (``../shared/data/gsm8k/train.jsonl``; jsonl, parquet or csv) or a hub id
    (its ``main`` subset), through the one dataset loader; the answer is what follows ``####`` (or the
    whole answer, a number included)."""
    raw = open_split(path, "train", None if Path(path).expanduser().exists() else "main")
    return raw.map(
        lambda row: {"answer": str(row["answer"]).split("####")[-1].strip().replace(",", ""), "source": "gsm8k"},
    ).select_columns(["question", "answer", "source"])


def _arithmetic_rows(seed: int, count: int, max_operand: int, ops: str, terms: int):
    rng = random.Random(seed)
    seen: set[str] = set()
    for _ in range(count):
        numbers = [rng.randint(0, max_operand) for _ in range(terms)]
        chosen_ops = [rng.choice(ops) for _ in range(terms - 1)]
        expression = str(numbers[0])
        for op, number in zip(chosen_ops, numbers[1:]):
            expression += f" {op} {number}"
        if expression in seen:
            continue
        seen.add(expression)
        value = eval(expression, {"__builtins__": {}})  # our own digits and operators only
        yield {"question": f"What is {expression}?", "answer": str(value), "source": "arithmetic"}


def load_arithmetic(seed: int, count: int, max_operand: int, ops: str, terms: int) -> Dataset:
    """Procedural arithmetic (``What is 7 + 5?``), deduplicated; easy enough to learn in minutes."""
    return Dataset.from_generator(
        _arithmetic_rows,
        gen_kwargs={"seed": seed, "count": count, "max_operand": max_operand, "ops": ops, "terms": terms},
    )
