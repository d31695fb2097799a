"""Rollout throughput: our Ray-actor ``RolloutEngine`` vs raw vLLM vs HF ``generate``.

Same chat-formatted math prompts (token ids) and sampling for all (temperature 1.0,
top_p 1.0, ``--n`` samples, ``--max-tokens``, EOS stops; generated tokens are counted):
1. ``RolloutEngine`` in a Ray actor, timed around ``ray.get`` on the driver;
2. raw ``vllm.LLM.generate`` in this process: same engine settings, ``SamplingParams``
   (sampled log-probs included) and ``cpu_engine_env()``;
3. HF ``generate``, batched with left padding, bf16 or fp32 (the faster in a short probe);
4. weight sync: the full bf16 state dict pushed into the actor's live engine.
Phases run one at a time: one warm-up call each, then the median of ``--repeats``.
"others' CPU" is what processes outside this run used meanwhile: rerun unless ~0.

Run: ``python bench/rollout.py`` (a few minutes on 2 cores; ``--skip-hf`` skips HF).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# Run as a script, this file's folder heads sys.path and its name shadows the `rollout`
# package, here and in Ray's workers (Ray copies the script folder to them): drop it.
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != Path(__file__).resolve().parent]

import psutil  # noqa: E402
import torch  # noqa: E402

from posttrain.core.models import resolve_model  # noqa: E402
from rollout.engine import EngineConfig, SamplingSpec, cpu_engine_env, engine_actor  # noqa: E402

QUESTIONS = (
    "What is {a} + {b}?",
    "What is {a} times {b}?",
    "Tom has {a} apples and buys {b} more. How many apples does he have now?",
    "A train travels {a} km per hour for {b} hours. How far does it travel?",
    "Subtract {b} from {a}. What is the result?",
)


def math_prompts(tokenizer, count: int, seed: int = 0) -> list[list[int]]:
    """Chat-formatted arithmetic questions as token ids (the tokenizer's own template)."""
    rng = random.Random(seed)
    prompts = []
    for index in range(count):
        question = QUESTIONS[index % len(QUESTIONS)].format(a=rng.randint(2, 99), b=rng.randint(2, 99))
        messages = [{"role": "user", "content": question + " Think step by step, then give the answer."}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        prompts.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    return prompts


@dataclass
class Run:
    tokens: int
    seconds: float
    others: float  # cores used meanwhile by processes outside this process tree (Ray's are inside)
    output: object = None


def cpu_seconds() -> tuple[float, float]:
    """CPU seconds used so far by the whole machine and by this process tree."""
    tree = 0.0
    for proc in [psutil.Process(), *psutil.Process().children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            tree += sum(proc.cpu_times()[:2])
    return sum(psutil.cpu_times()[:3]), tree  # machine: user, nice, system


def timed_median(call, count_tokens, repeats: int) -> Run:
    """One warm-up ``call()``, then ``repeats`` timed ones: the median-speed run."""
    call()
    runs = []
    for _ in range(repeats):
        machine, tree = cpu_seconds()
        start = time.perf_counter()
        output = call()
        seconds = time.perf_counter() - start
        machine_after, tree_after = cpu_seconds()
        others = max(0.0, machine_after - machine - (tree_after - tree)) / seconds
        runs.append(Run(count_tokens(output), seconds, others, output))
    runs.sort(key=lambda run: run.tokens / run.seconds)
    median = runs[len(runs) // 2]
    median.others = max(run.others for run in runs)  # the worst contention seen while timing
    return median


def bench_ours(config: EngineConfig, prompts, spec: SamplingSpec, repeats: int, state_dict) -> dict:
    """Our engine in a Ray actor: generation timed from the driver, then weight pushes."""
    import ray

    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    try:
        actor = engine_actor(config)
        nice = ray.get(actor.__ray_call__.remote(lambda engine: os.nice(0)))
        generate = timed_median(
            lambda: ray.get(actor.generate.remote(prompts, spec)), lambda result: result.num_tokens, repeats
        )
        ray.get(actor.update_weights.remote(state_dict))  # warm-up push
        wall, engine = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            engine.append(ray.get(actor.update_weights.remote(state_dict)))
            wall.append(time.perf_counter() - start)
        ray.kill(actor)
    finally:
        ray.shutdown()
    sync = {"sync_wall": statistics.mean(wall), "sync_engine": statistics.mean(engine)}
    return {"generate": generate, "nice": nice, **sync}


def bench_raw_vllm(config: EngineConfig, prompts, spec: SamplingSpec, repeats: int) -> Run:
    """Plain ``vllm.LLM`` in this process, built and sampled exactly as ``RolloutEngine`` does."""
    from vllm import LLM, SamplingParams

    llm = LLM(
        model=config.model, dtype=config.dtype, max_model_len=config.max_model_len, seed=config.seed,
        enforce_eager=config.enforce_eager, kv_cache_memory_bytes=int(config.kv_cache_gib * 2**30),
    )
    params = SamplingParams(
        n=spec.n, temperature=spec.temperature, top_p=spec.top_p, max_tokens=spec.max_tokens, logprobs=0
    )
    batch = [{"prompt_token_ids": ids} for ids in prompts]
    result = timed_median(
        lambda: llm.generate(batch, params, use_tqdm=False),
        lambda outputs: sum(len(sample.token_ids) for request in outputs for sample in request.outputs),
        repeats,
    )
    del llm
    result.output = None  # vLLM's request outputs go with the engine
    return result


def hf_runner(path: str, dtype: torch.dtype, prompts, spec: SamplingSpec):
    """``generate(max_new_tokens) -> tokens`` for an HF model: left-padded batch, n samples each."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
    eos = model.generation_config.eos_token_id
    eos_ids = torch.tensor(eos if isinstance(eos, list) else [eos])
    pad_id = model.generation_config.pad_token_id
    pad_id = int(eos_ids[0]) if pad_id is None else pad_id
    width = max(len(ids) for ids in prompts)
    input_ids = torch.tensor([[pad_id] * (width - len(ids)) + ids for ids in prompts])
    mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in prompts])

    def generate(max_new_tokens: int) -> int:
        with torch.inference_mode():
            output = model.generate(
                input_ids=input_ids, attention_mask=mask, do_sample=True, temperature=spec.temperature,
                top_p=spec.top_p, top_k=0, num_return_sequences=spec.n, max_new_tokens=max_new_tokens,
                pad_token_id=pad_id, eos_token_id=eos_ids.tolist(),
            )
        is_eos = torch.isin(output[:, width:], eos_ids).int()
        after_first_eos = (is_eos.cumsum(dim=1) - is_eos) > 0  # padding; the first EOS counts, as in vLLM
        return int((~after_first_eos).sum())

    return generate


def bench_hf(path: str, prompts, spec: SamplingSpec, repeats: int, dtype_name: str) -> tuple[str, Run]:
    """HF ``generate``; ``dtype_name="auto"`` picks the faster of bf16 and fp32."""
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    names = ("bfloat16", "float32") if dtype_name == "auto" else (dtype_name,)
    runners = {name: hf_runner(path, getattr(torch, name), prompts, spec) for name in names}
    if len(runners) > 1:  # short probe: one warm-up and one timed 16-token call per dtype
        speeds = {}
        for name, run in runners.items():
            probe = timed_median(lambda: run(16), int, 1)
            speeds[name] = probe.tokens / probe.seconds
        dtype_name = max(speeds, key=speeds.get)
        print("HF dtype probe (tokens/s): " + ", ".join(f"{k} {v:.0f}" for k, v in speeds.items()))
    return dtype_name, timed_median(lambda: runners[dtype_name](spec.max_tokens), int, repeats)


def load_push_weights(path: str) -> dict[str, torch.Tensor]:
    """The checkpoint as bf16, less ``lm_head.weight`` (tied to the embeddings: never pushed)."""
    from safetensors.torch import load_file

    tensors = load_file(str(Path(path) / "model.safetensors"))
    return {name: t.to(torch.bfloat16) for name, t in tensors.items() if name != "lm_head.weight"}


def print_report(rows: list[tuple[str, str, Run]], ours: dict, samples: int) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Rollout throughput ({samples} samples per call, median of timed calls)")
    for column in ("engine", "dtype", "tokens", "tokens/sample", "seconds", "tokens/s", "others' CPU"):
        table.add_column(column, justify="left" if column in ("engine", "dtype") else "right")
    speed = {label: run.tokens / run.seconds for label, _, run in rows}
    for label, dtype, run in rows:
        cells = (str(run.tokens), f"{run.tokens / samples:.1f}", f"{run.seconds:.2f}", f"{speed[label]:.0f}")
        table.add_row(label, dtype, *cells, f"{run.others:.2f} cores")
    console = Console(width=120)
    console.print(table)
    console.print(f"ours / raw vLLM: {speed['ours (Ray actor)'] / speed['raw vLLM']:.3f}  (target >= 0.95)")
    if "HF generate" in speed:
        console.print(f"raw vLLM / HF:   {speed['raw vLLM'] / speed['HF generate']:.2f}x")
    call = ours["generate"]
    overhead = call.seconds - call.output.seconds
    console.print(f"ours, median call: {call.output.seconds:.2f} s in the engine, {call.seconds:.2f} s at the "
                  f"driver (Ray call overhead {overhead:.3f} s); the actor runs at nice {ours['nice']}")
    console.print(f"weight sync (full bf16 state dict, mean of timed pushes): {ours['sync_wall']:.3f} s at "
                  f"the driver, {ours['sync_engine']:.3f} s reported by the engine")
    busiest = max(run.others for _, _, run in rows)
    if busiest > 0.1:
        console.print(f"[yellow]warning: other processes used up to {busiest:.2f} cores while timing; rerun idle")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-hf", action="store_true")
    parser.add_argument("--hf-dtype", choices=("auto", "bfloat16", "float32"), default="auto")
    args = parser.parse_args()

    os.environ.update(cpu_engine_env())  # before vllm is imported: the env the actor gets
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    from transformers import AutoTokenizer

    path = resolve_model(args.model)
    config = EngineConfig(model=path)
    spec = SamplingSpec(n=args.n, temperature=1.0, top_p=1.0, max_tokens=args.max_tokens)
    prompts = math_prompts(AutoTokenizer.from_pretrained(path), args.prompts)
    env = {key: os.environ[key] for key in ("OMP_NUM_THREADS", "VLLM_CPU_OMP_THREADS_BIND")}
    print(
        f"machine: {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads, "
        f"{env}, load average {os.getloadavg()[0]:.2f}"
    )
    print(f"workload: {len(prompts)} prompts x n={spec.n}, max_tokens={spec.max_tokens}, model {path}")

    ours = bench_ours(config, prompts, spec, args.repeats, load_push_weights(path))
    rows = [("ours (Ray actor)", config.dtype, ours["generate"])]
    rows.append(("raw vLLM", config.dtype, bench_raw_vllm(config, prompts, spec, args.repeats)))
    gc.collect()
    if not args.skip_hf:
        rows.append(("HF generate", *bench_hf(path, prompts, spec, args.repeats, args.hf_dtype)))
    print_report(rows, ours, len(prompts) * spec.n)


if __name__ == "__main__":
    main()
