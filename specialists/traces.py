"""Arithmetic with worked traces: problems whose thinking must be long to be right.

Multi-digit addition, subtraction and multiplication by one digit, of mixed sizes
(``min_digits``..``max_digits``). Every row carries its reference completions: a trace
worked column by column (``7+5+1=13, write 3 carry 1, so far 32``), so the trace grows with the
number of digits and a thinking budget that cuts it short leaves the model guessing.
That is what makes accuracy climb with the budget; one-digit sums (``arithmetic``)
are answered from memory and the budget changes nothing.

Styles per effort mode (``reference_text``): a non-thinking mode answers alone; a
thinking mode writes the trace; a mode named in the source's ``check_modes`` adds a
check (the inverse operation) to its trace. The answer always follows the close
tag as ``The answer is N.``, which ``math_verify`` reads.

Pure: no model, no engine. Held-out rows are the hashed slice (``data.is_heldout``).
"""

from __future__ import annotations

import random

from datasets import Dataset

OPS = "+-*"


def column_trace(a: int, b: int, op: str) -> tuple[list[str], int]:
    """The column-by-column lines of ``a op b`` (right to left) and its value (``a >= b`` for ``-``).

    Every line ends with the digits written so far (``so far 23``), so the answer is the
    last line's tally: the model never has to read its own column digits back in reverse.
    """
    if op == "*":
        steps = _multiply_steps(a, b)
    else:
        steps = _add_steps(a, b) if op == "+" else _subtract_steps(a, b)
    lines, written = [], ""
    for text, digit in steps:
        written = f"{digit}{written}"
        lines.append(f"{text}, so far {written}")
    return lines, a + b if op == "+" else a - b if op == "-" else a * b


def _digit_pairs(a: int, b: int) -> zip:
    width = max(len(str(a)), len(str(b)))
    return zip(map(int, str(a).zfill(width)[::-1]), map(int, str(b).zfill(width)[::-1]))


def _add_steps(a: int, b: int) -> list[tuple[str, int]]:
    steps, carry = [], 0
    for da, db in _digit_pairs(a, b):
        total = da + db + carry
        steps.append((f"{da}+{db}+{carry}={total}, write {total % 10} carry {total // 10}", total % 10))
        carry = total // 10
    if carry:
        steps.append((f"write {carry}", carry))
    return steps


def _subtract_steps(a: int, b: int) -> list[tuple[str, int]]:
    steps, borrow = [], 0
    for da, db in _digit_pairs(a, b):
        value = da - db - borrow
        if value >= 0:
            steps.append((f"{da}-{db}-{borrow}={value}, write {value} borrow 0", value))
            borrow = 0
        else:  # borrow ten from the next column
            steps.append((f"{da}-{db}-{borrow}<0, 1{da}-{db}-{borrow}={value + 10}, write {value + 10} borrow 1", value + 10))
            borrow = 1
    return steps


def _multiply_steps(a: int, digit: int) -> list[tuple[str, int]]:
    steps, carry = [], 0
    for da in map(int, str(a)[::-1]):
        total = da * digit + carry
        steps.append((f"{da}*{digit}+{carry}={total}, write {total % 10} carry {total // 10}", total % 10))
        carry = total // 10
    if carry:
        steps.append((f"write {carry}", carry))
    return steps


def check_line(a: int, b: int, op: str, value: int) -> str:
    """The inverse operation, stated: what a ``max``-style trace adds after the columns."""
    if op == "+":
        return f"check: {value}-{b}={a}, ok"
    if op == "-":
        return f"check: {value}+{b}={a}, ok"
    return f"check: {value}/{b}={a}, ok"


def trace_text(a: int, b: int, op: str, check: bool) -> str:
    """The thinking of ``a op b``: its columns, the digits read back, and (``check``) the inverse."""
    lines, value = column_trace(a, b, op)
    lines.append(f"answer {value}")
    if check:
        lines.append(check_line(a, b, op, value))
    return "\n".join(lines)


def reference_text(row: dict, thinking: bool, check: bool, close_tag: str) -> str:
    """The assistant text after the prompt (which ends with the open tag when ``thinking``)."""
    answer = f"The answer is {row['answer']}."
    if not thinking:
        return answer
    return f"{trace_text(row['a'], row['b'], row['op'], check)}\n{close_tag}\n{answer}"


def _operands(rng: random.Random, op: str, min_digits: int, max_digits: int) -> tuple[int, int]:
    digits = rng.randint(min_digits, max_digits)
    a = rng.randint(10 ** (digits - 1), 10**digits - 1)
    if op == "*":
        return a, rng.randint(2, 9)
    b = rng.randint(10 ** (rng.randint(min_digits, digits) - 1), 10**digits - 1)
    return (a, b) if op == "+" or a >= b else (b, a)


def _trace_rows(seed: int, count: int, min_digits: int, max_digits: int, ops: str):
    rng = random.Random(f"traces-{seed}")
    seen: set[str] = set()
    for _ in range(count):
        op = rng.choice(ops)
        a, b = _operands(rng, op, min_digits, max_digits)
        question = f"What is {a} {op} {b}?"
        if question in seen:
            continue
        seen.add(question)
        value = a + b if op == "+" else a - b if op == "-" else a * b
        yield {"question": question, "answer": str(value), "source": "arithmetic_traces",
               "a": a, "b": b, "op": op, "digits": len(str(a))}


def load_traces(seed: int, count: int, min_digits: int, max_digits: int, ops: str) -> Dataset:
    """Trace problems as rows ``{question, answer, source, a, b, op, digits}`` (deduplicated)."""
    return Dataset.from_generator(
        _trace_rows,
        gen_kwargs={"seed": seed, "count": count, "min_digits": min_digits, "max_digits": max_digits, "ops": ops},
    )
