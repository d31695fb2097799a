"""A reward that reads a column of the user's own file (``bonus``) from its keyword arguments, for
``tests/test_integration_data.py``. Named ``tests.data_reward:bonus_if_correct``. It takes no ``**fields``:
the row's other columns (``topic``) must not reach it."""

from rewards import RewardResult
from rewards.math import math_verify


def bonus_if_correct(prompt: str, completion: str, *, answer: str, bonus: float) -> RewardResult:
    correct = math_verify(prompt, completion, answer=answer)
    return RewardResult(correct + 0.1 * bonus, components={"bonus": float(bonus)})
