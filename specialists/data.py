"""Prompt sources for the math specialist: GSM8K and a procedural arithmetic generator.

Every source loads through ``datasets`` and yields rows ``{question, answer, source}``.
Held-out rows are chosen by a stable hash of the question, so the training
stream and the held-out suite can never share a problem, whatever the seed.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

from datasets import Dataset, load_dataset

HELDOUT_PERCENT = 10  # share of every source reserved for held-out eval


def is_heldout(question: str) -> bool:
    digest = hashlib.sha256(question.strip().encode()).digest()
    return int.from_bytes(digest[:4], "big") % 100 < HELDOUT_PERCENT


def split_rows(dataset: Dataset, heldout: bool) -> Dataset:
    return dataset.filter(lambda row: is_heldout(row["question"]) == heldout)


def load_gsm8k(path: str) -> Dataset:
    """GSM8K from a local jsonl (``../shared/data/gsm8k/train.jsonl``) or a hub id."""
    if Path(path).expanduser().exists():
        raw = load_dataset("json", data_files=str(Path(path).expanduser()), split="train")
    else:
        raw = load_dataset(path, "main", split="train")
    return raw.map(
        lambda row: {"answer": row["answer"].split("####")[-1].strip().replace(",", ""), "source": "gsm8k"},
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
