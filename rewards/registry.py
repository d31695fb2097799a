"""The reward registry: name -> plain function.

A reward is ``fn(prompt: str, completion: str, **fields) -> float`` (or a
``RewardResult``), where ``fields`` are the sample's dataset columns (e.g.
``answer``). Rewards are found three ways, in this order:

1. a name registered with ``@reward("name")`` (built-ins register on import);
2. ``"package.module:function"``;
3. the ``posttrain.rewards`` entry-point group of an installed package.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from posttrain.plugins import NotFound, Registry

RewardFn = Callable[..., "float | RewardResult"]
ENTRY_POINT_GROUP = "posttrain.rewards"
REWARDS: Registry[RewardFn] = Registry("reward", entry_point_group=ENTRY_POINT_GROUP)


@dataclass
class RewardResult:
    """A score plus optional named components (logged) and free-form info."""

    score: float
    components: dict[str, float] = field(default_factory=dict)
    info: dict = field(default_factory=dict)


class RewardNotFound(NotFound):
    pass


def reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Register ``fn`` under ``name``; a second registration of a name is refused."""
    return REWARDS.decorator(name)


def registered_rewards() -> list[str]:
    return REWARDS.names()


def resolve_reward(spec: str) -> RewardFn:
    """Find the reward named ``spec``; raise ``RewardNotFound`` saying where we looked."""
    try:
        fn = REWARDS.get(spec)
    except NotFound as error:
        raise RewardNotFound(str(error)) from None
    if not callable(fn):
        raise RewardNotFound(f"reward {spec!r} is not callable")
    return fn
