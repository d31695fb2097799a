"""A GRPO step, ours vs TRL's ``GRPOTrainer``, on the identical workload, side by side in one run.

    nice -n 15 python bench/grpo_step.py [--steps 5] [--trl-vllm]

Workload (both sides): SmolLM2-135M-Instruct (the embedded model), 8 arithmetic
prompts x 4 samples a step (the math task's own prompts, chat-formatted by our
formatter; TRL gets the same text), at most 64 new tokens, temperature 1.0, full
fine-tuning (no LoRA), bf16 autocast over fp32 master weights, one optimizer step
per batch, no KL, ``--steps`` steps. Reward: ``math_verify`` against the gold.

Each side runs in a fresh process (``--side``):

- ``trl``: TRL 1.16 ``GRPOTrainer`` with HF ``generate`` (``--trl-vllm``: colocated
  vLLM instead, where the CPU build lets it run). Phases are timed by wrapping its
  methods: ``generate`` (``_generate``), ``reward`` (``_calculate_rewards``),
  ``prepare_other`` (the rest of ``_generate_and_score_completions``), ``update``
  (the rest of the optimizer step: forward, backward, clip, AdamW).
- ``ours``: the real run (``posttrain.runner.train_recipe`` on a recipe built here:
  engine + trainer Ray actors, ``GrpoLoop``); the phases are the loop's own
  ``time/<phase>`` metrics from ``metrics.jsonl``.

A step's figure is the median over steps after the first (the first pays warm-up).
On a machine whose memory others fill, Ray's memory monitor may kill our trainer (it
watches the whole node): ``RAY_memory_monitor_refresh_ms=0`` turns it off for this run.
The machine's load (``uptime``) is printed before and after each side; on a shared
2-core machine rerun when the load is not ~0.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != Path(__file__).resolve().parent]
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PROMPTS, SAMPLES, MAX_TOKENS, TEMPERATURE, LR, SEED = 8, 4, 64, 1.0, 1e-6, 0
SOURCE = {"kind": "arithmetic", "weight": 1.0, "max_operand": 15, "ops": "+-", "terms": 2}


def load() -> str:
    return os.popen("uptime").read().strip().split("load average:")[-1].strip()


def recipe_dict(steps: int, output_dir: str) -> dict:
    return {
        "run": {"name": "bench_grpo_step", "output_dir": output_dir, "seed": SEED, "resume": False},
        "model": {"path": "smollm2-135m-instruct", "max_model_len": 512},
        "engine": {"kv_cache_gib": 1.0},
        "trainer": {"lr": LR, "micro_batch_size": PROMPTS * SAMPLES, "autocast": "bfloat16"},
        "task": {"domain": "math", "sources": [SOURCE], "rewards": [{"name": "math_verify", "weight": 1.0}]},
        "grpo": {
            "steps": steps, "prompts_per_step": PROMPTS, "samples_per_prompt": SAMPLES, "max_tokens": MAX_TOKENS,
            "temperature": TEMPERATURE, "rollout_correction": "tis",
        },
        "eval": {"before": False, "after": False},
    }


def workload_prompts(steps: int) -> list[dict]:
    """The prompts our loop trains on, step by step, as the formatted text TRL tokenizes itself."""
    from transformers import AutoTokenizer

    from posttrain.core.chat import prompt_ids
    from posttrain.core.models import resolve_model
    from posttrain.recipe import validate_recipe
    from posttrain.core.tasks import make_task

    recipe = validate_recipe(recipe_dict(steps, tempfile.gettempdir()))
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(recipe.model.path))
    task, mode = make_task(recipe.task, seed=SEED), recipe.modes["default"]
    rows = []
    for step in range(steps):
        for problem in task.sample(step, PROMPTS):
            ids = prompt_ids(tokenizer, task.user_message(problem), system=task.system_prompt(problem), mode=mode)
            rows.append({"prompt": tokenizer.decode(ids), "answer": problem.answer})
    return rows


# ---- TRL side -----------------------------------------------------------------------------------


def run_trl(steps: int, use_vllm: bool) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from posttrain.core.models import resolve_model
    from rewards.math import math_verify

    torch.set_num_threads(os.cpu_count() or 1)
    path = resolve_model("smollm2-135m-instruct")
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    rows = workload_prompts(steps)

    def reward(prompts, completions, answer, **_):
        return [math_verify(p, c, answer=a) for p, c, a in zip(prompts, completions, answer)]

    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl_bench_"), max_steps=steps, per_device_train_batch_size=PROMPTS * SAMPLES,
        num_generations=SAMPLES, max_completion_length=MAX_TOKENS, temperature=TEMPERATURE, learning_rate=LR,
        bf16=True, use_cpu=True, beta=0.0, logging_steps=1, report_to=[], save_strategy="no", seed=SEED,
        shuffle_dataset=False, dataloader_num_workers=0, use_vllm=use_vllm, vllm_mode="colocate",
        vllm_gpu_memory_utilization=0.2, vllm_max_model_length=512, vllm_enable_sleep_mode=False,
    )
    trainer = GRPOTrainer(model=model, args=config, reward_funcs=[reward], train_dataset=Dataset.from_list(rows),
                          processing_class=tokenizer)
    phases: list[dict[str, float]] = []
    current: dict[str, float] = {}

    def timed(name, method):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                current[name] = current.get(name, 0.0) + time.perf_counter() - start
        return wrapper

    trainer._generate = timed("generate", trainer._generate)
    trainer._calculate_rewards = timed("reward", trainer._calculate_rewards)
    trainer._generate_and_score_completions = timed("prepare", trainer._generate_and_score_completions)

    class StepClock(TrainerCallback):
        def on_step_begin(self, *_, **__):
            current.clear()
            current["_start"] = time.perf_counter()

        def on_step_end(self, *_, **__):
            step = time.perf_counter() - current.pop("_start")
            prepare = current.pop("prepare", 0.0)
            split = {"generate": current.get("generate", 0.0), "reward": current.get("reward", 0.0)}
            split["prepare_other"] = prepare - split["generate"] - split["reward"]
            split["update"] = step - prepare
            phases.append(split | {"step": step})

    trainer.add_callback(StepClock())
    trainer.train()
    return {"side": "trl" + ("+vllm" if use_vllm else ""), "steps": phases}


# ---- our side -----------------------------------------------------------------------------------


def run_ours(steps: int) -> dict:
    import ray

    from posttrain.recipe import validate_recipe
    from posttrain.runner import train_recipe

    output = tempfile.mkdtemp(prefix="ours_bench_")
    recipe = validate_recipe(recipe_dict(steps, output))
    ray.init(address="local", include_dashboard=False, logging_level="WARNING")
    try:
        train_recipe(recipe)
    finally:
        ray.shutdown()
    rows = [json.loads(line) for line in (Path(output) / "bench_grpo_step" / "metrics.jsonl").read_text().splitlines()]
    phases = [{key[5:]: value for key, value in row.items() if key.startswith("time/")} for row in rows]
    rewards = [row.get("reward/task_mean", 0.0) for row in rows]
    return {"side": "ours", "steps": phases, "reward": rewards}


# ---- the comparison -----------------------------------------------------------------------------


def run_side(side: str, steps: int, trl_vllm: bool) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        out = handle.name
    before = load()
    command = [sys.executable, __file__, "--side", side, "--steps", str(steps), "--out", out]
    command += ["--trl-vllm"] if trl_vllm else []
    start = time.perf_counter()
    finished = subprocess.run(command, cwd=ROOT)
    result = json.loads(Path(out).read_text()) if finished.returncode == 0 and Path(out).stat().st_size else {}
    result.update(load_before=before, load_after=load(), wall_s=time.perf_counter() - start, rc=finished.returncode)
    result.setdefault("side", side)
    return result


def medians(result: dict) -> dict[str, float]:
    later = result.get("steps", [])[1:]
    keys = sorted({key for step in later for key in step})
    return {key: statistics.median(step.get(key, 0.0) for step in later) for key in keys}


def report(results: list[dict]) -> None:
    table = {r["side"]: medians(r) for r in results}
    phases = ["generate", "reward", "prepare_other", "logprobs", "update", "weight_sync", "step"]
    print(f"\nmedian seconds per step over steps 2..N ({PROMPTS} prompts x {SAMPLES} samples, {MAX_TOKENS} tokens, full FT, bf16)")
    print(f"{'phase':<14}" + "".join(f"{side:>12}" for side in table))
    for phase in phases:
        if any(phase in row for row in table.values()):
            print(f"{phase:<14}" + "".join(f"{row.get(phase, float('nan')):>12.2f}" for row in table.values()))
    for r in results:
        print(f"{r['side']}: rc {r['rc']}, wall {r['wall_s']:.0f} s, load before {r['load_before']} after {r['load_after']}"
              + (f", task reward per step {[round(x, 2) for x in r['reward']]}" if "reward" in r else ""))
    ours = table.get("ours", {}).get("step")
    for side, row in table.items():
        if side != "ours" and ours and row.get("step"):
            print(f"ours/{side} = {ours / row['step']:.2f}  (target <= 0.5)")
    if "ours" in table:
        print(f"reward phase {table['ours'].get('reward', float('nan')):.3f} s for {PROMPTS * SAMPLES} math samples (target <= 0.3); "
              f"weight sync {table['ours'].get('weight_sync', float('nan')):.3f} s at the driver (target <= 0.3)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--side", choices=["ours", "trl"], help="run one side in this process (internal)")
    parser.add_argument("--sides", nargs="+", default=["ours", "trl"], choices=["ours", "trl"])
    parser.add_argument("--trl-vllm", action="store_true", help="TRL with colocated vLLM instead of HF generate")
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.side:
        result = run_ours(args.steps) if args.side == "ours" else run_trl(args.steps, args.trl_vllm)
        Path(args.out).write_text(json.dumps(result))
        return
    report([run_side(side, args.steps, args.trl_vllm) for side in args.sides])


if __name__ == "__main__":
    main()
