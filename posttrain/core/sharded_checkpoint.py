"""Sharded checkpoints with ``torch.distributed.checkpoint`` (DCP): every rank writes its own shards.

A trainer group (``core/group.py``) saves ``step_N/dcp/`` (model and AdamW state, keyed by
parameter name, each rank writing the pieces it holds: no rank gathers the whole model) and
``step_N/trainer_state.pt`` (steps, RNG, the world size that wrote it). DCP reshards on load,
so a checkpoint written by 2 ranks loads on 1 (a plain ``PolicyTrainer``, no process group)
or on any other number of ranks; a one-rank checkpoint loads on N ranks too (``load_whole``). Under LoRA only the trainable parameters (the adapter) are
saved: the frozen base is the model directory the run started from.

``dcp_state_dict`` reads a sharded checkpoint's model weights back as one plain state dict
(parameter names as the trainer's model has them), for an export to a plain HF directory;
``model.json`` (``write_model_record``) says what they are: the base model directory the run
started from and, under LoRA, the adapter's peft config (``checkpoints.saved_checkpoint``
reads a sharded checkpoint through both).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

SHARDS = "dcp"
MODEL_RECORD = "model.json"


def is_sharded(checkpoint: str | Path) -> bool:
    """True for a checkpoint a trainer group wrote (``dcp/.metadata`` inside)."""
    return (Path(checkpoint) / SHARDS / ".metadata").exists()


def adapter_record(model) -> dict | None:
    """The peft LoRA config of ``model``'s default adapter as ``adapter_config.json`` holds it; None for a plain model."""
    config = getattr(model, "peft_config", {}).get("default")
    return None if config is None else json.loads(json.dumps(config.to_dict(), default=sorted))


def write_model_record(checkpoint: str | Path, base: str, adapter: dict | None) -> None:
    """``model.json``: the base model directory and, under LoRA, the adapter config (rank 0 writes it)."""
    (Path(checkpoint) / MODEL_RECORD).write_text(json.dumps({"base": base, "adapter": adapter}, indent=2))


def read_model_record(checkpoint: str | Path) -> dict:
    path = Path(checkpoint) / MODEL_RECORD
    if not path.exists():
        raise FileNotFoundError(f"sharded checkpoint {str(checkpoint)!r} has no {MODEL_RECORD} (written by posttrain "
                                "before 2026-11-30?): it cannot say which base model its weights belong to")
    return json.loads(path.read_text())


def adapter_tensors(state: dict[str, torch.Tensor], adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """A LoRA checkpoint's tensors as ``adapter_model.safetensors`` names them (peft drops the adapter name)."""
    marker = f".{adapter_name}."
    return {name.replace(marker, "."): tensor for name, tensor in state.items() if "lora_" in name}


def _options(model) -> StateDictOptions:
    # LoRA: the frozen base is the model directory, not part of the checkpoint (so loading is not strict:
    # the base's keys are absent by design; the adapter's are exactly those saved).
    lora = any(not param.requires_grad for param in model.parameters())
    return StateDictOptions(ignore_frozen_params=lora, strict=not lora)


def save_sharded(model, optimizer, checkpoint: str | Path) -> None:
    """Write this rank's shards of ``model`` and ``optimizer`` into ``checkpoint/dcp`` (every rank calls it)."""
    model_state, optimizer_state = get_state_dict(model, optimizer, options=_options(model))
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=str(Path(checkpoint) / SHARDS))


def load_sharded(model, optimizer, checkpoint: str | Path) -> None:
    """Load ``checkpoint/dcp`` into ``model`` and ``optimizer``, resharded to however they are placed now
    (a whole model without a process group, or FSDP2 shards on any number of ranks)."""
    options = _options(model)
    model_state, optimizer_state = get_state_dict(model, optimizer, options=options)
    state = {"model": model_state, "optimizer": optimizer_state}
    dcp.load(state, checkpoint_id=str(Path(checkpoint) / SHARDS))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"], options=options)


def load_whole(model, optimizer, checkpoint: str | Path) -> dict:
    """A one-rank checkpoint (``PolicyTrainer.save``) into ``model``'s FSDP2 shards (1 -> N): every rank reads
    the whole weights and AdamW state and keeps its shards. Returns the rest of ``trainer_state.pt``."""
    path = Path(checkpoint)
    saved = torch.load(path / "trainer_state.pt", weights_only=False)
    lora = any(not param.requires_grad for param in model.parameters())
    model_state = _whole_weights(path, lora)
    if not lora and "lm_head.weight" not in model_state and "model.embed_tokens.weight" in model_state:
        model_state["lm_head.weight"] = model_state["model.embed_tokens.weight"]  # tied: saved once
    names = [name for name, param in model.named_parameters() if param.requires_grad]  # the optimizer's order
    optimizer_state = saved.pop("optimizer")
    by_name = {
        "state": {names[index]: state for index, state in optimizer_state["state"].items()},
        "param_groups": [{**group, "params": [names[i] for i in group["params"]]} for group in optimizer_state["param_groups"]],
    }
    options = StateDictOptions(full_state_dict=True, ignore_frozen_params=lora, strict=not lora)
    set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=by_name, options=options)
    return saved


def _whole_weights(path: Path, lora: bool) -> dict[str, torch.Tensor]:
    """A one-rank checkpoint's weights under the trainer's parameter names (peft's carry the adapter name)."""
    from safetensors.torch import load_file

    if not lora:
        return {name: tensor for shard in sorted(path.glob("*.safetensors")) for name, tensor in load_file(shard).items()}
    state = load_file(path / "adapter_model.safetensors")
    return {_with_adapter_name(name): tensor for name, tensor in state.items()}


def _with_adapter_name(name: str, adapter_name: str = "default") -> str:
    """``...q_proj.lora_A.weight`` (as peft saves it) -> ``...q_proj.lora_A.default.weight`` (the parameter)."""
    head, _, leaf = name.rpartition(".")
    return f"{head}.{adapter_name}.{leaf}" if head.rsplit(".", 1)[-1].startswith("lora_") else name


def dcp_state_dict(checkpoint: str | Path) -> dict[str, torch.Tensor]:
    """The model weights of a sharded checkpoint as one plain ``{name: tensor}`` (on CPU, no process group).

    Names are the trainer's: ``model.layers.0...`` for full fine-tuning, peft's
    ``base_model.model...lora_A.default.weight`` for an adapter. Memory: the whole model (DCP's ``dcp_to_torch_save`` through a temporary file).
    """
    import tempfile

    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with tempfile.TemporaryDirectory(prefix="posttrain-dcp-") as scratch:
        whole = Path(scratch) / "whole.pt"
        dcp_to_torch_save(str(Path(checkpoint) / SHARDS), str(whole))
        return dict(torch.load(whole, weights_only=True, mmap=False)["model"])
