"""Math rewards, scored by ``math-verify`` (symbolic equivalence, not string match)."""

from __future__ import annotations

from .registry import reward


@reward("math_verify")
def math_verify(prompt: str, completion: str, *, answer: str, **_) -> float:
    """1.0 if the completion's final answer is equivalent to ``answer``, else 0.0.

    math-verify extracts the last boxed/LaTeX/plain expression of the completion.
    """
    from math_verify import parse, verify

    gold = parse(str(answer))
    predicted = parse(completion)
    return 1.0 if gold and predicted and verify(gold, predicted) else 0.0
