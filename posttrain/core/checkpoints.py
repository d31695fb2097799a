"""A checkpoint as the engine (and ``posttrain export``) needs it: a full model directory.

``PolicyTrainer.save`` writes either full safetensors (with ``config.json``) or a peft
adapter (``adapter_config.json`` + ``adapter_model.safetensors``); a trainer group writes
DCP shards (``sharded_checkpoint``). ``CheckpointWeights`` says what a checkpoint holds,
however stored (``saved_checkpoint`` reads all three). vLLM loads full
models only, so an adapter is merged into its base in a temporary directory that
lives as long as the ``with`` block.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from .models import resolve_model
from .sharded_checkpoint import adapter_tensors, dcp_state_dict, is_sharded, read_model_record

log = logging.getLogger("posttrain.checkpoints")


def adapter_base(path: Path, base: str | None = None) -> str:
    """The base model directory of the adapter at ``path`` (``base`` overrides the adapter's record)."""
    recorded = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
    spec = base or recorded
    if not spec:
        raise ValueError(f"adapter {str(path)!r} does not record its base model; pass --base")
    resolved = resolve_model(spec)
    if Path(spec).is_absolute() and not Path(resolved).is_dir():
        raise FileNotFoundError(f"adapter {str(path)!r}: its base {spec!r} is not on this machine; pass --base")
    return resolved


@dataclass
class CheckpointWeights:
    """A checkpoint's weights, however stored: ``load()`` returns them as one state dict.

    ``adapter`` is the peft LoRA config (``adapter_config.json`` as a dict) when the state dict
    holds LoRA tensors (peft names) over ``base``; None when it holds full HF-named weights of a
    model shaped like ``base``.
    """

    origin: str  # what the user named, for messages and the provenance file
    base: str  # HF model directory: the config, and the base weights of an adapter
    tokenizer: str  # directory with the tokenizer and its chat template
    adapter: dict | None
    load: Callable[[], dict[str, torch.Tensor]]
    trust_remote_code: bool = False  # the base model runs its own code (the run's model.trust_remote_code)


def saved_checkpoint(path: str | Path, base: str | None = None, trust_remote_code: bool = False) -> CheckpointWeights:
    """The weights of a directory ``PolicyTrainer.save`` wrote: a peft adapter, or full safetensors."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if is_sharded(path):
        return _sharded_checkpoint(path, base, trust_remote_code)
    if (path / "adapter_config.json").exists():
        base_dir = adapter_base(path, base)
        adapter = json.loads((path / "adapter_config.json").read_text())
        load = lambda: load_file(path / "adapter_model.safetensors")  # noqa: E731
    elif (path / "config.json").exists():
        base_dir, adapter = str(path), None
        load = lambda: {k: v for shard in sorted(path.glob("*.safetensors")) for k, v in load_file(shard).items()}  # noqa: E731
    else:
        raise FileNotFoundError(f"{str(path)!r} holds neither a LoRA adapter (adapter_config.json) nor a model (config.json)")
    tokenizer = str(path) if (path / "tokenizer_config.json").exists() else base_dir
    return CheckpointWeights(str(path), base_dir, tokenizer, adapter, load, trust_remote_code)


def _sharded_checkpoint(path: Path, base: str | None, trust_remote_code: bool) -> CheckpointWeights:
    """A trainer group's checkpoint (``sharded_checkpoint``): its shards read back whole on ``load()``."""
    record = read_model_record(path)
    base_dir = resolve_model(base or record["base"])
    if not Path(base_dir).is_dir():
        raise FileNotFoundError(f"sharded checkpoint {str(path)!r}: its base {record['base']!r} is not on this machine; pass --base")
    adapter = record["adapter"]
    if adapter is None:
        load = lambda: dcp_state_dict(path)  # noqa: E731
    else:
        load = lambda: adapter_tensors(dcp_state_dict(path))  # noqa: E731
    tokenizer = str(path) if (path / "tokenizer_config.json").exists() else base_dir
    return CheckpointWeights(str(path), base_dir, tokenizer, adapter, load, trust_remote_code)


def merged_model(weights: CheckpointWeights, dtype: str):
    """The full model: base + LoRA deltas merged in float32 (or the full weights), cast once to ``dtype``."""
    from peft import PeftConfig, get_peft_model, set_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(weights.base, dtype=torch.float32, trust_remote_code=weights.trust_remote_code)
    if weights.adapter is not None:
        peft_model = get_peft_model(model, PeftConfig.from_peft_type(**{**weights.adapter, "inference_mode": True}))
        result = set_peft_model_state_dict(peft_model, weights.load())
        if result.unexpected_keys:
            raise ValueError(f"{weights.origin}: adapter tensors the model does not have: {result.unexpected_keys[:3]}")
        model = peft_model.merge_and_unload()
    else:
        missing, unexpected = model.load_state_dict(weights.load(), strict=False)
        tied = getattr(model.config, "tie_word_embeddings", False)
        missing = [name for name in missing if not (tied and name.startswith("lm_head."))]
        if missing or unexpected:
            raise ValueError(f"{weights.origin} does not match {weights.base}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model.to(getattr(torch, dtype))


def write_model_dir(weights: CheckpointWeights, out: Path, dtype: str) -> None:
    """A plain HF directory: config, safetensors, generation config, tokenizer + chat template."""
    model = merged_model(weights, dtype)
    model.save_pretrained(out)
    save_tokenizer(weights, out)


def save_tokenizer(weights: CheckpointWeights, out: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(weights.tokenizer, trust_remote_code=weights.trust_remote_code)
    if not tokenizer.chat_template:
        log.warning("%s: the tokenizer has no chat template; tools that format chats will need one", weights.tokenizer)
    tokenizer.save_pretrained(out)


def merge_adapter(path: Path, target: Path, base: str | None = None, trust_remote_code: bool = False) -> Path:
    """Write base + LoRA deltas (merged in float32), or a sharded checkpoint's weights, and a tokenizer to
    ``target``, a plain HF directory."""
    write_model_dir(saved_checkpoint(path, base, trust_remote_code), target, "float32")
    return target


@contextmanager
def engine_model_dir(spec: str, base: str | None = None, trust_remote_code: bool = False):
    """Yield a full model directory (or hub id) for ``spec``; a merged copy for an adapter or sharded checkpoint."""
    path = Path(spec).expanduser()
    if not ((path / "adapter_config.json").exists() or is_sharded(path)):
        yield resolve_model(spec)
        return
    scratch = Path(tempfile.mkdtemp(prefix="posttrain-merged-"))
    try:
        yield str(merge_adapter(path, scratch / "model", base, trust_remote_code))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
