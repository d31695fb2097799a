"""Named extension points: one registry helper, one way to name user code.

The floor below every other: it imports nothing of the project, so rewards,
rollout environments, task domains, divergences and trackers all register
through it. A name picks code in one of three ways, everywhere:

1. a name registered in the registry (``@reward("my_reward")``,
   ``@environment("thermostat")``, ``@register_task("weather")``, ...);
2. ``"package.module:attribute"`` -- the working directory is importable, as
   with ``python -m``, also from the ``posttrain`` console script;
3. an entry point of an installed package, in the registry's group
   (``posttrain.rewards``, ``posttrain.environments``, ``posttrain.tasks``, ...).

A second registration of a name with different code is refused, so two
plugins can never silently shadow each other.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from typing import Generic, TypeVar

T = TypeVar("T")


class NotFound(LookupError):
    """A name that resolves to nothing; the message says where we looked."""


class Registry(Generic[T]):
    """``name -> T`` for one kind of extension (``kind`` names it in messages)."""

    def __init__(self, kind: str, entry_point_group: str | None = None):
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._items: dict[str, T] = {}

    def register(self, name: str, item: T) -> T:
        existing = self._items.get(name)
        if existing is not None and existing is not item and qualname(existing) != qualname(item):
            raise ValueError(f"{self.kind} {name!r} is already registered (by {qualname(existing)})")
        self._items[name] = item
        return item

    def decorator(self, name: str) -> Callable[[T], T]:
        """``@registry.decorator("name")`` registers what it decorates and returns it unchanged."""
        return lambda item: self.register(name, item)

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def get(self, name: str) -> T:
        """The item named ``name``: registered, ``module:attr``, or an entry point; else ``NotFound``."""
        if name in self._items:
            return self._items[name]
        if ":" in name:
            return load_object(name, self.kind)
        if self.entry_point_group:
            for entry in entry_points(group=self.entry_point_group):
                if entry.name == name:
                    return entry.load()
        where = f", not in entry-point group {self.entry_point_group!r}" if self.entry_point_group else ""
        raise NotFound(
            f"no {self.kind} named {name!r}: not registered (known: {', '.join(self.names()) or 'none'}), "
            f"not 'module:attribute'{where}"
        )


def get_subclass(registry: Registry, name: str, base: type) -> type:
    """The class ``name`` picks in ``registry``, which must subclass ``base``; ``ValueError`` otherwise."""
    try:
        cls = registry.get(name)
    except NotFound as error:
        raise ValueError(str(error)) from None
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ValueError(f"{registry.kind} {name!r} names {qualname(cls)}, which is not a {base.__name__} subclass")
    return cls


def load_object(spec: str, kind: str = "object"):
    """``"package.module:attr"`` -> that attribute, the working directory importable."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise NotFound(f"{kind} {spec!r}: expected 'module:attribute'")
    cwd = os.getcwd()
    if cwd not in sys.path:  # a console script's sys.path lacks it; `python -m` has it
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise NotFound(f"cannot import {kind} {spec!r}: {error}") from error
    try:
        return getattr(module, attr)
    except AttributeError as error:
        raise NotFound(f"cannot import {kind} {spec!r}: module {module_name!r} has no {attr!r}") from error


def qualname(item) -> str:
    return f"{getattr(item, '__module__', '?')}.{getattr(item, '__qualname__', repr(item))}"
