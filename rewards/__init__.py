"""Reward plugins: plain functions registered by name. See ``docs/ARCHITECTURE.md``."""

from . import agent as _builtin_agent  # noqa: F401  (registers the built-ins)
from . import math as _builtin_math  # noqa: F401
from .registry import RewardNotFound, RewardResult, registered_rewards, resolve_reward, reward
from .scoring import Sample, ScoredBatch, score_batch, score_locally

__all__ = [
    "RewardNotFound",
    "RewardResult",
    "Sample",
    "ScoredBatch",
    "registered_rewards",
    "resolve_reward",
    "reward",
    "score_batch",
    "score_locally",
]
