"""A checkpoint as the engine needs it: a full model directory.

``PolicyTrainer.save`` writes either full safetensors (with ``config.json``) or a peft
adapter (``adapter_config.json`` + ``adapter_model.safetensors``). vLLM loads full
models only, so an adapter is merged into its base in a temporary directory that
lives as long as the ``with`` block.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .models import resolve_model


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


def merge_adapter(path: Path, target: Path, base: str | None = None) -> Path:
    """Write base + LoRA deltas (merged in float32) and a tokenizer to ``target``, a plain HF directory."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_dir = adapter_base(path, base)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, str(path)).merge_and_unload()
    merged.save_pretrained(target)
    has_tokenizer = (path / "tokenizer_config.json").exists()
    AutoTokenizer.from_pretrained(path if has_tokenizer else base_dir).save_pretrained(target)
    return target


@contextmanager
def engine_model_dir(spec: str, base: str | None = None):
    """Yield a full model directory (or hub id) for ``spec``; a merged copy for an adapter checkpoint."""
    path = Path(spec).expanduser()
    if not (path / "adapter_config.json").exists():
        yield resolve_model(spec)
        return
    scratch = Path(tempfile.mkdtemp(prefix="posttrain-merged-"))
    try:
        yield str(merge_adapter(path, scratch / "model", base))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
