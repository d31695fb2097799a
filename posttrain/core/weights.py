"""The trainer's side of a weight sync: the engine's tensors, in buckets, written in place.

    named = engine_tensors(model, changed_only=lora)       # (HF name, tensor), LoRA deltas merged
    for bucket in layer_buckets(named, bucket_bytes):       # whole decoder layers, ~bucket_bytes each
        ref = shared.write(bucket)                          # cast into the fixed slots of /dev/shm
        engine.load_weight_bucket(ref)                      # rollout/worker_ext.py: loaded in place

Nothing here rebuilds a state dict: each tensor is produced (a parameter, or a
parameter + its LoRA delta) and cast straight into its slot of the shared file
(``rollout/weight_buckets.py``). With LoRA only what changed travels: the
modules holding an adapter, with their fused siblings (every parameter of the
block -- attention, MLP -- that holds one), because the engine fuses q/k/v and
gate/up into one layer and loads a layer only when all of it arrives.

The bucket stream is the interface: a multi-rank trainer (issue 15) yields the
same ``(name, tensor)`` buckets from its gathered shards. When the engine is on another
node there is no shared file: ``cast_buckets`` yields each bucket's tensors, and each
bucket travels as its own Ray object (the object store moves it between nodes).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

import torch

from rollout.weight_buckets import BucketRef, SharedWeights

DEFAULT_BUCKET_BYTES = 256 * 2**20
_LAYER = re.compile(r"^(.*?\.layers\.\d+)\.")  # a decoder layer: what a bucket never splits


def causal_lm(model):
    """The transformers causal LM inside a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def lora_layers(model) -> dict[str, torch.nn.Module]:
    """``{module name (HF naming): its peft LoRA layer}`` of a peft model (empty for a plain model)."""
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return {}
    return {
        name.removeprefix("base_model.model."): module
        for name, module in model.named_modules()
        if isinstance(module, LoraLayer)
    }


def merged_weight(weight: torch.Tensor, layer) -> torch.Tensor:
    """``weight + B @ A * scale`` over the layer's active adapters, in float32, ``weight`` untouched.

    A plain linear adapter is one fused ``addmm`` (one allocation, no separate delta); others
    (``fan_in_fan_out``, embeddings, convolutions) take peft's own ``get_delta_weight``. DoRA rescales
    the merged weight, not a sum: refused (the recipe's ``trainer.lora`` never builds it).
    """
    merged = weight.float()
    for adapter in layer.active_adapters:
        if adapter not in layer.lora_A:
            continue
        if layer.use_dora.get(adapter, False):
            raise ValueError(f"adapter {adapter!r} is DoRA: its merged weight is not base + delta (not supported)")
        lora_a, lora_b = layer.lora_A[adapter], layer.lora_B[adapter]
        plain = (isinstance(lora_a, torch.nn.Linear) and isinstance(lora_b, torch.nn.Linear)
                 and not getattr(layer, "fan_in_fan_out", False))
        if plain:
            merged = torch.addmm(merged, lora_b.weight.float(), lora_a.weight.float(), alpha=layer.scaling[adapter])
        else:
            merged = merged + layer.get_delta_weight(adapter).float()
    return merged


def _block(module_name: str) -> str:
    """The block a module sits in (``model.layers.3.self_attn.q_proj`` -> ``model.layers.3.self_attn``)."""
    return module_name.rsplit(".", 1)[0]


@torch.no_grad()
def engine_tensors(model, changed_only: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
    """``(HF name, tensor)`` of every weight the engine holds, active LoRA deltas merged in (in float32).

    The model is not mutated; a tied ``lm_head`` is left out (the engine ties it too).
    ``changed_only`` (LoRA): only the blocks holding an adapter; the rest is the frozen base the
    engine already has.
    """
    model_lm = causal_lm(model)
    tied = bool(getattr(model_lm.config, "tie_word_embeddings", False))
    adapted = lora_layers(model)
    changed_blocks = {_block(name) for name in adapted}
    for name, param in model_lm.named_parameters():
        if "lora_" in name:
            continue
        clean = name.replace(".base_layer.", ".")
        if tied and clean == "lm_head.weight":
            continue
        module_name = clean.rsplit(".", 1)[0]
        if changed_only and _block(module_name) not in changed_blocks:
            continue
        if module_name in adapted and clean.endswith("weight"):
            yield clean, merged_weight(param, adapted[module_name])
        else:
            yield clean, param.detach()


def layer_buckets(named: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Group ``(name, tensor)`` pairs into buckets of about ``bucket_bytes`` (as sent: ``nbytes`` of the
    tensors given), never splitting a decoder layer (the engine processes a layer once all of it is loaded)."""
    bucket: list[tuple[str, torch.Tensor]] = []
    size, layer = 0, None
    for name, tensor in named:
        match = _LAYER.match(name)
        this_layer = match.group(1) if match else name
        if bucket and size >= bucket_bytes and this_layer != layer:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, tensor))
        size += tensor.numel() * tensor.element_size()
        layer = this_layer
    if bucket:
        yield bucket


def cast_buckets(named: Iterable[tuple[str, torch.Tensor]], dtype: str, bucket_bytes: int,
                 ) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Buckets of about ``bucket_bytes`` in ``dtype`` (whole layers), each tensor cast on its own: what travels
    as one Ray object per bucket when the engine is on another node (no shared file there)."""
    target = getattr(torch, dtype)
    for bucket in layer_buckets(((name, tensor.to(target)) for name, tensor in named), bucket_bytes):
        yield [(name, tensor.contiguous()) for name, tensor in bucket]


class WeightSender:
    """A trainer's weight publisher: one shared file laid out for every engine tensor, written bucket by bucket."""

    def __init__(self, model, dtype: str, bucket_bytes: int = DEFAULT_BUCKET_BYTES):
        self.dtype, self.bucket_bytes = dtype, bucket_bytes
        layout = [(name, tuple(tensor.shape)) for name, tensor in engine_tensors(model)]
        self.shared = SharedWeights(layout, dtype)
        self.scale = getattr(torch, dtype).itemsize / 4  # buckets are sized as sent, tensors come in float32

    def buckets(self, model, changed_only: bool = False) -> Iterator[BucketRef]:
        """Write the model's engine tensors bucket by bucket; yield each bucket's ref once it is written."""
        for bucket in layer_buckets(engine_tensors(model, changed_only), int(self.bucket_bytes / self.scale)):
            yield self.shared.write(bucket)

    def close(self) -> None:
        self.shared.close()
