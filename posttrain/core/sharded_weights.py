"""Engine-ready weights from a trainer whose model may be FSDP2-sharded, one FSDP unit at a time.

``sharded_engine_tensors`` yields ``(HF name, tensor)`` exactly as ``policy.engine_state_dict`` builds its
dict (LoRA deltas merged in float32, then cast; a tied ``lm_head`` left out), but unit by unit: a
decoder layer is unsharded (FSDP2 all-gathers it on every rank), its tensors yielded, and resharded
before the next, so no process holds more of the full model than one layer beyond its shard. Every
rank of a group must run the generator to its end together (each unshard is a collective).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch.distributed.fsdp import FSDPModule

from .policy import causal_lm


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
    """``[(FSDP unit or None, parameter names it holds)]``: each sharded layer, then the root's rest."""
    layers = [(name, module) for name, module in model_lm.named_modules() if isinstance(module, FSDPModule) and name]
    in_layer = set()
    units = []
    for prefix, module in layers:
        names = [f"{prefix}.{name}" for name, _ in module.named_parameters()]
        in_layer.update(names)
        units.append((module, names))
    rest = [name for name, _ in model_lm.named_parameters() if name not in in_layer]
    units.append((root, rest))
    return units


@torch.no_grad()
def sharded_engine_tensors(model, dtype: str = "bfloat16", root=None) -> Iterator[tuple[str, torch.Tensor]]:
    """``(HF name, CPU tensor in dtype)`` per engine weight, LoRA merged; ``root``: the FSDP root unit, if sharded."""
    from peft.tuners.lora import LoraLayer

    target = getattr(torch, dtype)
    model_lm = causal_lm(model)
    tied = bool(getattr(model_lm.config, "tie_word_embeddings", False))
    lora = {name: module for name, module in model_lm.named_modules() if isinstance(module, LoraLayer)}
    for unit, names in _units(model_lm, root):
        with _unsharded(unit):
            for name in names:
                if "lora_" in name:
                    continue
                clean = name.replace(".base_layer.", ".")
                if tied and clean == "lm_head.weight":
                    continue
                value = model_lm.get_parameter(name)
                owner = name.rsplit(".", 2)[0] if ".base_layer." in name else None
                if owner in lora and name.endswith("weight"):
                    layer = lora[owner]
                    delta = sum(layer.get_delta_weight(a) for a in layer.active_adapters if a in layer.lora_A)
                    value = value.float() + delta.float()
                yield clean, value.detach().to("cpu", target, copy=True).contiguous()  # a copy: FSDP frees the unsharded buffer
