"""Engine-ready weights from an FSDP2-sharded trainer, one FSDP unit at a time.

``sharded_engine_tensors`` yields ``(HF name, tensor in the engine's dtype)`` as ``weights.engine_tensors``
does (LoRA deltas merged in float32, a tied ``lm_head`` left out, ``changed_only``: the blocks holding
an adapter), but unit by unit: a decoder layer is unsharded (FSDP2 all-gathers it on every rank), its
tensors cast into copies, and it is resharded before the next, so no rank holds more of the full
model than one layer beyond its shard (plus the bucket being filled). Every rank of the group must
run the generator to its end together: each unshard is a collective.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch.distributed.fsdp import FSDPModule

from .weights import causal_lm, lora_layers, merged_weight


@contextmanager
def _unsharded(unit):
    if unit is None:
        yield
        return
    unit.unshard()
    try:
        yield
    finally:
        unit.reshard()


def _units(model_lm, root) -> list[tuple[object, list[str]]]:
    """``[(FSDP unit, parameter names it holds)]``: each sharded decoder layer, then the root's rest."""
    in_layer: set[str] = set()
    units = []
    for prefix, module in model_lm.named_modules():
        if prefix and isinstance(module, FSDPModule):
            names = [f"{prefix}.{name}" for name, _ in module.named_parameters()]
            in_layer.update(names)
            units.append((module, names))
    units.append((root, [name for name, _ in model_lm.named_parameters() if name not in in_layer]))
    return units


def engine_names(model, changed_only: bool = False) -> Iterator[tuple[str, str, tuple[int, ...]]]:
    """``(parameter name, HF name, global shape)`` of every engine weight, in the order they stream; no gather."""
    model_lm = causal_lm(model)
    tied = bool(getattr(model_lm.config, "tie_word_embeddings", False))
    changed_blocks = {name.rsplit(".", 1)[0] for name in lora_layers(model)}
    for name, param in model_lm.named_parameters():
        clean = name.replace(".base_layer.", ".")
        if "lora_" in name or (tied and clean == "lm_head.weight"):
            continue
        if changed_only and clean.rsplit(".", 2)[0] not in changed_blocks:
            continue
        yield name, clean, tuple(param.shape)


@torch.no_grad()
def sharded_engine_tensors(model, dtype: str, root, changed_only: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
    """``(HF name, CPU tensor in dtype)`` per engine weight, LoRA merged; ``root``: the FSDP root unit."""
    target = getattr(torch, dtype)
    model_lm = causal_lm(model)
    adapted = lora_layers(model)
    wanted = {name: clean for name, clean, _ in engine_names(model, changed_only)}
    for unit, names in _units(model_lm, root):
        if not any(name in wanted for name in names):
            continue
        with _unsharded(unit):
            for name in names:
                if name not in wanted:
                    continue
                clean, value = wanted[name], model_lm.get_parameter(name)
                module_name = clean.rsplit(".", 1)[0]
                if module_name in adapted and clean.endswith("weight"):
                    value = merged_weight(value, adapted[module_name])
                # a copy: FSDP frees the unsharded buffer at reshard
                yield clean, value.detach().to("cpu", target, copy=True).contiguous()
