"""Memory per trainer rank of a full fine-tune by the trainer group's design (posttrain/core/group.py), computed.

    python bench/fsdp_memory.py                      # Llama-2-7B shape on 8 ranks, 4096 tokens per micro-batch
    python bench/fsdp_memory.py --ranks 16 --tokens 8192

The design: float32 master weights, gradients and AdamW moments (2 x float32), all FSDP2-sharded over
the ranks (16 bytes per parameter / ranks); forward/backward under bfloat16 autocast; FSDP2 all-gathers
one decoder layer's float32 weights at a time (plus the next one, prefetched) and holds that layer's
float32 gradient until reduce-scattered; the root unit (embeddings, final norm, output head) stays
unsharded from forward to the end of backward, with its gradient. Activations are kept (no activation
checkpointing of decoder layers): per layer and token, 34 x hidden bytes in bfloat16 (Korthikanti et al.
2022, "Reducing Activation Recomputation in Large Transformer Models", the s*b*h*34 term; the attention
score term is absent with SDPA / flash attention). The log-prob head runs in ``logprob_chunk_tokens``
chunks: one chunk's float32 logits, their softmax and gradient (3 x chunk x vocab x 4 bytes).

Parameters are counted on a meta-device model built from the config (no weights, no download).
"""

from __future__ import annotations

import argparse

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

GiB = 2**30


def llama2_7b() -> LlamaConfig:
    return LlamaConfig(
        hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=32, vocab_size=32000, tie_word_embeddings=False,
    )


def plan(config, ranks: int, tokens: int, chunk_tokens: int = 1024) -> dict[str, float]:
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    total = sum(p.numel() for p in model.parameters())
    layer = sum(p.numel() for p in model.model.layers[0].parameters())
    root = total - layer * config.num_hidden_layers
    return {
        "parameters (B)": total / 1e9,
        "sharded weights+grads+AdamW (16 B/param / ranks)": 16 * total / ranks / GiB,
        "gathered layers (2 x fp32 weights + 1 x fp32 grad)": 3 * 4 * layer / GiB,
        "root unit unsharded (fp32 weights + grads)": 2 * 4 * root / GiB,
        f"activations ({tokens} tokens, bf16, 34*h per layer-token)": 34 * config.hidden_size * tokens * config.num_hidden_layers / GiB,
        f"log-prob head chunk ({chunk_tokens} tokens)": 3 * 4 * chunk_tokens * config.vocab_size / GiB,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=4096, help="tokens per micro-batch on one rank")
    args = parser.parse_args()
    rows = plan(llama2_7b(), args.ranks, args.tokens)
    for name, value in rows.items():
        print(f"{name:62s} {value:8.2f}" + ("" if name.startswith("parameters") else " GiB"))
    print(f"{'total per rank':62s} {sum(v for k, v in rows.items() if not k.startswith('parameters')):8.2f} GiB")


if __name__ == "__main__":
    main()
