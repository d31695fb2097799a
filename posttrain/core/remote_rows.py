"""Per-sequence extras that stay in Ray's object store until the micro-batch that reads them runs.

A loss's extras hold one value per sequence (``extras[key][b]``). When those values are big
(a distillation teacher's hidden states ``[T, H]`` per sequence) the producer leaves them in the
object store as one object per micro-batch and puts a ``RemoteRow`` in each sequence's place;
the trainer fetches a micro-batch's objects when it runs that micro-batch (``fetch_rows``). A
rank of a trainer group thus fetches only its own micro-batches, the update call itself carries
only handles, and no process ever holds a whole step's values at once.

An object is a list with one item per sequence it covers; a ``RemoteRow`` names its item in one
or more objects (``parts``), and its value is those items concatenated (lists: e.g. a sequence
scored by two teacher shards has its routes in two objects).
"""

from __future__ import annotations

from dataclasses import dataclass

import ray


@dataclass(frozen=True)
class RemoteRow:
    """One sequence's value: the concatenation of item ``position`` of each ``(object, position)`` in ``parts``."""

    parts: tuple[tuple[ray.ObjectRef, int], ...]


def remote_refs(extras: dict[str, list]) -> list[ray.ObjectRef]:
    """The distinct objects the ``RemoteRow`` values of ``extras`` read, in first-seen order."""
    seen: dict[ray.ObjectRef, None] = {}
    for values in extras.values():
        for value in values:
            if isinstance(value, RemoteRow):
                seen.update((ref, None) for ref, _ in value.parts)
    return list(seen)


def fetch_rows(extras: dict[str, list]) -> dict[str, list]:
    """``extras`` with every ``RemoteRow`` replaced by its value (one ``ray.get`` for all the objects it reads)."""
    refs = remote_refs(extras)
    if not refs:
        return extras
    objects = dict(zip(refs, ray.get(refs)))

    def value(item):
        if not isinstance(item, RemoteRow):
            return item
        return [entry for ref, position in item.parts for entry in objects[ref][position]]

    return {key: [value(item) for item in values] for key, values in extras.items()}


def wait_for_rows(extras: dict[str, list]) -> None:
    """Until every object the extras read is computed, without fetching any here."""
    refs = remote_refs(extras)
    if refs:
        ray.wait(refs, num_returns=len(refs), fetch_local=False)
