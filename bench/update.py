"""The GRPO update on the same tokens: our ``PolicyTrainer.update`` vs a TRL-style forward + backward.

    nice -n 15 python bench/update.py [--repeats 3] [--variants ...]

One batch shaped like a GRPO step of ``bench/grpo_step.py`` (SmolLM2-135M-Instruct, full
fine-tuning, bf16 autocast over fp32 weights; 32 sequences: arithmetic chat prompts + completions
of 8..64 random tokens), the same batch for every variant. Each variant is a full optimizer step
(forward, backward, clip, AdamW) from the same weights; the median of ``--repeats`` after one
warm-up. Variants:

- ``trl``: what TRL 1.16's ``GRPOTrainer`` computes per step: ``model(input_ids, attention_mask,
  logits_to_keep)`` -> logits / T -> ``selective_log_softmax`` -> loss, backward, clip, fused AdamW;
- ``ours``: ``PolicyTrainer.update`` with ``GrpoLoss`` (rollout correction on) as configured now;
- ``ours:<field>=<value>,...``: the same with trainer fields overridden, e.g.
  ``ours:logprob_chunk_tokens=0`` (no chunked head recompute), ``ours:micro_batch_size=8``.

Prints seconds per step side by side with the load (``uptime``).
"""

from __future__ import annotations

import argparse
import copy
import functools
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import yaml  # noqa: E402

from posttrain.core.models import resolve_model  # noqa: E402
from posttrain.core.policy import PolicyTrainer, Sequences  # noqa: E402
from posttrain.core.schema import TrainerConfig  # noqa: E402
from specialists.grpo import GrpoLoss, LossNormalizer  # noqa: E402

BATCH, MAX_COMPLETION, TEMPERATURE = 32, 64, 1.0


def batch(tokenizer, seed: int = 0) -> tuple[Sequences, dict]:
    rng = random.Random(seed)
    prompts, completions = [], []
    for index in range(BATCH // 4):
        messages = [{"role": "user", "content": f"What is {rng.randint(1, 15)} + {rng.randint(1, 15)}?"}]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        for _ in range(4):
            prompts.append(ids)
            completions.append([rng.randrange(100, 40000) for _ in range(rng.randint(8, MAX_COMPLETION))])
    seqs = Sequences(prompts, completions, [[1] * len(c) for c in completions], temperature=TEMPERATURE)
    extras = {
        "advantages": [rng.gauss(0, 1) for _ in completions],
        "rollout_logprobs": [[-rng.random() * 3 for _ in c] for c in completions],
    }
    return seqs, extras


def ours_step(trainer: PolicyTrainer, seqs: Sequences, extras: dict) -> float:
    extras = copy.deepcopy(extras)
    tokens = sum(map(len, seqs.completion_ids))
    loss = GrpoLoss(LossNormalizer("token_mean", tokens, len(seqs), MAX_COMPLETION), correction="tis")
    start = time.perf_counter()
    trainer.update(seqs, loss, extras)
    return time.perf_counter() - start


def trl_step(model, optimizer, seqs: Sequences, extras: dict, pad_id: int) -> float:
    from trl.trainer.utils import selective_log_softmax

    start = time.perf_counter()
    prompt_len = max(map(len, seqs.prompt_ids))
    completion_len = max(map(len, seqs.completion_ids))
    rows, attention, completion_mask = [], [], []
    for prompt, completion in zip(seqs.prompt_ids, seqs.completion_ids):  # TRL: left-padded prompts, right-padded completions
        left, right = prompt_len - len(prompt), completion_len - len(completion)
        rows.append([pad_id] * left + prompt + completion + [pad_id] * right)
        attention.append([0] * left + [1] * (len(prompt) + len(completion)) + [0] * right)
        completion_mask.append([1] * len(completion) + [0] * right)
    input_ids, attention_mask = torch.tensor(rows), torch.tensor(attention)
    mask = torch.tensor(completion_mask, dtype=torch.float32)
    completion_ids = input_ids[:, prompt_len:]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=completion_len + 1).logits
        logits = logits[:, :-1, :] / TEMPERATURE
        logps = selective_log_softmax(logits, completion_ids)
    advantages = torch.tensor(extras["advantages"]).unsqueeze(1)
    ratio = torch.exp(logps - logps.detach())
    loss = (-(ratio * advantages) * mask).sum() / mask.sum()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def trainer_variant(path: str, spec: str) -> PolicyTrainer:
    fields = {"lr": 1e-6, "micro_batch_size": BATCH, "autocast": "bfloat16"}
    for item in filter(None, spec.split(":", 1)[1].split(",") if ":" in spec else []):
        key, value = item.split("=")
        fields[key] = yaml.safe_load(value)  # pydantic checks the type
    return PolicyTrainer(path, TrainerConfig(**fields), seed=0, threads=os.cpu_count())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=["trl", "ours"])
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model("smollm2-135m-instruct")
    tokenizer = AutoTokenizer.from_pretrained(path)
    seqs, extras = batch(tokenizer)
    tokens = sum(len(p) + len(c) for p, c in zip(seqs.prompt_ids, seqs.completion_ids))
    print(f"batch: {len(seqs)} sequences, {tokens} tokens ({sum(map(len, seqs.completion_ids))} completion); load {os.getloadavg()}")
    runs = {}
    for spec in args.variants:  # every variant built first, then run in rounds: load changes hit all alike
        if spec == "trl":
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=True)
            runs[spec] = functools.partial(trl_step, model, optimizer, seqs, extras, tokenizer.pad_token_id or 0)
        else:
            runs[spec] = functools.partial(ours_step, trainer_variant(path, spec), seqs, extras)
        runs[spec]()  # warm-up
    steps: dict[str, list[float]] = {spec: [] for spec in runs}
    for _ in range(args.repeats):
        for spec, run in runs.items():
            steps[spec].append(run())
    print(f"load after {os.getloadavg()}")
    for spec, seconds in steps.items():
        ratio = statistics.median(seconds) / statistics.median(steps[args.variants[0]])
        print(f"{spec:<40} {statistics.median(seconds):7.2f} s/step  ({ratio:.2f}x {args.variants[0]})  {[round(x, 2) for x in seconds]}")

if __name__ == "__main__":
    main()
