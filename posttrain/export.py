"""``posttrain export RUN_OR_CHECKPOINT --out DIR [--adapter] [--dtype D] [--push-to-hub REPO]``.

Turns a checkpoint into what other tools load as is: a plain Hugging Face model directory
(``config.json``, safetensors, tokenizer and chat template, generation config) that
``transformers.AutoModelForCausalLM.from_pretrained`` and ``vllm.LLM`` read directly, or,
with ``--adapter``, a peft LoRA adapter directory (for ``PeftModel.from_pretrained``).

A LoRA checkpoint is merged into its base in float32 (the base the adapter records, the one
it was trained over) and cast once to ``--dtype``: by default the run's ``model.engine_dtype``,
so the exported model is, weight for weight, the one the run's own eval measured.

Export takes a ``CheckpointWeights`` -- where the weights come from, as one state dict --
so a checkpoint stored another way (e.g. sharded) needs only another constructor beside
``saved_checkpoint``. It never starts Ray or an engine.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file

from .core.checkpoints import adapter_base
from .evaluate import find_checkpoint, own_recipe

log = logging.getLogger("posttrain.export")
DTYPES = ("float32", "bfloat16", "float16")
PROVENANCE = "posttrain_export.json"


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


def saved_checkpoint(path: str | Path, base: str | None = None) -> CheckpointWeights:
    """The weights of a directory ``PolicyTrainer.save`` wrote: a peft adapter, or full safetensors."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
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
    return CheckpointWeights(str(path), base_dir, tokenizer, adapter, load)


def merged_model(weights: CheckpointWeights, dtype: str):
    """The full model: base + LoRA deltas merged in float32 (or the full weights), cast once to ``dtype``."""
    from peft import PeftConfig, get_peft_model, set_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(weights.base, dtype=torch.float32)
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
    _save_tokenizer(weights, out)


def write_adapter_dir(weights: CheckpointWeights, out: Path, base_id: str | None = None) -> None:
    """A peft adapter directory; ``base_id`` (e.g. a hub id) replaces the base path it records."""
    if weights.adapter is None:
        raise ValueError(f"--adapter: {weights.origin} holds full weights, not a LoRA adapter; export it merged (drop --adapter)")
    config = {**weights.adapter, "base_model_name_or_path": base_id or weights.base, "inference_mode": True}
    out.mkdir(parents=True, exist_ok=True)
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    save_file({k: v.contiguous() for k, v in weights.load().items()}, out / "adapter_model.safetensors", metadata={"format": "pt"})
    _save_tokenizer(weights, out)


def _save_tokenizer(weights: CheckpointWeights, out: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(weights.tokenizer)
    if not tokenizer.chat_template:
        log.warning("%s: the tokenizer has no chat template; tools that format chats will need one", weights.tokenizer)
    tokenizer.save_pretrained(out)


def export_checkpoint(weights: CheckpointWeights, out: Path, adapter: bool = False, dtype: str = "float32",
                      base_id: str | None = None) -> Path:
    """Write ``weights`` to ``out`` (merged model, or adapter); written beside it and renamed when whole."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"--out {str(out)!r} exists and is not empty; name a new directory")
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    if adapter:
        write_adapter_dir(weights, partial, base_id)
    else:
        write_model_dir(weights, partial, dtype)
    provenance = {"source": weights.origin, "base": weights.base, "format": "adapter" if adapter else "merged",
                  "dtype": None if adapter else dtype, "lora_merged_in": "float32" if weights.adapter and not adapter else None}
    (partial / PROVENANCE).write_text(json.dumps(provenance, indent=2))
    if out.exists():
        out.rmdir()  # empty, checked above
    partial.rename(out)
    return out


def default_dtype(spec: str) -> str:
    """The run's ``model.engine_dtype`` (what its eval measured) when ``spec`` belongs to a run, else float32."""
    recipe = own_recipe(spec)
    if recipe is not None:
        engine_dtype = ((yaml.safe_load(recipe.read_text()) or {}).get("model") or {}).get("engine_dtype")
        if engine_dtype in DTYPES:
            return engine_dtype
    return "float32"


def push_to_hub(out: Path, repo: str, private: bool) -> str:
    """Upload ``out`` to the hub model repo ``repo`` (created if missing); its URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo, repo_type="model", private=private, exist_ok=True)
    return str(api.upload_folder(folder_path=str(out), repo_id=repo, repo_type="model",
                                 commit_message="posttrain export"))


def add_arguments(parser) -> None:
    parser.add_argument("checkpoint", help="a run directory (its newest checkpoint) or a checkpoints/step_N directory")
    parser.add_argument("--out", type=Path, required=True, help="a new directory for the exported model")
    parser.add_argument("--adapter", action="store_true", help="write the peft LoRA adapter instead of the merged model")
    parser.add_argument("--dtype", choices=DTYPES, default=None,
                        help="weights of the merged model (default: the run's model.engine_dtype, else float32)")
    parser.add_argument("--base", default=None, help="base model of a LoRA checkpoint (default: the adapter's record)")
    parser.add_argument("--base-id", default=None, help="--adapter: base recorded in adapter_config.json (e.g. a hub id)")
    parser.add_argument("--push-to-hub", default=None, metavar="REPO", help="upload the export to this hub model repo")
    parser.add_argument("--private", action="store_true", help="--push-to-hub: create the repo private")


def run_export_command(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    try:
        weights = saved_checkpoint(find_checkpoint(args.checkpoint), args.base)
        dtype = args.dtype or default_dtype(args.checkpoint)
        out = export_checkpoint(weights, args.out, adapter=args.adapter, dtype=dtype, base_id=args.base_id)
    except (FileNotFoundError, FileExistsError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    what = "peft adapter" if args.adapter else f"merged model ({dtype})"
    print(f"{weights.origin} -> {out}: {what}, tokenizer and chat template")
    if args.push_to_hub:
        try:
            print(f"pushed: {push_to_hub(out, args.push_to_hub, args.private)}")
        except Exception as error:  # noqa: BLE001 - offline, no token, no rights: the export itself is done
            print(f"error: could not push to the hub repo {args.push_to_hub!r}: {type(error).__name__}: "
                  f"{str(error).splitlines()[0] if str(error) else ''}\n  The export in {out} is complete; push it "
                  f"later with `hf upload {args.push_to_hub} {out}` (after `hf auth login`).", file=sys.stderr)
            return 1
    return 0
