"""Reward plugins: plain functions registered by name. See ``docs/ARCHITECTURE.md``."""

from . import agent as _builtin_agent  # noqa: F401  (registers the built-ins)
from . import code as _builtin_code  # noqa: F401  (registers the built-ins)
from . import instruct as _builtin_instruct  # noqa: F401  (registers the built-ins)
from . import math as _builtin_math  # noqa: F401
from .pool import warm_pool
from .registry import RewardNotFound, RewardResult, registered_rewards, resolve_reward, reward
from .scoring import RewardTimeout, Sample, ScoredBatch, WeightedReward, as_weighted, score_batch, score_locally

__all__ = [
    "RewardNotFound",
    "RewardResult",
    "RewardTimeout",
    "Sample",
    "WeightedReward",
    "as_weighted",
    "ScoredBatch",
    "registered_rewards",
    "resolve_reward",
    "reward",
    "score_batch",
    "score_locally",
    "warm_pool",
]
