"""Rollout-trainer mismatch, before and after training LoRA over the fp32 base, and the cost of the correction.

    python bench/mismatch.py                         # SmolLM2-135M-Instruct, bf16 engine, LoRA r=16
    python bench/mismatch.py --model tiny-random --steps 3

One bf16 vLLM engine (in process) and one ``PolicyTrainer``; per variant, a few GRPO steps on
arithmetic prompts (reward: the right number in the answer): reseed, generate at T=0.8 with
the engine's processed log-probs, update (the mismatch is measured in the loss, old policy vs
engine, before the step changes anything), push merged weights. Variants:

- ``bf16-base none``: the LoRA base held in bf16, as before (delta merged onto bf16 weights);
- ``fp32-base none``: the base in fp32, base + delta merged in fp32, cast once for the engine;
- ``fp32-base tis`` / ``mis``: the same with the rollout correction on (step time cost).

Prints mismatch per variant (mean |log pi_train_old - log pi_vllm| per token, max, share of
tokens whose ratio leaves [1/2, 2]) averaged over the steps after the first (at step 0 the
adapter is zero), the seconds of update and of the whole step, and the machine load.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout that is not pip-installed
os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # the table, not vLLM's load log, on stdout

import torch  # noqa: E402

from posttrain.core.chat import prompt_ids  # noqa: E402
from posttrain.core.models import resolve_model  # noqa: E402
from posttrain.core.policy import PolicyTrainer, Sequences  # noqa: E402
from posttrain.core.schema import LoraConfig, TrainerConfig  # noqa: E402
from rollout.engine import EngineConfig, RolloutEngine, SamplingSpec, sampling_seed  # noqa: E402
from specialists.grpo import GrpoLoss, LossNormalizer, group_advantages, mismatch_metrics  # noqa: E402

VARIANTS = (("bf16", "none"), ("fp32", "none"), ("fp32", "tis"), ("fp32", "mis"))


def make_trainer(model_path: str, base: str, lr: float) -> PolicyTrainer:
    trainer = PolicyTrainer(model_path, TrainerConfig(lr=lr, micro_batch_size=16, lora=LoraConfig(r=16, alpha=32)))
    if base == "bf16":  # what the trainer did before: a frozen bf16 base under the fp32 adapters
        for param in trainer.model.parameters():
            if not param.requires_grad:
                param.data = param.data.to(torch.bfloat16)
    return trainer


def questions(step: int, count: int) -> list[tuple[str, int]]:
    rng = random.Random(step)
    pairs = [(rng.randint(0, 15), rng.randint(0, 15)) for _ in range(count)]
    return [(f"What is {a} + {b}? Give the final answer as a number at the end.", a + b) for a, b in pairs]


def grpo_step(engine, trainer, tokenizer, step: int, args, correction: str) -> dict[str, float]:
    start = time.perf_counter()
    problems = questions(step, args.prompts)
    prompts = [prompt_ids(tokenizer, q) for q, _ in problems]
    engine.reseed(sampling_seed(0, step))
    spec = SamplingSpec(n=args.samples, temperature=0.8, max_tokens=args.max_tokens)
    completions = engine.generate(prompts, spec).completions
    rewards = [float(str(problems[c.prompt_index][1]) in c.text) for c in completions]
    advantages = group_advantages(torch.tensor(rewards).view(args.prompts, args.samples)).flatten()
    seqs = Sequences([prompts[c.prompt_index] for c in completions], [c.token_ids for c in completions], temperature=0.8)
    tokens = sum(len(c.token_ids) for c in completions)
    loss = GrpoLoss(LossNormalizer("token_mean", tokens, len(seqs), args.max_tokens), 0.2, 0.28, 0.0, correction, 2.0)
    extras = {"advantages": advantages.tolist(), "rollout_logprobs": [c.logprobs for c in completions]}
    update = trainer.update(seqs, loss, extras) | {"tokens": tokens}
    engine.update_weights(trainer.engine_weights("bfloat16"))
    return mismatch_metrics(update, 2.0) | {"update_s": update["update_seconds"], "step_s": time.perf_counter() - start}


def run_variant(engine, model_path: str, tokenizer, base: str, correction: str, args) -> dict[str, float]:
    trainer = make_trainer(model_path, base, args.lr)
    engine.update_weights(trainer.engine_weights("bfloat16"))
    rows = [grpo_step(engine, trainer, tokenizer, step, args, correction) for step in range(args.steps)]
    later = rows[1:] or rows
    return {key: statistics.mean(row[key] for row in later) for key in later[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--lr", type=float, default=2e-4, help="the quickstart's LoRA rate")
    parser.add_argument("--variants", nargs="+", default=[f"{b}:{c}" for b, c in VARIANTS], help="base:correction, e.g. fp32:tis")
    args = parser.parse_args()
    print(f"load at start: {os.getloadavg()} on {os.cpu_count()} cores")
    model_path = resolve_model(args.model)
    engine = RolloutEngine(EngineConfig(model=model_path, dtype="bfloat16", max_model_len=512, kv_cache_gib=0.5))
    print(f"{'variant':16} {'mean|dlogp|':>11} {'max':>7} {'share>ln2':>9} {'update s':>9} {'step s':>7}")
    for base, correction in (v.split(":") for v in args.variants):
        m = run_variant(engine, model_path, engine.tokenizer, base, correction, args)
        print(
            f"{base + '-base ' + correction:16} {m['mismatch/mean_abs_logp_diff']:11.5f} {m['mismatch/max']:7.3f} "
            f"{m['mismatch/share_over_threshold']:9.4f} {m['update_s']:9.2f} {m['step_s']:7.2f}",
            flush=True,
        )
    print(f"load at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
