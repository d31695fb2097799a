"""The reward registry: name -> plain function.

A reward is ``fn(prompt: str, completion: str, **fields) -> float`` (or a
``RewardResult``), where ``fields`` are the sample's dataset columns (e.g.
``answer``). Rewards are found three ways, in this order:

1. a name registered with ``@reward("name")`` (built-ins register on import);
2. ``"package.module:function"``;
3. the ``posttrain.rewards`` entry-point group of an installed package.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points

RewardFn = Callable[..., "float | RewardResult"]
ENTRY_POINT_GROUP = "posttrain.rewards"
_REGISTRY: dict[str, RewardFn] = {}


@dataclass
class RewardResult:
    """A score plus optional named components (logged) and free-form info."""

    score: float
    components: dict[str, float] = field(default_factory=dict)
    info: dict = field(default_factory=dict)


class RewardNotFound(LookupError):
    pass


def reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Register ``fn`` under ``name``; a second registration of a name is refused."""

    def register(fn: RewardFn) -> RewardFn:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise ValueError(f"reward {name!r} is already registered (by {_qualname(_REGISTRY[name])})")
        _REGISTRY[name] = fn
        return fn

    return register


def registered_rewards() -> list[str]:
    return sorted(_REGISTRY)


def resolve_reward(spec: str) -> RewardFn:
    """Find the reward named ``spec``; raise ``RewardNotFound`` saying where we looked."""
    if spec in _REGISTRY:
        return _REGISTRY[spec]
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        try:
            fn = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as error:
            raise RewardNotFound(f"cannot import reward {spec!r}: {error}") from error
        if not callable(fn):
            raise RewardNotFound(f"reward {spec!r} is not callable")
        return fn
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        if entry.name == spec:
            return entry.load()
    raise RewardNotFound(
        f"no reward named {spec!r}: not registered (known: {', '.join(registered_rewards())}), "
        f"not 'module:function', not in entry-point group {ENTRY_POINT_GROUP!r}"
    )


def _qualname(fn: RewardFn) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', fn)}"
