"""One FSDP2 training step of the trainer group on a ~1B random model of the SmolLM2 family: tokens/s and MFU.

    python bench/fsdp_step.py                      # 1 rank on this machine's GPU (NCCL), 8 x 1024 tokens
    python bench/fsdp_step.py --device cpu --layers 2 --batch 2 --length 64    # a dry run of the path on CPU (gloo)

It runs what ``trainer.world_size`` runs (``posttrain.core.group.ShardedTrainer``: FSDP2 per decoder layer,
bfloat16 autocast over float32 master weights, AdamW) as rank 0 of a group of one, on a random model
saved to a temporary directory, with an SFT loss over every token. Step 1 warms up; the median of the
next ``--steps`` is reported. MFU = (6 x parameters + 12 x layers x hidden x length) FLOPs per token x
tokens/s over the GPU's dense bfloat16 peak (``--peak-tflops``; H100/H200 SXM: 989).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, LlamaConfig  # noqa: E402

from posttrain.core.policy import Sequences  # noqa: E402
from posttrain.core.schema import TrainerConfig  # noqa: E402


class TokenMeanNll:
    """``specialists.sft.SftLoss`` without its module's imports (the GPU box has no Ray or vLLM)."""

    def __init__(self, num_tokens: int):
        self.num_tokens = num_tokens

    def __call__(self, student, extras, installed=None):
        nll = -(student.logprobs() * student.mask_B_T).sum()
        return nll / self.num_tokens, {}


def random_model(directory: Path, layers: int) -> int:
    config = LlamaConfig(
        vocab_size=49152, hidden_size=2048, intermediate_size=8192, num_hidden_layers=layers,
        num_attention_heads=32, num_key_value_heads=32, tie_word_embeddings=True, pad_token_id=2,
    )
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(directory)
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--layers", type=int, default=14, help="14 layers at SmolLM2-1.7B's width: 1.0B parameters")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    args = parser.parse_args()
    from posttrain.core.group import ShardedTrainer

    with tempfile.TemporaryDirectory(prefix="fsdp-step-") as scratch:
        params = random_model(Path(scratch), args.layers)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        cfg = TrainerConfig(micro_batch_size=args.batch, world_size=1, lr=1e-5, num_gpus=1 if args.device == "cuda" else 0)
        trainer = ShardedTrainer(scratch, cfg, 0, os.cpu_count() or 1, 0, f"tcp://127.0.0.1:{port}")
        generator = torch.Generator().manual_seed(0)
        prompt, completion = 16, args.length - 16
        prompts = torch.randint(3, 49152, (args.batch, prompt), generator=generator).tolist()
        completions = torch.randint(3, 49152, (args.batch, completion), generator=generator).tolist()
        seqs = Sequences(prompts, completions)
        seconds = []
        for _ in range(args.steps + 1):
            seconds.append(trainer.update(seqs, TokenMeanNll(args.batch * completion), {})["update_seconds"])
        step = statistics.median(seconds[1:])
        tokens = args.batch * args.length
        flops_per_token = 6 * params + 12 * args.layers * 2048 * args.length
        tokens_per_s = tokens / step
        mfu = flops_per_token * tokens_per_s / (args.peak_tflops * 1e12)
        name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
        print(f"{name}: {params / 1e9:.2f}B parameters, {tokens} tokens/step, step {step:.3f} s (median of {args.steps}), "
              f"{tokens_per_s:,.0f} tokens/s, MFU {mfu:.1%} of {args.peak_tflops:g} TFLOPs, peak {trainer.peak_memory_gib():.1f} GiB")


if __name__ == "__main__":
    main()
