"""Weight sync, the trainer's side: seconds and GB/s to stream the engine's weights into shared-memory buckets,
from 1 rank (``PolicyTrainer.weight_buckets``: ``weights.WeightSender``) and from 2 FSDP2 ranks
(``ShardedTrainer.weight_buckets``: one FSDP unit all-gathered at a time over gloo, rank 0 casting each
bucket into its shared file), for SmolLM2-135M's shape and a ~1B model of the same family, full weights
and LoRA (r=16, all linear layers: the blocks holding an adapter, merged), in one run.

    python bench/weight_sync.py                    # both models
    python bench/weight_sync.py --models 135m --repeats 5

Weights are uninitialised memory of the right shapes (``to_empty``): the cost of moving bytes does not
depend on their values, and a 1B random init would take minutes on this machine. The engine's side
(loading a bucket into vLLM in place) is the same whatever the number of ranks and is measured by
``bench/grpo_step.py``; GB/s counts the bytes written in the engine's dtype (bfloat16).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

MODELS = {  # the SmolLM2 family (Llama): 135M as shipped, and a ~1B member (SmolLM2-1.7B's width, 14 layers)
    "135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3),
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=14, num_attention_heads=32, num_key_value_heads=32),
}
BUCKET_BYTES = 64 * 2**20


def build(name: str, lora: bool, materialize: bool = True):
    """The model on the meta device (no memory), made real (uninitialised) unless ``materialize`` is False:
    the sharded ranks materialise only their shards, after ``fully_shard`` (FSDP2's meta-device init)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(vocab_size=49152, tie_word_embeddings=True, **MODELS[name])
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
        if lora:
            model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
    return model.to_empty(device="cpu") if materialize else model


def one_rank(model, lora: bool, repeats: int) -> tuple[list[float], int]:
    from posttrain.core.weights import WeightSender

    sender = WeightSender(model, "bfloat16", BUCKET_BYTES)
    times, sent = [], 0
    for _ in range(repeats + 1):  # the first pass warms the shared file's pages
        start = time.perf_counter()
        sent = sum(ref.nbytes for ref in sender.buckets(model, changed_only=lora))
        times.append(time.perf_counter() - start)
    sender.close()
    return times[1:], sent


def sharded_rank(rank: int, port: int, name: str, lora: bool, repeats: int, result: str) -> None:
    from posttrain.core.group import shard_model
    from posttrain.core.sharded_weights import engine_names, sharded_engine_tensors
    from posttrain.core.weights import layer_buckets
    from rollout.weight_buckets import SharedWeights

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // 2))
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    model = build(name, lora, materialize=False)
    root = shard_model(model)
    root.to_empty(device="cpu")
    shared = SharedWeights([(clean, shape) for _, clean, shape in engine_names(model)], "bfloat16") if rank == 0 else None
    times, sent = [], 0
    for _ in range(repeats + 1):
        dist.barrier()
        start = time.perf_counter()
        sent = 0
        for bucket in layer_buckets(sharded_engine_tensors(model, "bfloat16", root, changed_only=lora), BUCKET_BYTES):
            if rank == 0:
                sent += shared.write(bucket).nbytes
        times.append(time.perf_counter() - start)
    if rank == 0:
        torch.save((times[1:], sent), result)
        shared.close()
    dist.destroy_process_group()


def two_ranks(name: str, lora: bool, repeats: int) -> tuple[list[float], int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as scratch:
        result = os.path.join(scratch, "r.pt")
        mp.spawn(sharded_rank, args=(port, name, lora, repeats, result), nprocs=2)
        return torch.load(result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="135m,1b")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"load: {load}\n{'model':6s} {'weights':8s} {'ranks':>5s} {'GB sent':>8s} {'seconds (median)':>17s} {'GB/s':>6s}")
    for name in args.models.split(","):
        for lora in (False, True):
            for ranks in (1, 2):
                if ranks == 1:
                    times, sent = one_rank(build(name, lora), lora, args.repeats)
                else:
                    times, sent = two_ranks(name, lora, args.repeats)
                seconds = statistics.median(times)
                kind = "lora" if lora else "full"
                print(f"{name:6s} {kind:8s} {ranks:5d} {sent / 1e9:8.3f} {seconds:17.3f} {sent / 1e9 / seconds:6.2f}", flush=True)
    print(f"load after: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")


if __name__ == "__main__":
    main()
