"""``posttrain export RUN_OR_CHECKPOINT --out DIR [--adapter] [--dtype D] [--push-to-hub REPO]``.

Turns a checkpoint into what other tools load as is: a plain Hugging Face model directory
(``config.json``, safetensors, tokenizer and chat template, generation config) that
``transformers.AutoModelForCausalLM.from_pretrained`` and ``vllm.LLM`` read directly, or,
with ``--adapter``, a peft LoRA adapter directory (for ``PeftModel.from_pretrained``).

A LoRA checkpoint is merged into its base in float32 (the base the adapter records, the one
it was trained over) and cast once to ``--dtype``: by default the run's ``model.engine_dtype``,
so the exported model is, weight for weight, the one the run's own eval measured.

Export takes a ``CheckpointWeights`` (``posttrain/core/checkpoints.py``) -- where the weights come
from, as one state dict -- so a trainer group's sharded checkpoint exports as a one-rank one does
(its shards read back whole, on this process: the merged model's memory, not the optimizer's).
It never starts Ray or an engine.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path

import yaml
from safetensors.torch import save_file

from .core.checkpoints import CheckpointWeights, save_tokenizer, saved_checkpoint, write_model_dir
from .evaluate import find_checkpoint, own_recipe

DTYPES = ("float32", "bfloat16", "float16")
PROVENANCE = "posttrain_export.json"


def write_adapter_dir(weights: CheckpointWeights, out: Path, base_id: str | None = None) -> None:
    """A peft adapter directory; ``base_id`` (e.g. a hub id) replaces the base path it records."""
    if weights.adapter is None:
        raise ValueError(f"--adapter: {weights.origin} holds full weights, not a LoRA adapter; export it merged (drop --adapter)")
    config = {**weights.adapter, "base_model_name_or_path": base_id or weights.base, "inference_mode": True}
    out.mkdir(parents=True, exist_ok=True)
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    save_file({k: v.contiguous() for k, v in weights.load().items()}, out / "adapter_model.safetensors", metadata={"format": "pt"})
    save_tokenizer(weights, out)


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
    engine_dtype = _run_model_setting(spec, "engine_dtype")
    return engine_dtype if engine_dtype in DTYPES else "float32"


def run_trusts_remote_code(spec: str) -> bool:
    """The run's ``model.trust_remote_code``: its model's own code was allowed when it trained."""
    return _run_model_setting(spec, "trust_remote_code") is True


def _run_model_setting(spec: str, field: str):
    recipe = own_recipe(spec)
    return None if recipe is None else ((yaml.safe_load(recipe.read_text()) or {}).get("model") or {}).get(field)


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
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="the base model needs its own code (default: the run's model.trust_remote_code)")
    parser.add_argument("--push-to-hub", default=None, metavar="REPO", help="upload the export to this hub model repo")
    parser.add_argument("--private", action="store_true", help="--push-to-hub: create the repo private")


def run_export_command(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    try:
        trust = args.trust_remote_code or run_trusts_remote_code(args.checkpoint)
        weights = saved_checkpoint(find_checkpoint(args.checkpoint), args.base, trust)
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
